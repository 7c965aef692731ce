"""Services: fired deadline timers (once-per-event notices) and the departments' duty contacts.

Revision ID: 0011_services_deadlines
Revises: 0010_ops_environment
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.services.models import DEADLINE_TABLES
from cityos.services.notify.models import CONTACT_TABLES

revision = "0011_services_deadlines"
down_revision = "0010_ops_environment"
branch_labels = None
depends_on = None

TABLES = (*DEADLINE_TABLES, *CONTACT_TABLES)


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
