"""NGSI-LD subscriptions and the notification outbox.

Revision ID: 0003_subscriptions
Revises: 0002_temporal
Create Date: 2026-11-22
"""

from __future__ import annotations

from cityos.hub.subscriptions.models import leases, outbox, subscription_versions, subscriptions
from cityos.migrations import create_tables, drop_tables

revision = "0003_subscriptions"
down_revision = "0002_temporal"
branch_labels = None
depends_on = None

TABLES = (subscriptions, subscription_versions, outbox, leases)


def upgrade() -> None:
    create_tables(TABLES)


def downgrade() -> None:
    drop_tables(TABLES)
