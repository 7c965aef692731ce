"""The notification sender: drains the outbox to HTTP and MQTT endpoints.

Shape:
- A dispatcher owns endpoints through leases in `hub_notification_leases` (one owner per endpoint
  across all processes, so each endpoint sees its notifications in commit order) and runs one
  `EndpointWorker` task per owned endpoint: a slow or dead endpoint only ever delays itself.
- A worker sends the head of its endpoint's queue (pending rows by id) one at a time; row N+1
  starts only when row N is done. Delivered rows are deleted after the endpoint acknowledged
  them: a crash in between re-sends (at least once; receivers de-duplicate by notification id).
- Failures back off exponentially up to a cap; after CITYOS_NOTIFY_MAX_FAILURES consecutive
  failures the subscription's notification status becomes `failed` and its pending rows are
  parked (state `failed`), visible in the table until an update of the subscription re-queues them.
- Commits wake the owner at once: in process through the event bus, across processes through
  PostgreSQL NOTIFY. Polling is only a safety net.
- A scheduler turns periodic (timeInterval) subscriptions into outbox rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, not_, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import async_url
from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.db import create_engine
from cityos.core.tasks import StepGuard, cancel_and_wait
from cityos.hub import typesel
from cityos.hub.service import ENTITY_CHANGED
from cityos.hub.store import EntityQuery, EntityRecord
from cityos.hub.subscriptions.delivery import DeliveryError, Transport, build_message, transport_for
from cityos.hub.subscriptions.models import NotifySettings, leases, outbox, subscriptions
from cityos.hub.subscriptions.rights import OwnerAbsent, OwnerRights, filter_checks
from cityos.hub.subscriptions.service import (
    NOTIFY_CHANNEL,
    OWNER_KEY,
    Compiled,
    Masker,
    SubscriptionService,
    join_linked,
    outbox_row,
    render_record,
)
from cityos.hub.subscriptions.spec import selector_types

log = logging.getLogger(__name__)

SENDER_POOL_SIZE = 4
MAX_IDLE_POLL = 5.0


def wall_now() -> datetime:
    """Leases are infrastructure, not domain time: a test that moves the domain clock must not expire them."""
    return datetime.now(UTC)


@dataclass
class Head:
    """An outbox row at the head of an endpoint's queue, with its subscription's delivery status."""

    id: int
    tenant: str
    subscription_id: str
    payload: dict[str, Any]
    sub_status: str
    last_failure: datetime | None

    @property
    def key(self) -> tuple[str, str]:
        return self.tenant, self.subscription_id


@dataclass
class Outcome:
    """What a round delivered, per subscription, to be written in one transaction."""

    delivered: list[Head] = field(default_factory=list)
    started: list[tuple[str, str]] = field(default_factory=list)  # one key per attempt (see inflight)

    def per_subscription(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for head in self.delivered:
            counts[head.key] = counts.get(head.key, 0) + 1
        return counts


class EndpointWorker:
    """Delivers one endpoint's queue in order."""

    def __init__(self, sender: Sender, endpoint: str) -> None:
        self.sender = sender
        self.endpoint = endpoint
        self.event = asyncio.Event()
        self.transport: Transport = transport_for(endpoint, sender.service.outbound, sender.settings.timeout,
                                                  sender.settings.concurrency)
        self.failures = 0
        self.retry_at = 0.0
        # Throttled subscriptions with rows waiting: when each may be notified next (monotonic seconds);
        # and when each was last notified. Only this endpoint's owner sends them, so memory is enough.
        self.throttle_due: dict[tuple[str, str], float] = {}
        self.throttle_sent: dict[tuple[str, str], float] = {}
        self.task: asyncio.Task[None] | None = None
        self.steps = StepGuard(f"notifications to {endpoint[:60]}")

    @property
    def settings(self) -> NotifySettings:
        return self.sender.settings

    async def run(self) -> None:
        idle = 0
        while True:
            try:
                worked = await self.steps.step(self.round())
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not kill the endpoint's worker
                log.exception("notification worker for %s failed; retrying", self.endpoint)
                worked = False
                await asyncio.sleep(1.0)
            idle = 0 if worked else idle + 1
            await self._pause(idle)

    async def _pause(self, idle: int) -> None:
        wait = self.retry_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # backing off: new rows must wait behind the failed head anyway
            return
        if idle == 0:
            return
        # Idle endpoints poll less and less often, as commits wake them; without the PostgreSQL LISTEN
        # connection (across processes, only polling finds new rows) they keep to the base interval.
        cap = MAX_IDLE_POLL if self.sender.wakes_reliable else self.settings.poll_seconds
        timeout = min(self.settings.poll_seconds * (2 ** min(idle - 1, 5)), cap)
        due = [t - time.monotonic() for t in self.throttle_due.values()]
        if due:
            timeout = max(0.0, min(timeout, *due))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()

    # ------------------------------------------------------------------ one round

    async def round(self) -> bool:
        """Send what is at the head of the queue; True when something was done."""
        if not self.sender.holds(self.endpoint):
            return False
        worked = await self._throttled_due()
        if self.retry_at > time.monotonic():
            return True  # a throttled notification just failed: back off before anything else
        heads = await self._heads()
        if not heads:
            return worked
        subs = await self._subscriptions(heads)
        outcome = Outcome()
        try:
            # After a failure only the head goes, alone: one probe per backoff, not a wave of attempts.
            for wave in _waves(heads, 1 if self.failures else self.settings.concurrency):
                sent = await asyncio.gather(*(self._deliver_one(h, subs.get(h.key), outcome) for h in wave))
                if not all(sent):
                    break
                self.failures, self.retry_at = 0, 0.0
        finally:
            try:
                await self._record_success(outcome)
            finally:
                await self.sender.service.in_flight.recorded(outcome.started)
        return True

    async def _heads(self) -> list[Head]:
        deferred = [and_(outbox.c.tenant == t, outbox.c.subscription_id == s) for t, s in self.throttle_due]
        stmt = (select(outbox.c.id, outbox.c.tenant, outbox.c.subscription_id, outbox.c.payload,
                       subscriptions.c.status, subscriptions.c.last_failure)
                .join(subscriptions, and_(subscriptions.c.tenant == outbox.c.tenant,
                                          subscriptions.c.id == outbox.c.subscription_id))
                .where(outbox.c.endpoint == self.endpoint, outbox.c.state == "pending")
                .order_by(outbox.c.id).limit(self.settings.batch))
        if deferred:
            stmt = stmt.where(not_(or_(*deferred)))
        async with self.sender.engine.connect() as conn:
            rows = await conn.execute(stmt)
            return [Head(r.id, r.tenant, r.subscription_id, r.payload, r.status, as_utc_or_none(r.last_failure))
                    for r in rows]

    async def _subscriptions(self, heads: list[Head]) -> dict[tuple[str, str], Compiled]:
        found: dict[tuple[str, str], Compiled] = {}
        async with self.sender.engine.connect() as conn:
            for tenant in {head.tenant for head in heads}:
                for sub in await self.sender.service.cache.get(conn, tenant):
                    found[(tenant, sub.id)] = sub
        return found

    async def _deliver_one(self, head: Head, sub: Compiled | None, outcome: Outcome) -> bool:
        """Deliver one row; False stops the round (a failure blocks the rows behind it)."""
        if not self.sender.holds(self.endpoint):
            return False
        if sub is None:
            return True  # deleted meanwhile: its rows went with it
        if not await self._may_send(sub):
            await self._drop([head.id])
            return True
        if sub.spec.get("throttling"):
            last = self.throttle_sent.get(head.key)
            due = time.monotonic() if last is None else last + float(sub.spec["throttling"])
            self.throttle_due.setdefault(head.key, due)
            return True
        if head.sub_status == "failed" and not self._probe_due(head):
            await self._park([head.id], "the subscription has failed; parked without a new attempt")
            return True
        self._sending(head.key, outcome)
        try:
            await self.transport.send(build_message(sub, _stamped(head.payload), head.tenant))
        except DeliveryError as exc:
            await self._record_failure([head], head, str(exc))
            return False
        outcome.delivered.append(head)
        return True

    def _sending(self, key: tuple[str, str], outcome: Outcome) -> None:
        """A delivery starts; until the round records its outcome, retrievals of the subscription wait.

        Marked before sending: a receiver may see the notification before the sender sees the answer."""
        self.sender.service.in_flight.start(key)
        outcome.started.append(key)

    def _probe_due(self, head: Head) -> bool:
        """A failed subscription gets one attempt per backoff cap, so a dead endpoint costs little."""
        if head.last_failure is None:
            return True
        return (clock.now() - head.last_failure).total_seconds() >= self.settings.backoff_cap

    # ------------------------------------------------------------------ throttling

    async def _throttled_due(self) -> bool:
        """Throttled subscriptions: one notification per period with the latest state of each entity."""
        worked = False
        for key, due in sorted(self.throttle_due.items(), key=lambda kv: kv[1]):
            if due > time.monotonic() or not self.sender.holds(self.endpoint):
                continue
            worked = True
            if not await self._send_throttled(key):
                break
        return worked

    async def _send_throttled(self, key: tuple[str, str]) -> bool:
        tenant, sub_id = key
        heads = await self._rows_of(tenant, sub_id)
        sub = (await self._subscriptions(heads)).get(key) if heads else None
        if sub is None or not heads:
            self.throttle_due.pop(key, None)
            return True
        if not await self._may_send(sub):
            await self._drop([h.id for h in heads])
            self.throttle_due.pop(key, None)
            return True
        outcome = Outcome(heads)
        self._sending(key, outcome)
        try:
            try:
                await self.transport.send(build_message(sub, _stamped(_merge(heads)), tenant))
            except DeliveryError as exc:
                await self._record_failure(heads, heads[-1], str(exc))
                return False
            self.failures, self.retry_at = 0, 0.0
            await self._record_success(outcome)
        finally:
            await self.sender.service.in_flight.recorded(outcome.started)
        self.throttle_sent[key] = time.monotonic()
        # Rows that arrive from now on wait for the next period; none pending means nothing to schedule.
        self.throttle_due.pop(key, None)
        return True

    async def _rows_of(self, tenant: str, sub_id: str) -> list[Head]:
        stmt = (select(outbox.c.id, outbox.c.payload).where(
            outbox.c.tenant == tenant, outbox.c.subscription_id == sub_id, outbox.c.endpoint == self.endpoint,
            outbox.c.state == "pending").order_by(outbox.c.id).limit(10_000))
        async with self.sender.engine.connect() as conn:
            return [Head(r.id, tenant, sub_id, r.payload, "ok", None) for r in await conn.execute(stmt)]

    # ------------------------------------------------------------------ bookkeeping

    async def _record_success(self, outcome: Outcome) -> None:
        if not outcome.delivered:
            return
        now = clock.now()
        ids = [head.id for head in outcome.delivered]
        async with self.sender.write() as conn:
            # Locks in the order every writer takes them (subscription rows by key, then outbox rows), as
            # a subscription's update or deletion does: otherwise PostgreSQL finds a deadlock between them.
            for (tenant, sub_id), count in sorted(outcome.per_subscription().items()):
                await conn.execute(update(subscriptions).where(
                    subscriptions.c.tenant == tenant, subscriptions.c.id == sub_id).values(
                    times_sent=subscriptions.c.times_sent + count, last_notification=now, last_success=now,
                    consecutive_failures=0, status="ok"))
            for start in range(0, len(ids), 1000):
                await conn.execute(delete(outbox).where(outbox.c.id.in_(ids[start:start + 1000])))

    async def _record_failure(self, heads: list[Head], head: Head, reason: str) -> None:
        self.failures += 1
        delay = min(self.settings.backoff_base * (2 ** min(self.failures - 1, 30)), self.settings.backoff_cap)
        self.retry_at = time.monotonic() + delay
        now = clock.now()
        async with self.sender.write() as conn:
            # The subscription row first, then its outbox rows: the lock order of every writer (see above).
            result = await conn.execute(update(subscriptions).where(
                subscriptions.c.tenant == head.tenant, subscriptions.c.id == head.subscription_id).values(
                times_failed=subscriptions.c.times_failed + 1, consecutive_failures=subscriptions.c.consecutive_failures
                + 1, last_failure=now, last_notification=now, last_error_reason=reason[:1000])
                .returning(subscriptions.c.consecutive_failures))
            failures = result.scalar_one_or_none() or 0
            await conn.execute(update(outbox).where(outbox.c.id.in_([h.id for h in heads])).values(
                attempts=outbox.c.attempts + 1, last_error=reason[:1000]))
            if failures >= self.settings.max_failures:
                await self._park_in(conn, head, reason, first=failures == self.settings.max_failures)
        log.warning("notification to %s failed (%s); retry in %.1fs", self.endpoint, reason, delay)

    async def _may_send(self, sub: Compiled) -> bool:
        """The owner's rights are read again at sending time (cached a few seconds): a subscription
        whose owner was disabled or deleted, or who may no longer use its filters, sends nothing."""
        service = self.sender.service
        await service.owners.refresh([sub.spec.get(OWNER_KEY)])
        return service.may_notify(sub)

    async def _drop(self, ids: list[int]) -> None:
        """Rows of a suspended subscription: never sent (they hold data masked for rights its owner lost)."""
        async with self.sender.write() as conn:
            await conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))

    async def _park(self, ids: list[int], reason: str) -> None:
        async with self.sender.write() as conn:
            await conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(state="failed",
                                                                                 last_error=reason[:1000]))

    async def _park_in(self, conn: Any, head: Head, reason: str, first: bool) -> None:
        """Too many consecutive failures: the subscription is failed and its pending rows are parked, not lost."""
        await conn.execute(update(subscriptions).where(
            subscriptions.c.tenant == head.tenant, subscriptions.c.id == head.subscription_id).values(status="failed"))
        await conn.execute(update(outbox).where(
            outbox.c.tenant == head.tenant, outbox.c.subscription_id == head.subscription_id,
            outbox.c.endpoint == self.endpoint, outbox.c.state == "pending").values(state="failed"))
        self.retry_at = 0.0  # the rows behind are other subscriptions' or probes: go on at once
        if first:
            log.error("subscription %s failed after %d attempts: %s", head.subscription_id,
                      self.settings.max_failures, reason)

    async def close(self) -> None:
        await self.transport.close()


