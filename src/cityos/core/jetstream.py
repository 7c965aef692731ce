"""The cross-process event bus on NATS JetStream (`CITYOS_EVENTS_URL=nats://…`).

What travels, and how:
- Outboxed topics (hub entity changes, device events): the row is written in the change's
  transaction; the relay publishes it to the stream with `Nats-Msg-Id` = the row's identity, waits
  for the stream's acknowledgement, then deletes it. A relay that dies between the two publishes the
  row again and JetStream drops the copy (duplicate window), so nothing is lost between commit and
  publication and nothing is published for a rolled-back change.
- Other topics are published to the stream after their commit, as the in-process bus does.
- `group` subscribers consume through durable pull consumers: every process running the group shares
  them (work-queue semantics), an event is acknowledged after its handlers have run, and redelivered
  (with the same `Event.id`) if the acknowledgement never arrived.
- `every_process` subscribers get a plain NATS subscription on the stream's subjects: live, no replay.

Ordering, for rule windows: subjects are partitioned by entity (`{subjects}.p{k}.{topic}`, k = crc32 of
the entity or device id mod `partitions`), and each group's consumer of a partition allows one
unacknowledged event (`max_ack_pending=1`): the events of one entity are handled one after another,
in the order they were committed, whichever process pulls them. `CITYOS_EVENTS_INSTANCE=i/n` makes a
process consume only the partitions k with k mod n == i, so an entity's events always reach the same
process (for state kept in memory, such as the rules engine's windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.bus_models import applied_events, dead_letters
from cityos.core.events import Decode, Encode, Event, EventBus, Handler
from cityos.core.metrics import EVENT_DEAD_LETTERS

log = logging.getLogger("cityos.events")

RELAY_BATCH = 500
STREAM_MAX_AGE = 7 * 86400.0
APPLIED_KEPT = STREAM_MAX_AGE + 86400.0  # a day past the stream's retention
PRUNE_EVERY = 3600.0
STREAM_NAME_IN_USE = 10058  # JetStream API error code


async def add_stream_when_ready(js: JetStreamContext, config: StreamConfig, attempts: int = 20) -> None:
    """Create the stream, or accept it as it exists (an operator may have tuned its settings).

    A cluster elects its meta leader a moment after it starts, and a new stream finds no peers for
    placement until then: retried every half second. Other refusals (e.g. subjects overlapping another
    stream's) are configuration errors and surface after the last attempt.
    """
    for attempt in range(attempts):
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code == STREAM_NAME_IN_USE:
                return
            if attempt == attempts - 1:
                raise
            log.info("stream not created (%r); retrying", exc)
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.info("JetStream not ready (%r); retrying", exc)
        await asyncio.sleep(0.5)


REPLAY_FOR = "Cityos-Replay-For"  # header of a replayed dead letter: the one consumer group it is for
RELAY_LOCK = 0x63697479  # PostgreSQL advisory lock: one relay at a time keeps each entity's events in order
Writer = Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection]]


@dataclass(frozen=True)
class JetStreamSettings:
    url: str
    stream: str = "CITYOS_EVENTS"
    subjects: str = "cityos.ev"  # the stream holds `{subjects}.>`
    replicas: int = 1
    partitions: int = 8
    instance: int = 0  # this process consumes partitions k with k % instances == instance
    instances: int = 1
    ack_wait: float = 30.0
    max_deliver: int = 5  # handler failures before the event is set aside in `bus_dead_letters`
    duplicate_window: float = 120.0

    @classmethod
    def from_env(cls, url: str) -> JetStreamSettings:
        instance, _, instances = (os.environ.get("CITYOS_EVENTS_INSTANCE") or "0/1").partition("/")
        return cls(url=url, stream=os.environ.get("CITYOS_EVENTS_STREAM") or cls.stream,
                   subjects=os.environ.get("CITYOS_EVENTS_SUBJECTS") or cls.subjects,
                   replicas=int(os.environ.get("CITYOS_EVENTS_REPLICAS") or 1),
                   partitions=int(os.environ.get("CITYOS_EVENTS_PARTITIONS") or 8),
                   instance=int(instance), instances=int(instances or 1),
                   ack_wait=float(os.environ.get("CITYOS_EVENTS_ACK_WAIT") or 30.0),
                   max_deliver=max(1, int(os.environ.get("CITYOS_EVENTS_MAX_DELIVER") or 5)))

    def my_partitions(self) -> list[int]:
        return [k for k in range(self.partitions) if k % self.instances == self.instance]


def partition_key(payload: dict[str, Any]) -> str:
    """The entity an event is about: its events keep their order."""
    change = payload.get("change")
    if isinstance(change, dict) and change.get("entity_id"):
        return str(change["entity_id"])
    for key in ("entity", "entity_id", "entityId", "device", "id"):
        if payload.get(key):
            return str(payload[key])
    return ""


class JetStreamBus(EventBus):
    crosses_processes = True

    def __init__(self, settings: JetStreamSettings) -> None:
        super().__init__()
        self.settings = settings
        self._groups: dict[str, dict[str, list[Handler]]] = defaultdict(lambda: defaultdict(list))
        self._everywhere: dict[str, list[Handler]] = defaultdict(list)
        self._encode: dict[str, Encode] = {}
        self._decode: dict[str, Decode] = {}
        self._outboxed: set[str] = set()
        self._writer: Writer | None = None
        self._tables: list[Table] = []
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._consuming: set[str] = set()
        self._broadcast: Any = None
        self._wake = asyncio.Event()
        # (group, partition) → (stream seq, handler failures) of the event failing there now: one event is
        # in flight per partition, so a later event means the earlier one was settled (here or by another
        # process after a redelivery) and its count can go; the map never holds more than one per partition.
        self._failures: dict[tuple[str, int], tuple[int, int]] = {}
        self.relayed = 0  # events this process's relay has had acknowledged by the stream

    # ------------------------------------------------------------------ the interface

    def subscribe(self, topic: str, handler: Handler, *, group: str | None = None,
                  every_process: bool = False) -> Callable[[], None]:
        if group is not None:
            self._groups[group][topic].append(handler)
            if self._js is not None and group not in self._consuming:
                self._start_group(group)
            return lambda: self._groups[group][topic].remove(handler)
        if every_process:
            self._everywhere[topic].append(handler)
            if self._nc is not None and self._broadcast is None:
                self._tasks.append(asyncio.create_task(self._listen_everywhere()))
            return lambda: self._everywhere[topic].remove(handler)
        return super().subscribe(topic, handler)

    def codec(self, topic: str, encode: Encode, decode: Decode) -> None:
        self._encode[topic], self._decode[topic] = encode, decode

    def outboxed(self, *topics: str) -> None:
        self._outboxed.update(topics)

    def relay_from(self, writer: Writer, tables: Sequence[Table]) -> None:
        """The outbox tables this process relays, and the write transaction to delete their rows in."""
        self._writer, self._tables = writer, list(tables)

    def encode(self, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
        encode = self._encode.get(topic)
        return encode(payload) if encode else payload

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await super().publish(topic, payload)  # this process's own listeners, as in process
        if topic in self._outboxed:
            self._wake.set()  # the row is committed: relay it now rather than at the next poll
            return
        if self._js is None:
            return
        try:
            await self._publish(topic, self.encode(topic, payload), f"direct:{uuid.uuid4().hex}")
        except Exception as exc:
            log.error("event %s not published to JetStream: %r", topic, exc)

    async def connect(self) -> None:
        """Connect and make sure the stream exists, without consuming or relaying (tools such as replay)."""
        self._nc = await nats.connect(servers(self.settings.url), name=f"cityos-{os.getpid()}",
                                      max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                      error_cb=_connection_error)
        self._js = self._nc.jetstream(timeout=5.0)
        await self._ensure_stream()

    async def start(self) -> None:
        await self.connect()
        if self._everywhere:
            await self._listen_everywhere()
        for group in list(self._groups):
            self._start_group(group)
        if self._writer is not None:
            self._tasks.append(asyncio.create_task(self._relay_loop(), name="cityos-events-relay"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._consuming.clear()
        self._broadcast = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
                await self._nc.close()
            self._nc, self._js = None, None

    # ------------------------------------------------------------------ stream and publishing

    async def _ensure_stream(self) -> None:
        assert self._js is not None
        config = StreamConfig(name=self.settings.stream, subjects=[f"{self.settings.subjects}.>"],
                              num_replicas=self.settings.replicas, storage=StorageType.FILE,
                              retention=RetentionPolicy.LIMITS, max_age=STREAM_MAX_AGE,
                              duplicate_window=self.settings.duplicate_window)
        await add_stream_when_ready(self._js, config)

    def subject(self, topic: str, payload: dict[str, Any]) -> str:
        partition = zlib.crc32(partition_key(payload).encode()) % self.settings.partitions
        return f"{self.settings.subjects}.p{partition}.{topic}"

    async def _publish(self, topic: str, payload: dict[str, Any], msg_id: str) -> None:
        assert self._js is not None
        body = orjson.dumps({"topic": topic, "payload": payload})
        await self._js.publish(self.subject(topic, payload), body, headers={"Nats-Msg-Id": msg_id})

    # ------------------------------------------------------------------ the relay

    async def _relay_loop(self) -> None:
        pruned_at = 0.0
        while True:
            try:
                if time.monotonic() - pruned_at > PRUNE_EVERY:
                    await self.prune_applied()
                    pruned_at = time.monotonic()
                moved = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event relay: %r; retrying", exc)
                moved = 0
                await asyncio.sleep(0.5)
            if moved < RELAY_BATCH:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)

    async def prune_applied(self) -> int:
        """Forget the applied-event ids older than the stream keeps events: nothing can redeliver them."""
        assert self._writer is not None
        before = clock.now() - timedelta(seconds=APPLIED_KEPT)
        async with self._writer() as conn:
            result = await conn.execute(delete(applied_events).where(applied_events.c.applied_at < before))
        return int(result.rowcount or 0)

    async def relay_once(self) -> int:
        """Publish the oldest outbox rows, wait for the stream's acknowledgements, delete them."""
        assert self._writer is not None
        moved = 0
        async with self._writer() as conn:
            if conn.dialect.name == "postgresql" and not await conn.scalar(
                    select(func.pg_try_advisory_xact_lock(RELAY_LOCK))):
                return 0  # another process relays; its order is the commit order
            for table in self._tables:
                rows = (await conn.execute(select(table.c.id, table.c.topic, table.c.payload, table.c.created_at)
                                           .order_by(table.c.id).limit(RELAY_BATCH))).all()
                if not rows:
                    continue
                # Pipelined, sent in id order. Ids are never reused (core/sqltypes.py), but a database
                # restored from a backup hands out lower ones again: the message id carries the row's
                # creation time too, so the stream's duplicate window cannot drop a new change.
                await asyncio.gather(*(self._publish(row.topic, row.payload,
                                                     f"{table.name}:{row.id}:{row.created_at.timestamp():.6f}")
                                       for row in rows))
                await conn.execute(delete(table).where(table.c.id.in_([row.id for row in rows])))
                moved += len(rows)
        self.relayed += moved
        return moved

    # ------------------------------------------------------------------ consuming

    def _start_group(self, group: str) -> None:
        self._consuming.add(group)
        for partition in self.settings.my_partitions():
            self._tasks.append(asyncio.create_task(self._consume(group, partition),
                                                   name=f"cityos-events-{group}-p{partition}"))

    def consumer_config(self, group: str, partition: int) -> ConsumerConfig:
        # The server never gives up on an event (max_deliver -1): deliveries lost with a node or a
        # connection count there too, and a limit would drop events no handler has seen. Handler
        # failures are counted here, and an event that fails them all goes to the dead letters.
        return ConsumerConfig(durable_name=f"{group}-p{partition}",
                              filter_subject=f"{self.settings.subjects}.p{partition}.>",
                              ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1,
                              ack_wait=self.settings.ack_wait, max_deliver=-1)

    async def _consume(self, group: str, partition: int) -> None:
        assert self._js is not None
        config = self.consumer_config(group, partition)
        subscription = None
        while True:
            try:
                if subscription is None:
                    # Create or update: a consumer made by an earlier version keeps its old limits otherwise.
                    await self._js.add_consumer(self.settings.stream, config)
                    subscription = await self._js.pull_subscribe_bind(durable=config.durable_name,
                                                                      stream=self.settings.stream)
                messages = await subscription.fetch(1, timeout=5.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a node down, a leader being elected: try again
                log.info("consumer %s-p%d: %r", group, partition, exc)
                await asyncio.sleep(0.5)
                continue
            for message in messages:
                await self._deliver(group, partition, message)

    def _decoded(self, message: Msg) -> Event:
        body = orjson.loads(message.data)
        topic = body["topic"]
        decode = self._decode.get(topic)
        payload = decode(body["payload"]) if decode else body["payload"]
        return Event(topic, payload, (message.headers or {}).get("Nats-Msg-Id"))

    async def _deliver(self, group: str, partition: int, message: Msg) -> None:
        replay_for = (message.headers or {}).get(REPLAY_FOR)
        if replay_for is not None and replay_for != group:
            # Another group's dead letter: this group applied the event when it first came (or set it
            # aside itself, and gets its own replay); groups that do not claim ids must not see it twice.
            with contextlib.suppress(Exception):
                await message.ack_sync(timeout=5.0)
            return
        event = self._decoded(message)
        handlers = [*self._groups[group].get(event.topic, ()), *self._groups[group].get("*", ())]
        key = (group, partition)
        sequence = message.metadata.sequence.stream
        try:
            for handler in handlers:
                await handler(event)
        except Exception as exc:
            failing_seq, earlier = self._failures.get(key, (sequence, 0))
            failures = (earlier if failing_seq == sequence else 0) + 1
            self._failures[key] = (sequence, failures)
            log.error("event handler of %s failed on %s (failure %d of %d): %r", group, event.topic, failures,
                      self.settings.max_deliver, exc)
            if failures < self.settings.max_deliver or not await self._set_aside(group, event, message, exc,
                                                                                 failures):
                with contextlib.suppress(Exception):
                    await message.nak(delay=min(2.0 ** failures, 60.0))
                return
        self._failures.pop(key, None)
        try:
            # Confirmed before the next pull: with one event in flight per partition, the server must
            # have the ack before it will hand out the next event.
            await message.ack_sync(timeout=5.0)
        except Exception as exc:  # lost with its node: redelivered, and the handlers are idempotent
            log.info("ack of %s lost: %r", event.id, exc)

    async def _set_aside(self, group: str, event: Event, message: Msg, error: Exception, failures: int) -> bool:
        """Keep an event that fails every attempt in `bus_dead_letters`; False when it could not be kept
        (no database here, or the write failed): then it stays on the stream and is tried again."""
        if self._writer is None:
            return False
        encoded = orjson.loads(message.data)["payload"]  # as carried on the stream, before the topic's codec
        try:
            async with self._writer() as conn:
                await conn.execute(insert(dead_letters).values(
                    consumer=group, event_id=event.id, topic=event.topic, payload=encoded,
                    error=repr(error)[:2000], attempts=failures, failed_at=clock.now()))
        except Exception as exc:
            log.error("event of %s not set aside: %r", group, exc)
            return False
        EVENT_DEAD_LETTERS.labels(group).inc()
        return True

    async def replay_dead_letters(self, group: str | None = None) -> tuple[int, int]:
        """Put set-aside events back on the stream with their own ids, marked for the group that failed
        (`Cityos-Replay-For`): only that group handles them; the others and live views pass them by.
        Returns (replayed, held): an event still inside the stream's duplicate window (or set aside by two
        groups, the second until the window has passed) is held back, since the stream would drop it."""
        assert self._writer is not None and self._js is not None
        query = select(dead_letters).order_by(dead_letters.c.id)
        if group is not None:
            query = query.where(dead_letters.c.consumer == group)
        replayed = held = 0
        async with self._writer() as conn:
            for row in (await conn.execute(query)).all():
                msg_id = row.event_id or f"dead:{row.id}:{uuid.uuid4().hex}"
                body = orjson.dumps({"topic": row.topic, "payload": row.payload})
                ack = await self._js.publish(self.subject(row.topic, row.payload), body,
                                             headers={"Nats-Msg-Id": msg_id, REPLAY_FOR: row.consumer})
                if ack.duplicate:
                    held += 1
                    continue
                await conn.execute(delete(dead_letters).where(dead_letters.c.id == row.id))
                replayed += 1
        return replayed, held

    async def _listen_everywhere(self) -> None:
        if self._nc is not None and self._broadcast is None:
            self._broadcast = await self._nc.subscribe(f"{self.settings.subjects}.>", cb=self._on_broadcast)

    async def _on_broadcast(self, message: Msg) -> None:
        if (message.headers or {}).get(REPLAY_FOR) is not None:
            return  # live views saw the change when it happened
        event = self._decoded(message)
        for handler in [*self._everywhere.get(event.topic, ()), *self._everywhere.get("*", ())]:
            try:
                await handler(event)
            except Exception as exc:
                log.error("event handler failed on %s: %r", event.topic, exc)


def servers(url: str) -> list[str]:
    """`nats://a:4222,nats://b:4222` → the cluster's seed list."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def _connection_error(exc: Exception) -> None:
    log.info("NATS connection: %r", exc)  # a node going away; the client reconnects to another


def bus_from_url(url: str | None) -> EventBus:
    """The in-process bus, or JetStream when a `nats://` URL is set."""
    if not url:
        return EventBus()
    return JetStreamBus(JetStreamSettings.from_env(url))
