"""Notification tables: the in-app inbox and the outbox of e-mail / SMS deliveries.

No foreign keys (the test harness empties tables in any order). The outbox makes delivery
durable: a message is committed with its inbox entry before any sender is tried, and a worker
(in any process) claims due rows with a lease, so a crash re-sends and never drops (at least
once). Addresses (e-mail, phone) are personal data: stored field-encrypted
(`cityos.security.crypto`, ``enc:v1:<kid>:...``) and registered for key rotation.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text

from cityos.core.sqltypes import AutoId, Timestamp
from cityos.security.crypto import register_encrypted

metadata = MetaData()

CHANNELS = ("email", "sms")
# pending: waiting for (another) attempt; sent; failed: gave up after the last attempt.
DELIVERY_STATUSES = ("pending", "sent", "failed")

notifications = Table(
    "svc_notifications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("link", String(2048), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("read_at", Timestamp, nullable=True),
    Index("ix_svc_notifications_user", "tenant", "user_id", "created_at"),
)

outbox = Table(
    "svc_notify_outbox",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("notification_id", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", Text, nullable=False),  # field-encrypted
    Column("subject", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("last_error", String(512), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("sent_at", Timestamp, nullable=True),
    Index("ix_svc_notify_outbox_due", "status", "next_attempt_at"),
    Index("ix_svc_notify_outbox_notification", "notification_id"),
)

register_encrypted(outbox, "id", "address")

TABLES = (notifications, outbox)

# Who hears about a department's deadlines besides its staff accounts: the duty roster (值班通讯录)
# with the e-mail / phone to reach them. `department` is a department id, or "*" for tenant-wide
# supervisors (效能监督). role: staff | supervisor. Not in TABLES: migration 0011 creates it.
contacts = Table(
    "svc_notify_contacts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("department", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("email", Text, nullable=True),  # field-encrypted
    Column("phone", Text, nullable=True),  # field-encrypted
    Column("updated_at", Timestamp, nullable=False),
    Index("ux_svc_notify_contacts", "tenant", "department", "user_id", unique=True),
)
register_encrypted(contacts, "id", "email")
register_encrypted(contacts, "id", "phone")

CONTACT_ROLES = ("staff", "supervisor")
CONTACT_TABLES = (contacts,)