def _entity_ids(head: Head) -> set[str]:
    return {str(entity.get("id")) for entity in head.payload.get("data", [])}


def _waves(heads: list[Head], size: int) -> list[list[Head]]:
    """Consecutive rows about different entities, sent concurrently; a row about an entity already in
    the wave starts the next wave, so each entity's notifications still go strictly in commit order."""
    waves: list[list[Head]] = []
    wave: list[Head] = []
    busy: set[str] = set()
    for head in heads:
        ids = _entity_ids(head)
        if wave and (len(wave) >= size or ids & busy):
            waves.append(wave)
            wave, busy = [], set()
        wave.append(head)
        busy |= ids
    if wave:
        waves.append(wave)
    return waves


def _stamped(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "notifiedAt": clock.iso(clock.now())}


def _merge(heads: list[Head]) -> dict[str, Any]:
    """Throttled rows as one notification: the latest data of each entity, under the id of the newest row.

    Taking the newest row's id means a re-send after a crash that includes later rows is not
    mistaken by the receiver for a duplicate of the earlier, smaller merge.
    """
    latest: dict[str, dict[str, Any]] = {}
    for head in heads:
        for entity in head.payload.get("data", []):
            latest.pop(entity["id"], None)
            latest[entity["id"]] = entity
    return {**heads[-1].payload, "data": list(latest.values())}


