"""一网协同 I: financing matchmaking (融资对接) products, needs and contact requests.

Revision ID: 0026_livelihood
Revises: 0025_transparency
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.livelihood.enterprise.models import TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0026_livelihood"
down_revision = "0025_transparency"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
