"""Column types every domain's tables share, so both databases store the same shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, binary), JSON text on SQLite.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class UtcTimestamp(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` whose values (stored ones and query bounds) are bound in UTC on SQLite.

    SQLite keeps a time as text of its wall-clock part and drops the offset: a bound such as the city's
    midnight (`00:00+08:00`) would be compared as 00:00 UTC, eight hours off every stored UTC time.
    PostgreSQL's timestamptz converts by itself, so its values pass unchanged."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "sqlite" and isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value


Timestamp = UtcTimestamp()
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants a 64-bit sequence.
AutoId = BigInteger().with_variant(Integer(), "sqlite")
# Queue tables (outboxes, intents) whose rows are read, worked on outside a transaction, then deleted by
# id also set `sqlite_autoincrement=True`: without it SQLite gives the highest id again once its row is
# deleted, and a worker's late delete of a row another worker had finished would hit a new, unsent row.
# PostgreSQL's sequences never hand an id out twice.