# ---------------------------------------------------------------------- the sender


class Sender:
    def __init__(self, engine: AsyncEngine, service: SubscriptionService, database_url: str) -> None:
        self.engine = engine
        self.service = service
        self.database_url = database_url
        self.owner = self.settings.worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workers: dict[str, EndpointWorker] = {}
        self._lease_until = 0.0  # monotonic time until which our leases are surely valid
        self._dispatch = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._steps = StepGuard("notification dispatcher")
        self._periodic_steps = StepGuard("periodic notifications")
        # Endpoints another process owns: their commits must not make us rebalance (monotonic expiry).
        self._foreign: dict[str, float] = {}
        # SQLite has one process; on PostgreSQL other processes' commits reach us only through LISTEN.
        self.wakes_reliable = engine.dialect.name != "postgresql"

    @property
    def settings(self) -> NotifySettings:
        return self.service.settings

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: on our own pool on PostgreSQL; through the hub's single-writer lock on SQLite."""
        if self.engine is self.service.store.engine:
            async with self.service.store.write() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    def holds(self, endpoint: str) -> bool:
        return endpoint in self.workers and time.monotonic() < self._lease_until

    def wake(self, endpoints: set[str]) -> None:
        for endpoint in endpoints:
            worker = self.workers.get(endpoint)
            if worker is not None:
                worker.event.set()
            elif self._foreign.get(endpoint, 0.0) < time.monotonic():
                self._dispatch.set()

    def wake_all(self) -> None:
        for worker in self.workers.values():
            worker.event.set()
        self._dispatch.set()

    async def start(self) -> None:
        self.service.wake = self.wake
        self._tasks = [asyncio.create_task(self._dispatcher(), name="notify-dispatcher"),
                       asyncio.create_task(self._scheduler(), name="notify-scheduler")]
        if self.engine.dialect.name == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen(), name="notify-listener"))

    async def stop(self) -> None:
        self.service.wake = None
        dispatcher, scheduler = [*self._tasks, None, None][:2]  # None if never started
        await asyncio.gather(self._steps.stop([dispatcher]), self._periodic_steps.stop([scheduler]),
                             cancel_and_wait(self._tasks[2:]),
                             *(w.steps.stop([w.task]) for w in self.workers.values()))
        for worker in self.workers.values():
            await worker.close()
        self.workers.clear()
        with contextlib.suppress(Exception):
            # Hand our endpoints over at once instead of after the lease runs out.
            async with self.write() as conn:
                await conn.execute(delete(leases).where(leases.c.owner == self.owner))

    # ------------------------------------------------------------------ leases and workers

    async def _dispatcher(self) -> None:
        while True:
            try:
                await self._steps.step(self._rebalance())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification dispatcher failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dispatch.wait(), self.settings.lease_seconds / 3)
            self._dispatch.clear()
            await asyncio.sleep(0.01)  # coalesce a burst of wake-ups into one rebalance

    async def _rebalance(self) -> None:
        started = time.monotonic()
        owned = await self._renew()
        self._lease_until = started + self.settings.lease_seconds * 0.8
        wanted = await self._wanted_endpoints()
        for endpoint in list(self.workers):
            if endpoint not in owned or endpoint not in wanted:
                await self._stop_worker(endpoint)
        for endpoint in wanted - set(self.workers):
            if await self._acquire(endpoint):
                self._foreign.pop(endpoint, None)
                self._start_worker(endpoint)
            else:
                self._foreign[endpoint] = time.monotonic() + self.settings.lease_seconds / 3

    async def _renew(self) -> set[str]:
        until = wall_now() + timedelta(seconds=self.settings.lease_seconds)
        async with self.write() as conn:
            rows = await conn.execute(update(leases).where(leases.c.owner == self.owner)
                                      .values(lease_until=until).returning(leases.c.endpoint))
            return {row.endpoint for row in rows}

    async def _wanted_endpoints(self) -> set[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(subscriptions.c.endpoint).distinct())
            return {row.endpoint for row in rows}

    async def _acquire(self, endpoint: str) -> bool:
        now = wall_now()
        stmt = self.service.store._insert(leases).values(
            endpoint=endpoint, owner=self.owner, lease_until=now + timedelta(seconds=self.settings.lease_seconds))
        stmt = stmt.on_conflict_do_update(
            index_elements=["endpoint"], set_={"owner": stmt.excluded.owner, "lease_until": stmt.excluded.lease_until},
            where=or_(leases.c.lease_until < now, leases.c.owner == self.owner)).returning(leases.c.owner)
        async with self.write() as conn:
            return (await conn.execute(stmt)).first() is not None

    def _start_worker(self, endpoint: str) -> None:
        worker = EndpointWorker(self, endpoint)
        worker.task = asyncio.create_task(worker.run(), name=f"notify:{endpoint[:60]}")
        self.workers[endpoint] = worker

    async def _stop_worker(self, endpoint: str) -> None:
        worker = self.workers.pop(endpoint)
        await worker.steps.stop([worker.task])
        await worker.close()

    # ------------------------------------------------------------------ PostgreSQL NOTIFY

    async def _listen(self) -> None:
        import asyncpg

        dsn = make_url(async_url(self.database_url)).set(drivername="postgresql").render_as_string(
            hide_password=False)
        while True:
            try:
                conn = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot LISTEN for notifications (%s); polling until it works", exc)
                await asyncio.sleep(2.0)
                continue
            try:
                await self._listen_on(conn)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _listen_on(self, conn: Any) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(NOTIFY_CHANNEL, lambda _c, _pid, _ch, payload: self.wake({payload}))
        self.wakes_reliable = True
        self.wake_all()  # anything committed while we were not listening
        try:
            await lost.wait()
        finally:
            self.wakes_reliable = False

    # ------------------------------------------------------------------ periodic notifications

    async def _scheduler(self) -> None:
        while True:
            try:
                await self._periodic_steps.step(self._run_periodic())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic notifications failed; retrying")
            await asyncio.sleep(0.25)

    async def _run_periodic(self) -> None:
        now = clock.now()
        async with self.engine.connect() as conn:
            due = list(await conn.execute(
                select(subscriptions.c.tenant, subscriptions.c.id, subscriptions.c.time_interval)
                .where(subscriptions.c.next_periodic_at <= now, subscriptions.c.is_active == 1)))
        for row in due:
            endpoints = await self._periodic_one(row.tenant, row.id, float(row.time_interval), now)
            self.wake(endpoints)

    async def _periodic_one(self, tenant: str, sub_id: str, interval: float, now: datetime) -> set[str]:
        service = self.service
        store = service.store
        async with self.write() as conn:
            # Whoever moves next_periodic_at first sends this period; other processes find nothing due.
            claimed = await conn.execute(update(subscriptions).where(
                subscriptions.c.tenant == tenant, subscriptions.c.id == sub_id,
                subscriptions.c.next_periodic_at <= now).values(next_periodic_at=now + timedelta(seconds=interval)))
            if claimed.rowcount != 1:
                return set()
            sub = await self.service.cache.find(conn, tenant, sub_id)
            if sub is None or not sub.live(now):
                return set()
            await service.owners.refresh([sub.spec.get(OWNER_KEY)], conn)
            if service.prepare_masking is not None:
                await service.prepare_masking(conn, tenant)
            if not service.may_notify(sub):
                return set()
            records = await _current_entities(store, conn, sub, self.settings.max_entities_per_notification)
            records = [r for r in records if service.filters_allowed(sub, r)]
            if not records:
                return set()
            if service.masker is not None:
                records = [m for m in (service.masker(sub, r) for r in records) if m is not None]
            data = [render_record(sub, record) for record in records]
            if "join" in sub.params:
                data = await join_linked(sub, list(zip(records, data, strict=True)),
                                         service.visible_loader(conn, tenant, sub))
            await self.service.enqueue(conn, [outbox_row(sub, data, now)])
        return {sub.endpoint}


