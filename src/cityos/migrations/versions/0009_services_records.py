"""Services: e-licences, revocations, ratings, rectifications, notifications.

Revision ID: 0009_services_records
Revises: 0008_services
Create Date: 2026-11-21
"""

from __future__ import annotations

revision = "0009_services_records"
down_revision = "0008_services"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
