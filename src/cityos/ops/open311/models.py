"""Open311 tables: API keys (hashed; a key is 192 random bits, so a SHA-256 digest is enough)."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, LargeBinary, MetaData, String, Table

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

# Photos of citizens' reports (随手拍), re-encoded without their metadata; served at the media_url.
media = Table(
    "ops_open311_media",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("content_type", String(32), nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_ops_open311_media_owner", "owner", "created_at"),
)

TABLES = (api_keys,)