async def _current_entities(store: Any, conn: Any, sub: Compiled, limit: int) -> list[EntityRecord]:
    found: dict[str, EntityRecord] = {}
    for selector in sub.spec.get("entities", []):
        selection = selector_types(selector)
        query = EntityQuery(types=typesel.all_types(selection), ids=[selector["id"]] if "id" in selector else None,
                            id_pattern=selector.get("idPattern"), q=sub.q, geo=sub.geo, expand=sub.expand,
                            limit=limit)
        records, _total = await store.query(conn, sub.tenant, query)
        for record in records:
            if typesel.matches(selection, record.types):  # a conjunction (`A;B`) needs every type
                found.setdefault(record.id, record)
    return list(found.values())[:limit]


# ---------------------------------------------------------------------- wiring


async def start_subscriptions(app: Any) -> Callable[[], Awaitable[None]]:
    """Register the matcher on the hub, start the sender (unless CITYOS_NOTIFY_WORKER=0); returns stop()."""
    hub = app.state.hub
    service = SubscriptionService(hub.service.store, hub.resolver, NotifySettings(), app.state.outbound)
    app.state.subscriptions = service
    service.owners = OwnerRights(functools.partial(_current_owner_claims, app))
    service.filter_refused, service.filter_allowed = filter_checks(app)
    service.masker = notification_masker(app, service.owners)
    service.prepare_masking = functools.partial(_refresh_classes, app)
    hub.service.listeners.append(service.on_changes)
    unsubscribe = app.state.bus.subscribe(ENTITY_CHANGED, service.after_commit)
    sender: Sender | None = None
    engine: AsyncEngine | None = None
    if service.settings.worker:
        engine = _sender_engine(app)
        sender = Sender(engine, service, app.state.settings.database_url)
        await sender.start()
    app.state.notification_sender = sender

    async def stop() -> None:
        unsubscribe()
        with contextlib.suppress(ValueError):
            hub.service.listeners.remove(service.on_changes)
        if sender is not None:
            await sender.stop()
        if engine is not None and engine is not app.state.engine:
            await engine.dispose()

    return stop


