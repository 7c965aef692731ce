"""Services: catalogue, applications, materials, workflow state, tasks.

Revision ID: 0008_services
Revises: 0007_ops_incidents
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.services.models import TABLES

revision = "0008_services"
down_revision = "0007_ops_incidents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
