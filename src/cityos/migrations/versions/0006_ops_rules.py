"""Ops: alarm rules (versioned), rule window state and alarms.

Revision ID: 0006_ops_rules
Revises: 0005_security
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.ops.rules.models import TABLES

revision = "0006_ops_rules"
down_revision = "0005_security"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
