"""Cross-process events: `bus_dead_letters`, the events a consumer group's handlers failed on every attempt.

Before this revision such an event was acknowledged and lost; the consumers' server-side delivery limit
could also drop an event that a node failure had kept from ever reaching a handler.

Revision ID: 0035_bus_dead_letters
Revises: 0034_traffic_loop
Create Date: 2026-12-06
"""

from __future__ import annotations

from cityos.core.bus_models import dead_letters
from cityos.migrations import create_tables, drop_tables

revision = "0035_bus_dead_letters"
down_revision = "0034_traffic_loop"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([dead_letters])


def downgrade() -> None:
    drop_tables([dead_letters])
