"""Data: catalogue, versions and rows (snapshots), API keys, sharing, negative list, quality, lineage.

Revision ID: 0021_opendata
Revises: 0020_citizen
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.data.models import TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0021_opendata"
down_revision = "0020_citizen"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
