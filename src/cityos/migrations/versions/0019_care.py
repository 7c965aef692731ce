"""Livelihood (一网协同): profiles, policies, decisions, payouts, opt-outs, elderly care.

Revision ID: 0019_care
Revises: 0018_csr
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.livelihood.models import ALL_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0019_care"
down_revision = "0018_csr"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(ALL_TABLES)


def downgrade() -> None:
    drop_tables(ALL_TABLES)