async def _current_owner_claims(app: Any, owner_id: str, conn: AsyncConnection | None) -> dict[str, Any] | None:
    """The owner's current claims from the app's security service (looked up at call time: the
    security state can be replaced). Without one, nothing is known: the stored claims are used."""
    security = getattr(app.state, "security", None)
    if security is None:
        raise LookupError("no security service")
    found: dict[str, Any] | None = await security.service.current_owner_claims(owner_id, conn)
    if found is None and not await _stored_principal(security.service.engine, owner_id, conn):
        raise OwnerAbsent(owner_id)
    return found


async def _stored_principal(engine: AsyncEngine, owner_id: str, conn: AsyncConnection | None) -> bool:
    """Is there a user (or, for ``client:<id>``, an OAuth client) with this id, disabled or not?"""
    from cityos.security.models import clients, users

    if owner_id.startswith("client:"):
        stmt = select(clients.c.client_id).where(clients.c.client_id == owner_id[len("client:"):][:128])
    else:
        stmt = select(users.c.id).where(users.c.id == owner_id[:64])
    if conn is not None:
        return (await conn.execute(stmt)).first() is not None
    async with engine.connect() as own:
        return (await own.execute(stmt)).first() is not None


async def _refresh_classes(app: Any, conn: AsyncConnection, tenant: str) -> None:
    from cityos.hub.access import refresh_classes
    from cityos.security.classes import class_registry

    await refresh_classes(class_registry(app), app.state.hub.service.store, conn, tenant)


