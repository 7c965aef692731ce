"""Open311 tables: API keys (hashed; a key is 192 random bits, so a SHA-256 digest is enough)."""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

api_keys = Table(
    "ops_open311_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("name", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("revoked_at", Timestamp, nullable=True),
    Index("ux_ops_open311_keys_hash", "key_hash", unique=True),
)

TABLES = (api_keys,)
