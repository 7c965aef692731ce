"""Services: e-licences, revocations, ratings, rectifications, notifications.

Revocations live on the licence rows (status, time, reason, who); the signed revocation list is
built from them. Signing keys are files, never rows.

Revision ID: 0009_services_records
Revises: 0008_services
Create Date: 2026-11-21
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.services.licences.models import TABLES as LICENCE_TABLES
from cityos.services.notify.models import TABLES as NOTIFY_TABLES
from cityos.services.ratings.models import TABLES as RATING_TABLES

revision = "0009_services_records"
down_revision = "0008_services"
branch_labels = None
depends_on = None

TABLES = (*NOTIFY_TABLES, *LICENCE_TABLES, *RATING_TABLES)


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
