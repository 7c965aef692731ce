"""Cross-process events: the bus outbox relayed to NATS JetStream and the consumers' applied-event ids.

Revision ID: 0029_nats
Revises: 0028_dataspeed
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.core.bus_models import applied_events, bus_outbox
from cityos.migrations import create_tables, drop_tables

revision = "0029_nats"
down_revision = "0028_dataspeed"
branch_labels = None
depends_on = None


TABLES = (bus_outbox, applied_events)  # as this revision made them; 0035 adds the dead letters


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
