"""Column types every domain's tables share, so both databases store the same shapes."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB

# JSONB on PostgreSQL (indexable, binary), JSON text on SQLite.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants a 64-bit sequence.
AutoId = BigInteger().with_variant(Integer(), "sqlite")
