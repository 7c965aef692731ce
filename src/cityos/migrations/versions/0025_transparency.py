"""一网协同 II: spending transparency (阳光政务) budget lines.

Revision ID: 0025_transparency
Revises: 0024_roads2
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.livelihood.transparency.models import TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0025_transparency"
down_revision = "0024_roads2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