def notification_masker(app: Any, owners: OwnerRights) -> Masker:
    """Masks notified entities for the subscription's owner with the owner's *current* rights
    (`OwnerRights`, refreshed before matching); sensitive values sent in clear are audited."""
    from cityos.hub.access import Access
    from cityos.security.audit import AuditEvent
    from cityos.security.classes import class_registry

    registry = class_registry(app)

    def masker(sub: Compiled, record: EntityRecord) -> EntityRecord | None:
        owner = owners.now(sub.spec.get(OWNER_KEY))
        if owner.suspended:
            return None
        access = Access(owner.principal, sub.tenant, registry)
        seen = access.view(record)
        security = getattr(app.state, "security", None)
        if access.revealed and security is not None:
            # Inside the hub's write transaction: queue the audit record, never wait for it here.
            security.audit.submit(AuditEvent.of(owner.principal, "entity.notify.sensitive", record.id,
                                                tenant=sub.tenant, subscription=sub.id,
                                                attrs=access.revealed[0][1]))
        return seen

    return masker


def _sender_engine(app: Any) -> AsyncEngine:
    """PostgreSQL: a small pool of its own, so a busy API never makes the sender queue for connections.

    SQLite keeps the app's engine: it has one writer anyway, serialised by the hub store's lock.
    """
    engine: AsyncEngine = app.state.engine
    if engine.dialect.name != "postgresql":
        return engine
    settings = dataclasses.replace(app.state.settings, db_pool_size=SENDER_POOL_SIZE)
    return create_engine(settings)


__all__ = ["EndpointWorker", "Sender", "start_subscriptions"]
