"""Hub: NGSI-LD Context Source registrations and their subscriptions.

Revision ID: 0018_csr
Revises: 0017_commons
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.hub.registrations.models import csource_subscriptions, registrations
from cityos.migrations import create_tables, drop_tables

revision = "0018_csr"
down_revision = "0017_commons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([registrations, csource_subscriptions])


def downgrade() -> None:
    drop_tables([registrations, csource_subscriptions])
