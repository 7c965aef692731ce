"""ops.environment: pollution episodes per station and rule.

Revision ID: 0010_ops_environment
Revises: 0009_services_records
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.ops.environment.models import TABLES

revision = "0010_ops_environment"
down_revision = "0009_services_records"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
