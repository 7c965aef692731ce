"""Temporal rollups: hourly and daily per-attribute aggregates of the history, kept by triggers.

Revision ID: 0023_speed
Revises: 0022_signals
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

from cityos.hub.temporal import rollups

revision = "0023_speed"
down_revision = "0022_signals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for statement in rollups.PG_DDL if pg else rollups.SQLITE_DDL:
        op.execute(statement)
    # The existing history's buckets are marked: the first aggregation that needs them computes them.
    op.execute(rollups.PG_BACKFILL if pg else rollups.SQLITE_BACKFILL)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for statement in rollups.PG_DROP if pg else rollups.SQLITE_DROP:
        op.execute(statement)
