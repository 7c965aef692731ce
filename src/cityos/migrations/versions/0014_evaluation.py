"""Evaluation: KPI values with history, mystery-shopper assessments.

Revision ID: 0014_evaluation
Revises: 0013_security_lifecycle
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.evaluation.models import TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0014_evaluation"
down_revision = "0013_security_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
