"""Traffic: registered signals (plan, current phase) and their phase commands.

Revision ID: 0022_signals
Revises: 0021_opendata
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.traffic.models import phase_commands, signals

revision = "0022_signals"
down_revision = "0021_opendata"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([signals, phase_commands])


def downgrade() -> None:
    drop_tables([phase_commands, signals])
