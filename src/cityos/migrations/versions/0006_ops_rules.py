"""Ops: alarm rules (versioned), rule window state and alarms.

Revision ID: 0006_ops_rules
Revises: 0005_security
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.ops.rules.models import TABLES

revision = "0006_ops_rules"
down_revision = "0005_security"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        table.drop(bind, checkfirst=True)
