"""Registration tables: who registered with which identity, and the phone verification codes.

Identity numbers and phones are kept here only as keyed digests (HMAC-SHA256, see
`service.blind_index`): enough to refuse a second account for the same person, company or phone,
and to find an account by its phone for a password reset, without a second clear copy of them
(the account's own copy is field-encrypted in the security tables). No foreign keys.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

KINDS = ("citizen", "company")
PURPOSES = ("register", "reset")

accounts = Table(
    "svc_registered_accounts",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("identity_digest", String(64), nullable=False),
    Column("phone_digest", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ux_svc_registered_identity", "tenant", "identity_digest", unique=True),
    Index("ux_svc_registered_phone", "tenant", "phone_digest", unique=True),
)

phone_codes = Table(
    "svc_phone_codes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("phone_digest", String(64), nullable=False),
    Column("purpose", String(16), nullable=False),
    Column("code_digest", String(64), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
    Index("ix_svc_phone_codes_phone", "tenant", "phone_digest", "purpose", "created_at"),
)

TABLES = (accounts, phone_codes)
