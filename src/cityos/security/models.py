"""Security tables.

No foreign keys: the test harness empties tables in any order, and every reference here is
checked by the service. Secrets are never stored in clear: passwords are argon2id hashes,
refresh tokens and client secrets (high-entropy) are SHA-256 hex digests, TOTP secrets and
personal data are field-encrypted (`cityos.security.crypto`, values ``enc:v1:<kid>:...``).
Signing and data keys live in files or the environment, never here.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

tenants = Table(
    "sec_tenants",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("created_at", Timestamp, nullable=False),
    Column("deleted_at", Timestamp, nullable=True),
)

departments = Table(
    "sec_departments",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("name", String(256), nullable=False),
    Column("parent", String(128), nullable=True),
    Column("districts", JsonDoc, nullable=False),
    Index("ix_sec_departments_parent", "parent"),
)

users = Table(
    "sec_users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("username", String(128), nullable=False),
    Column("tenant", String(256), nullable=False),
    Column("display_name", String(256), nullable=True),
    Column("password_hash", String(256), nullable=True),  # None: SSO-only account
    Column("role", String(32), nullable=False),
    Column("department", String(128), nullable=True),
    Column("phone", Text, nullable=True),       # field-encrypted
    Column("id_number", Text, nullable=True),   # field-encrypted
    Column("totp_secret", Text, nullable=True),  # field-encrypted
    Column("totp_enabled", Boolean, nullable=False, default=False),
    Column("totp_last_step", BigInteger, nullable=True),  # refuses a replayed code
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Timestamp, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    # When the account was disabled (None: active). Set together with `disabled`; readers outside the
    # security service (the hub's subscription worker) test this column.
    Column("disabled_at", Timestamp, nullable=True),
    Column("external_iss", String(512), nullable=True),
    Column("external_sub", String(512), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index("ux_sec_users_username", "username", unique=True),
    Index("ux_sec_users_external", "external_iss", "external_sub", unique=True),
)

clients = Table(
    "sec_clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("tenant", String(256), nullable=False),
    Column("role", String(32), nullable=False),
    Column("department", String(128), nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp, nullable=False),
)

refresh_tokens = Table(
    "sec_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("issued_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
    Index("ix_sec_refresh_family", "family"),
    Index("ix_sec_refresh_user", "user_id"),
)

# Revoked sessions (refresh families or access-token jti): access tokens naming one are refused.
revocations = Table(
    "sec_revocations",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("revoked_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

login_failures = Table(
    "sec_login_failures",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("ip", String(64), nullable=False),
    Column("username", String(128), nullable=True),
    Column("at", Timestamp, nullable=False),
    Index("ix_sec_login_failures_ip", "ip", "at"),
    Index("ix_sec_login_failures_user", "username", "at"),  # per-account sliding window (revision 0013)
)

ip_blocks = Table(
    "sec_ip_blocks",
    metadata,
    Column("ip", String(64), primary_key=True),
    Column("blocked_until", Timestamp, nullable=False),
    Column("reason", String(256), nullable=False),
)

rate_limits = Table(
    "sec_rate_limits",
    metadata,
    Column("bucket", String(256), nullable=False),
    Column("window", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    PrimaryKeyConstraint("bucket", "window", name="pk_sec_rate_limits"),
)

# The audit trail: append-only and hash-chained. `ts` and `detail` are stored as the exact text
# that was hashed, so that verification never depends on how a driver round-trips types.
audit = Table(
    "sec_audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("role", String(32), nullable=False),
    Column("tenant", String(256), nullable=False),
    Column("action", String(128), nullable=False),
    Column("resource", String(1024), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_sec_audit_ts", "ts"),
    Index("ix_sec_audit_actor", "actor", "seq"),
    Index("ix_sec_audit_action", "action", "seq"),
)

# Audit intents: a write's audit record, announced inside the write's own transaction and removed
# once the record is chained (security/audit_intents.py). One left behind by a process that died
# between the two is chained at recovery, so a committed change never goes unaudited.
audit_intents = Table(
    "sec_audit_intents",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("created_at", Timestamp, nullable=False),
    Column("event", JsonDoc, nullable=False),
    Index("ix_sec_audit_intents_created", "created_at"),
    sqlite_autoincrement=True,  # ids never reused: see sqltypes.AutoId
)

# One row (id = 1): the newest record's seq and hash. Appenders lock it, so concurrent writers
# (threads, processes) keep a single chain.
audit_head = Table(
    "sec_audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

approvals = Table(
    "sec_approvals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("tenant", String(256), nullable=False),
    Column("params", JsonDoc, nullable=False),
    Column("reason", Text, nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("requested_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | refused | executing | executed | failed
    Column("decided_by", String(64), nullable=True),
    Column("decided_at", Timestamp, nullable=True),
    Column("executed_at", Timestamp, nullable=True),
    Column("result", JsonDoc, nullable=True),
    Index("ix_sec_approvals_status", "status", "requested_at"),
)

# Grants produced by an executed approval (e.g. one bulk export with sensitive values in clear).
grants = Table(
    "sec_grants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("principal", String(64), nullable=False),
    Column("approval", String(64), nullable=False),
    Column("params", JsonDoc, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
)

# One-time codes an administrator issues so that a staff member can enrol their first TOTP factor
# (a password alone must not be enough to bind a new second factor). Stored as SHA-256 digests.
enrolment_codes = Table(
    "sec_enrolment_codes",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("code_hash", String(64), nullable=False),
    Column("issued_by", String(256), nullable=False),
    Column("issued_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

# Devices that completed a login before (OWASP "device cookie"): such a device passes an account
# lock, IP blocks and login delays that strangers' failures caused. Stored as SHA-256 digests.
known_devices = Table(
    "sec_known_devices",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Index("ix_sec_known_devices_user", "user_id"),
)

# Break-glass recovery codes (created with the first administrator, printed once, kept offline):
# one can stand in for the second person of an administrator appointment. Argon2id hashes.
recovery_codes = Table(
    "sec_recovery_codes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("code_hash", String(256), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
    Column("used_for", String(64), nullable=True),
)

# Added by revision 0013 (0005 creates TABLES as declared at the time).
LIFECYCLE_TABLES = [enrolment_codes, known_devices, recovery_codes]

TABLES = [tenants, departments, users, clients, refresh_tokens, revocations, login_failures, ip_blocks,
          rate_limits, audit, audit_head, approvals, grants]

GENESIS_HASH = "0" * 64
