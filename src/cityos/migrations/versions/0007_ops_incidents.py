"""Ops: incidents, their steps, SLA policies, Open311 keys.

Revision ID: 0007_ops_incidents
Revises: 0006_ops_rules
Create Date: 2026-11-21
"""

from __future__ import annotations

revision = "0007_ops_incidents"
down_revision = "0006_ops_rules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
