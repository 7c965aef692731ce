"""阳光政务 (spending transparency): departments' budget and spending per year and category, published to
the hub (so the data catalogue lists them as open datasets) and shown as charts."""
