"""IoT: device registry, dead letters, server-side RPC.

Revision ID: 0004_iot
Revises: 0003_subscriptions
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.iot.models import TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0004_iot"
down_revision = "0003_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
