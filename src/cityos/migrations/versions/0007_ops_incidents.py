"""Ops: incidents, their steps, SLA policies, Open311 keys.

Revision ID: 0007_ops_incidents
Revises: 0006_ops_rules
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.ops.incidents.models import TABLES as INCIDENT_TABLES
from cityos.ops.open311.models import TABLES as OPEN311_TABLES

revision = "0007_ops_incidents"
down_revision = "0006_ops_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    for table in (*INCIDENT_TABLES, *OPEN311_TABLES):
        table.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed((*INCIDENT_TABLES, *OPEN311_TABLES)):
        table.drop(bind, checkfirst=True)
