"""一网协同 II: collection tasks (清运任务) opened by full smart bins for the sanitation department.

Revision ID: 0027_commons
Revises: 0026_livelihood
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.livelihood.waste.collection import COLLECTION_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0027_commons"
down_revision = "0026_livelihood"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(COLLECTION_TABLES)


def downgrade() -> None:
    drop_tables(COLLECTION_TABLES)
