"""ops.environment: pollution episodes per station and rule.

Revision ID: 0010_ops_environment
Revises: 0009_services_records
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.ops.environment.models import TABLES

revision = "0010_ops_environment"
down_revision = "0009_services_records"
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
