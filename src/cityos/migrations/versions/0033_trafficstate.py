"""Traffic state in the database rather than each API process: emergency pre-emption runs (with finished
runs as history) and the congestion forecast's trained versions (parameters as JSON).

Revision ID: 0033_trafficstate
Revises: 0032_keycalls
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.traffic.congestion.models import FORECAST_TABLES
from cityos.traffic.models import preemption_runs

revision = "0033_trafficstate"
down_revision = "0032_keycalls"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([preemption_runs, *FORECAST_TABLES])


def downgrade() -> None:
    drop_tables([preemption_runs, *FORECAST_TABLES])
