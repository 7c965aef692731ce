"""运营评估: the KPI engine over every domain's registered indicator sources, the risk radar, the maturity
score, reports (PDF, XLSX) and the mystery-shopper check. See service.py."""
