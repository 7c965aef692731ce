"""The device-event outbox: IoT events survive a process that dies between its commit and their publication.

An event (device online, offline, low battery, spike, frozen) is inserted in the transaction that
caused it. After the commit it goes to the bus through the background publisher; once published
its id is remembered, and the next transaction of this process (an ingest batch, a health round)
deletes the remembered ids, so the happy path costs one INSERT per batch with events and no
transaction of its own. Rows older than `redeliver_after` seconds belong to a process that died
(or to one hopelessly behind): `recover` publishes and deletes them. Delivery is at least once;
the rules engine keeps one alarm per rule and device, so a repeat updates instead of duplicating.

With a cross-process bus (JetStream) the rows are the bus's: its relay publishes them to the stream
and deletes them; this process's own listeners still get the events at once, from the publisher.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.events import BackgroundPublisher, EventBus
from cityos.iot.models import event_outbox

log = logging.getLogger("cityos.iot.outbox")

Event = tuple[str, dict[str, Any]]
RECOVER_BATCH = 500


class EventOutbox:
    def __init__(self, engine: AsyncEngine, bus: EventBus, publisher: BackgroundPublisher, tenant: str,
                 write: Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection]],
                 redeliver_after: float = 60.0) -> None:
        self.engine = engine
        self.bus = bus
        self.publisher = publisher
        self.tenant = tenant
        self.write = write  # the hub's writer (on SQLite: the one write lock every domain shares)
        self.redeliver_after = redeliver_after
        self._published: list[int] = []
        self.relayed = bus.crosses_processes  # the bus's relay publishes and deletes the rows

    async def record(self, conn: AsyncConnection, events: Sequence[Event]) -> list[int]:
        """Insert the events inside the caller's transaction (and delete those already published)."""
        await self.forget_published(conn)
        if not events:
            return []
        now = clock.now()
        rows = [{"tenant": self.tenant, "topic": topic, "payload": payload, "created_at": now}
                for topic, payload in events]
        result = await conn.execute(insert(event_outbox).returning(event_outbox.c.id), rows)
        return [row.id for row in result]

    async def publish(self, ids: Sequence[int], events: Sequence[Event]) -> None:
        """After the commit: hand the events to the background publisher, in order."""
        for outbox_id, (topic, payload) in zip(ids, events, strict=True):
            await self.publisher.put(topic, payload, self._done(outbox_id))

    async def publish_now(self, ids: Sequence[int], events: Sequence[Event]) -> None:
        """After the commit: publish on the bus and wait for the handlers (rare events, off the ingest path)."""
        for outbox_id, (topic, payload) in zip(ids, events, strict=True):
            await self.bus.publish(topic, payload)
            if not self.relayed:
                self._published.append(outbox_id)

    def _done(self, outbox_id: int) -> Callable[[], None] | None:
        return None if self.relayed else lambda: self._published.append(outbox_id)

    async def forget_published(self, conn: AsyncConnection) -> None:
        if self._published:
            ids, self._published = self._published, []
            await conn.execute(delete(event_outbox).where(event_outbox.c.id.in_(ids)))

    async def recover(self) -> int:
        """Publish and delete events left behind by a process that died; returns how many."""
        if self.relayed:
            return 0
        cutoff = clock.now() - timedelta(seconds=self.redeliver_after)
        stmt = (select(event_outbox.c.id, event_outbox.c.topic, event_outbox.c.payload)
                .where(event_outbox.c.tenant == self.tenant, event_outbox.c.created_at < cutoff)
                .order_by(event_outbox.c.id).limit(RECOVER_BATCH))
        # Never publish while holding the rows' locks: a handler that writes device events (or a test's
        # cleanup) would wait for this transaction, which waits for the handler. Another process may
        # publish the same leftovers too: delivery is at least once, and handlers are idempotent.
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        await self._redeliver(rows)
        async with self.write() as conn:
            await self._delete(conn, [r.id for r in rows])
        return len(rows)

    async def _redeliver(self, rows: Sequence[Any]) -> None:
        for row in rows:
            await self.bus.publish(row.topic, row.payload)
        if rows:
            log.warning("published %d device event(s) left in the outbox by an earlier process", len(rows))

    async def _delete(self, conn: AsyncConnection, ids: list[int]) -> None:
        await self.forget_published(conn)
        if ids:
            await conn.execute(delete(event_outbox).where(event_outbox.c.id.in_(ids)))

