"""Tables of NGSI-LD subscriptions and their notification outbox, plus the sender's settings.

- `hub_subscriptions`: one row per subscription. `spec` holds the subscription in internal form
  (entity types and attribute names as expanded IRIs); the columns beside it are what the sender
  and the periodic scheduler filter on, and the notification status the API reports.
- `hub_subscription_versions`: one row per tenant whose `version` is a fresh random token after
  every subscription change, so every process can check its in-memory cache with one key lookup.
  A token (not a counter) cannot repeat after a table is emptied.
- `hub_notification_outbox`: notifications written in the same transaction as the change that
  caused them; the sender deletes a row once the endpoint has acknowledged it. `state` is
  `pending` or `failed` (parked after too many consecutive failures; kept for an operator).
- `hub_notification_leases`: which sender process owns which endpoint. One owner per endpoint is
  what keeps notifications to an endpoint in commit order when several processes send.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from cityos.config import env_float, env_int
from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

OutboxId = AutoId

subscriptions = Table(
    "hub_subscriptions",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(512), nullable=False),
    Column("spec", JsonDoc, nullable=False),
    # The @context notifications are compacted with: a URL, a list or an object (null: core only).
    Column("context", JsonDoc, nullable=True),
    Column("endpoint", String(2048), nullable=False),
    Column("is_active", Integer, nullable=False, default=1),
    Column("expires_at", Timestamp, nullable=True),
    Column("time_interval", Float, nullable=True),
    Column("throttling", Float, nullable=True),
    Column("next_periodic_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("modified_at", Timestamp, nullable=False),
    # Notification status (ETSI GS CIM 009 §5.2.14): ok | failed.
    Column("status", String(16), nullable=False, default="ok"),
    Column("times_sent", BigInteger, nullable=False, default=0),
    Column("times_failed", BigInteger, nullable=False, default=0),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_notification", Timestamp, nullable=True),
    Column("last_success", Timestamp, nullable=True),
    Column("last_failure", Timestamp, nullable=True),
    Column("last_error_reason", Text, nullable=True),
    PrimaryKeyConstraint("tenant", "id", name="pk_hub_subscriptions"),
    Index("ix_hub_subscriptions_periodic", "next_periodic_at"),
)

subscription_versions = Table(
    "hub_subscription_versions",
    metadata,
    Column("tenant", String(256), primary_key=True),
    Column("version", String(64), nullable=False),
)

outbox = Table(
    "hub_notification_outbox",
    metadata,
    Column("id", OutboxId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("subscription_id", String(512), nullable=False),
    Column("endpoint", String(2048), nullable=False),
    Column("notification_id", String(128), nullable=False),
    # The notification without notifiedAt (set when it is sent).
    Column("payload", JsonDoc, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("state", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    # The head of an endpoint's queue: pending rows of one endpoint in id (= commit) order.
    Index("ix_hub_outbox_endpoint", "endpoint", "state", "id"),
    Index("ix_hub_outbox_subscription", "tenant", "subscription_id", "state"),
    sqlite_autoincrement=True,  # ids never reused: see sqltypes.AutoId
)

leases = Table(
    "hub_notification_leases",
    metadata,
    Column("endpoint", String(2048), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("lease_until", Timestamp, nullable=False),
)




@dataclass(frozen=True)
class NotifySettings:
    """The sender's knobs, from the environment so that every process of a deployment agrees."""

    worker: bool = field(default_factory=lambda: os.environ.get("CITYOS_NOTIFY_WORKER", "1") not in ("0", "false"))
    # A stable id lets a restarted process take its endpoints back at once instead of after the lease.
    worker_id: str = field(default_factory=lambda: os.environ.get("CITYOS_NOTIFY_WORKER_ID", ""))
    max_failures: int = field(default_factory=lambda: env_int("CITYOS_NOTIFY_MAX_FAILURES", 20))
    timeout: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_TIMEOUT", 5.0))
    backoff_base: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_BACKOFF_BASE", 0.2))
    backoff_cap: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_BACKOFF_CAP", 10.0))
    lease_seconds: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_LEASE_SECONDS", 10.0))
    # A safety net only: commits wake the sender at once (in process, and by NOTIFY on PostgreSQL).
    poll_seconds: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_POLL_SECONDS", 1.0))
    batch: int = field(default_factory=lambda: env_int("CITYOS_NOTIFY_BATCH", 200))
    # Notifications in flight at once per endpoint, never two about the same entity.
    concurrency: int = field(default_factory=lambda: env_int("CITYOS_NOTIFY_CONCURRENCY", 8))
    max_entities_per_notification: int = field(
        default_factory=lambda: env_int("CITYOS_NOTIFY_MAX_ENTITIES", 1000))
