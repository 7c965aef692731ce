"""IoT: device registry, dead letters, server-side RPC.

Revision ID: 0004_iot
Revises: 0003_subscriptions
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.iot.models import TABLES

revision = "0004_iot"
down_revision = "0003_subscriptions"
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
