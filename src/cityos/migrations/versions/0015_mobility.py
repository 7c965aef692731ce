"""Mobility: GTFS feeds and their timetables, GBFS bike-share systems and stations.

Revision ID: 0015_mobility
Revises: 0014_evaluation
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.mobility.models import ALL_TABLES

revision = "0015_mobility"
down_revision = "0014_evaluation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(ALL_TABLES)


def downgrade() -> None:
    drop_tables(ALL_TABLES)
