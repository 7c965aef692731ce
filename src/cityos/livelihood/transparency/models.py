"""Budget lines: one row per (department, year, category), in yuan. A department re-publishing a line replaces
it (the key), so corrections do not double-count."""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, PrimaryKeyConstraint, String, Table

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

budget_lines = Table(
    "tr_budget_lines", metadata,
    Column("tenant", String(256), nullable=False),
    Column("department", String(128), nullable=False),
    Column("year", Integer, nullable=False),
    Column("category", String(64), nullable=False),        # 基本支出, 项目支出, 三公经费, …
    Column("budget", Float, nullable=False),               # yuan
    Column("spent", Float, nullable=False),
    Column("published_by", String(256), nullable=False),
    Column("published_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "department", "year", "category", name="pk_tr_budget_lines"),
)

TABLES = [budget_lines]
