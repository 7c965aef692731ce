"""Open data: outside developers' applications for API keys to conditionally open datasets.

Revision ID: 0030_datagov
Revises: 0029_nats
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.data.models import KEY_APPLICATION_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0030_datagov"
down_revision = "0029_nats"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables(KEY_APPLICATION_TABLES)


def downgrade() -> None:
    drop_tables(KEY_APPLICATION_TABLES)
