"""Security: audit intents (a write's audit record announced inside the write's transaction).

Revision ID: 0016_audit_intents
Revises: 0015_mobility
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.security.models import audit_intents

revision = "0016_audit_intents"
down_revision = "0015_mobility"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([audit_intents])


def downgrade() -> None:
    drop_tables([audit_intents])
