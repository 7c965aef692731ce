"""Open data: API-key calls per minute in the database, so a key's rate limit holds across API workers.

Revision ID: 0032_keycalls
Revises: 0031_nats_mqtt
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.data.models import KEY_CALL_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0032_keycalls"
down_revision = "0031_nats_mqtt"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(KEY_CALL_TABLES)


def downgrade() -> None:
    drop_tables(KEY_CALL_TABLES)
