"""IoT: the device-event outbox (events survive a process that dies between commit and publication).

Revision ID: 0012_iot_event_outbox
Revises: 0011_services_deadlines
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.iot.models import OUTBOX_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0012_iot_event_outbox"
down_revision = "0011_services_deadlines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(OUTBOX_TABLES)


def downgrade() -> None:
    drop_tables(OUTBOX_TABLES)
