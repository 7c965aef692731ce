"""NGSI-LD Context Source registrations (ETSI GS CIM 009 v1.8.1 §5.9–5.11) and distributed operations."""
