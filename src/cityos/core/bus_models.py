"""Tables of the cross-process event bus (used only when `CITYOS_EVENTS_URL` names a NATS server).

`bus_outbox` holds domain events written in the transaction of the change that caused them; the
relay publishes them to JetStream and deletes them. `bus_applied_events` records, per consumer,
the ids of events whose effect has been committed: a handler claims the id in its own write
transaction, so a redelivered event (a NATS node failing before the ack reached it) is applied once.
`bus_dead_letters` keeps, per consumer group, the events whose handlers failed every attempt: set
aside with the error rather than dropped, and put back on the stream by `cityos events replay`.
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, Index, Insert, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.events import Event
from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

bus_outbox = Table(
    "bus_outbox",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("payload", JsonDoc, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_bus_outbox_created", "created_at"),
    sqlite_autoincrement=True,  # ids never reused: see sqltypes.AutoId
)

applied_events = Table(
    "bus_applied_events",
    metadata,
    Column("consumer", String(64), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("applied_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("consumer", "event_id"),
    Index("ix_bus_applied_events_at", "applied_at"),
)

dead_letters = Table(
    "bus_dead_letters",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("consumer", String(64), nullable=False),
    Column("event_id", String(128), nullable=True),
    Column("topic", String(64), nullable=False),
    Column("payload", JsonDoc, nullable=False),  # as carried on the stream (encoded)
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failed_at", Timestamp, nullable=False),
    Index("ix_bus_dead_letters_consumer", "consumer", "id"),
)

TABLES = (bus_outbox, applied_events, dead_letters)


class AlreadyApplied(Exception):
    """Raised inside a handler's write transaction when its event was applied before: rolls it back."""


def _claim_insert(dialect: str, consumer: str, event_id: str) -> Insert:
    values = {"consumer": consumer, "event_id": event_id, "applied_at": clock.now()}
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(applied_events).values(values).on_conflict_do_nothing()


async def claim(conn: AsyncConnection, consumer: str, event: Event | None) -> bool:
    """Record that `consumer` applies `event` in the caller's transaction; False when it already has.

    Call it in the transaction that writes the handler's effect: both commit or neither does. Events
    of the in-process bus have no id and are always new (they are delivered once)."""
    if event is None or event.id is None:
        return True
    result = await conn.execute(_claim_insert(conn.dialect.name, consumer, event.id))
    return bool(result.rowcount == 1)


def claim_sync(conn: Connection, consumer: str, event: Event | None) -> bool:
    """`claim` for handlers whose transaction runs synchronous SQLAlchemy Core (`run_sync`, a thread)."""
    if event is None or event.id is None:
        return True
    return bool(conn.execute(_claim_insert(conn.dialect.name, consumer, event.id)).rowcount == 1)
