"""Tables of Context Source registrations and of the subscriptions to them.

- `hub_csource_registrations`: one row per registration. `spec` holds it in internal form (entity
  types, attribute names and extra members as expanded IRIs); `endpoint`, `mode` and `expires_at`
  are what distributed operations filter on.
- `hub_csource_subscriptions`: one row per Context Source registration subscription (§5.11), with
  the notification status the API reports. Registration changes are matched against them in the
  process that made the change (registrations change rarely; notifications are best effort, §5.11.7).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()

registrations = Table(
    "hub_csource_registrations",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(512), nullable=False),
    Column("spec", JsonDoc, nullable=False),
    Column("endpoint", String(2048), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("modified_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_hub_csource_registrations"),
)

csource_subscriptions = Table(
    "hub_csource_subscriptions",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(512), nullable=False),
    Column("spec", JsonDoc, nullable=False),
    # The @context notifications are compacted with (null: core only).
    Column("context", JsonDoc, nullable=True),
    Column("expires_at", Timestamp, nullable=True),
    Column("time_interval", Float, nullable=True),
    Column("next_periodic_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("modified_at", Timestamp, nullable=False),
    Column("status", String(16), nullable=False, default="ok"),
    Column("times_sent", BigInteger, nullable=False, default=0),
    Column("times_failed", BigInteger, nullable=False, default=0),
    Column("last_notification", Timestamp, nullable=True),
    Column("last_success", Timestamp, nullable=True),
    Column("last_failure", Timestamp, nullable=True),
    Column("last_error_reason", Text, nullable=True),
    PrimaryKeyConstraint("tenant", "id", name="pk_hub_csource_subscriptions"),
    Index("ix_hub_csource_subscriptions_periodic", "next_periodic_at"),
)
