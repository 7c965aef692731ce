"""Tables of financing matchmaking (融资对接).

- `lh_fin_products`: banks' loan products as published by a bank's or the financial office's staff
  (the publishing department owns the row: department scope decides who edits it and sees its contacts).
- `lh_fin_needs`: a company's financing need (amount in 万元, term in months, purpose); one open need per
  company with the same amount, term and purpose (a double post is a duplicate).
- `lh_fin_contacts`: a company's request to be contacted about a product for a need; once per need and product.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()

products = Table(
    "lh_fin_products", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("department", String(64), nullable=False),  # the publishing department (a bank's or the office's)
    Column("bank", String(100), nullable=False),
    Column("name", String(100), nullable=False),
    Column("amount_min", Float, nullable=False),  # 万元
    Column("amount_max", Float, nullable=False),
    Column("term_min", Integer, nullable=False),  # months
    Column("term_max", Integer, nullable=False),
    Column("industries", JsonDoc, nullable=False),  # GB/T 4754 sections; [] = every industry
    Column("min_credit", String(1), nullable=False),  # the lowest tax credit grade accepted (A B M C D)
    Column("rate", String(100), nullable=True),  # e.g. "LPR+0.3%"
    Column("status", String(12), nullable=False),  # active | withdrawn
    Column("created_by", String(128), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ux_lh_fin_products_name", "tenant", "bank", "name", unique=True),
)

needs = Table(
    "lh_fin_needs", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("subject_id", String(64), nullable=False),  # the company
    Column("user_id", String(64), nullable=False),  # the account that posted it
    Column("amount", Float, nullable=False),  # 万元
    Column("term", Integer, nullable=False),  # months
    Column("purpose", Text, nullable=False),
    Column("dedup", String(64), nullable=False),  # amount|term|purpose of an open need
    Column("status", String(12), nullable=False),  # open | closed
    Column("created_at", Timestamp, nullable=False),
    Index("ux_lh_fin_needs_once", "tenant", "subject_id", "dedup", unique=True),
)

contacts = Table(
    "lh_fin_contacts", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("need_id", String(32), nullable=False),
    Column("product_id", String(32), nullable=False),
    Column("department", String(64), nullable=False),  # the product's, so its bank sees the request
    Column("subject_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("status", String(12), nullable=False),  # requested
    Column("created_at", Timestamp, nullable=False),
    Index("ux_lh_fin_contacts_once", "tenant", "need_id", "product_id", unique=True),
    Index("ix_lh_fin_contacts_department", "tenant", "department"),
)

TABLES = [products, needs, contacts]
