"""智慧交通 (roads2): parking (car parks, reservations, plate sessions, payments, vehicles, occupancy
history) and the congestion index (road segments, index history).

Revision ID: 0024_roads2
Revises: 0023_speed
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.traffic.congestion.models import TABLES as CONGESTION_TABLES
from cityos.traffic.parking.models import TABLES as PARKING_TABLES

revision = "0024_roads2"
down_revision = "0023_speed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([*PARKING_TABLES, *CONGESTION_TABLES])


def downgrade() -> None:
    drop_tables([*PARKING_TABLES, *CONGESTION_TABLES])
