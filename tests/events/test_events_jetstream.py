"""Domain events on a real NATS JetStream cluster (3 nodes started by the test, loopback ports).

The producer writes outbox rows in its transactions, as the hub and IoT do; each bus's relay publishes
them and deletes them; two consumer "processes" (two buses, two connections) share a durable group.
Effects are rows written together with the event's claimed id: every committed event's effect must be
there exactly once and, per entity, in commit order, even when a NATS node is killed mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import Settings
from cityos.core import clock
from cityos.core.bus_models import bus_outbox, claim, dead_letters
from cityos.core.db import create_engine
from cityos.core.events import Event, EventBus
from cityos.core.jetstream import JetStreamBus, JetStreamSettings, servers
from nats_cluster import NatsCluster

TOPIC = "test.reading.counted"
test_tables = MetaData()
effects = Table("test_bus_effects", test_tables,
                Column("seq_applied", Integer, primary_key=True, autoincrement=True),
                Column("entity", String(64), nullable=False), Column("seq", Integer, nullable=False),
                Column("consumer", String(16), nullable=False))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=database_url))
    async with engine.begin() as conn:
        await conn.run_sync(test_tables.create_all)
        await conn.execute(effects.delete())
        await conn.execute(bus_outbox.delete())
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(test_tables.drop_all)
        await engine.dispose()


def settings(url: str, **overrides: Any) -> JetStreamSettings:
    return JetStreamSettings(url=url, stream=f"T{uuid.uuid4().hex[:8]}", subjects=f"t{uuid.uuid4().hex[:8]}",
                             **{"replicas": 3, "partitions": 4, "ack_wait": 3.0, **overrides})


def writer(engine: AsyncEngine) -> Any:
    return lambda: engine.begin()


def consumer(engine: AsyncEngine, name: str, seen: list[str]) -> Any:
    """The effect and the event's id commit together: a redelivered event changes nothing."""
    async def handle(event: Event) -> None:
        async with engine.begin() as conn:
            if not await claim(conn, "counter", event):
                seen.append(f"repeat:{event.id}")
                return
            await conn.execute(insert(effects).values(entity=event.payload["entity"], seq=event.payload["seq"],
                                                      consumer=name))
    return handle


async def produce(conn: AsyncConnection, entity: str, seq: int) -> None:
    await conn.execute(insert(bus_outbox).values(tenant="", topic=TOPIC, payload={"entity": entity, "seq": seq},
                                                 created_at=clock.now()))


async def wait_for_effects(engine: AsyncEngine, count: int, seconds: float = 90.0) -> int:
    found = 0
    for _ in range(int(seconds * 10)):
        async with engine.connect() as conn:
            found = int((await conn.execute(select(func.count()).select_from(effects))).scalar_one())
        if found >= count:
            return found
        await asyncio.sleep(0.1)
    return found


async def what_is_missing(engine: AsyncEngine, cfg: JetStreamSettings, entities: list[str], count: int) -> str:
    """For a failure message: which events have no effect, and what the stream's consumers hold."""
    done = {(r.entity, r.seq) for r in await applied(engine)}
    missing = sorted((e, s) for e in entities for s in range(count) if (e, s) not in done)
    async with engine.connect() as conn:
        dead = (await conn.execute(select(func.count()).select_from(dead_letters))).scalar_one()
        outbox = (await conn.execute(select(func.count()).select_from(bus_outbox))).scalar_one()
    connection = await nats.connect(servers(cfg.url))
    try:
        infos = [await connection.jetstream().consumer_info(cfg.stream, f"counter-p{k}")
                 for k in range(cfg.partitions)]
        consumers = [(i.name, i.num_pending, i.num_ack_pending, i.num_redelivered, i.delivered.stream_seq)
                     for i in infos]
    except Exception as exc:
        consumers = [repr(exc)]
    finally:
        await connection.close()
    return f"missing {missing[:12]}… ({len(missing)}), dead letters {dead}, outbox {outbox}, consumers {consumers}"


async def applied(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(effects).order_by(effects.c.seq_applied))).all())


@contextlib.asynccontextmanager
async def buses(cfg: JetStreamSettings, engine: AsyncEngine, names: list[str],
                seen: list[str]) -> AsyncIterator[list[JetStreamBus]]:
    started: list[JetStreamBus] = []
    try:
        for name in names:
            bus = JetStreamBus(cfg)
            bus.outboxed(TOPIC)
            bus.relay_from(writer(engine), [bus_outbox])
            bus.subscribe(TOPIC, consumer(engine, name, seen), group="counter")
            await bus.start()
            started.append(bus)
        yield started
    finally:
        for bus in started:
            await bus.close()


def assert_once_and_in_order(rows: list[Any], expected: dict[str, int]) -> None:
    pairs = [(r.entity, r.seq) for r in rows]
    assert len(pairs) == len(set(pairs)), "an event was applied twice"
    for entity, count in expected.items():
        assert [s for e, s in pairs if e == entity] == list(range(count)), f"{entity}: lost or out of order"


async def test_in_process_bus_ignores_groups_and_has_no_event_ids(engine: AsyncEngine) -> None:
    bus, got = EventBus(), []

    async def handler(event: Event) -> None:
        got.append(event)
        async with engine.begin() as conn:
            assert await claim(conn, "counter", event)  # no id: always new

    bus.subscribe(TOPIC, handler, group="counter")
    await bus.publish(TOPIC, {"entity": "a", "seq": 0})
    assert [(e.topic, e.payload, e.id) for e in got] == [(TOPIC, {"entity": "a", "seq": 0}, None)]


async def test_relay_publishes_committed_rows_once_and_never_rolled_back_ones(
        cluster: NatsCluster, engine: AsyncEngine) -> None:
    seen: list[str] = []
    cfg = settings(cluster.url)
    async with buses(cfg, engine, ["a", "b"], seen):
        async with engine.begin() as conn:
            for seq in range(20):
                await produce(conn, "e1", seq)
        with contextlib.suppress(RuntimeError):
            async with engine.begin() as conn:
                await produce(conn, "e1", 999)
                raise RuntimeError("the change fails: its event must never be published")
        assert await wait_for_effects(engine, 20) == 20
        await asyncio.sleep(1.0)  # time for a wrongly published event to arrive
        rows = await applied(engine)
        assert_once_and_in_order(rows, {"e1": 20})
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(bus_outbox))).scalar_one() == 0


async def test_a_relayed_row_published_again_is_dropped_by_the_stream(cluster: NatsCluster,
                                                                      engine: AsyncEngine) -> None:
    """A relay that died after the stream acknowledged but before its DELETE committed publishes again."""
    seen: list[str] = []
    cfg = settings(cluster.url)
    async with buses(cfg, engine, ["a"], seen) as (bus,):
        async with engine.begin() as conn:
            await produce(conn, "e2", 0)
        assert await wait_for_effects(engine, 1) == 1
        # The same row again, as the dead relay would have sent it: same id, same creation time.
        row = {"id": 1, "created_at": clock.now()}
        msg_id = f"bus_outbox:{row['id']}:{row['created_at'].timestamp():.6f}"
        await bus._publish(TOPIC, {"entity": "e3", "seq": 0}, msg_id)
        await bus._publish(TOPIC, {"entity": "e3", "seq": 0}, msg_id)
        assert await wait_for_effects(engine, 2) == 2
        await asyncio.sleep(1.0)
        assert_once_and_in_order(await applied(engine), {"e2": 1, "e3": 1})
        assert seen == []  # not even redelivered: the stream kept one copy


class GatedBus(JetStreamBus):
    """A relay whose publishing waits for the test: another relay's work can be put in between."""

    def __init__(self, settings: JetStreamSettings) -> None:
        super().__init__(settings)
        self.gate, self.publishing = asyncio.Event(), asyncio.Event()

    async def _publish(self, topic: str, payload: dict[str, Any], msg_id: str) -> None:
        self.publishing.set()
        await self.gate.wait()
        await super()._publish(topic, payload, msg_id)


async def outbox_seqs(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return [row.payload["seq"] for row in (await conn.execute(select(bus_outbox.c.payload))).all()]


async def test_a_slow_relay_never_deletes_a_change_that_took_a_relayed_rows_id(cluster: NatsCluster,
                                                                               engine: AsyncEngine) -> None:
    """Two relays: the slow one read a row, the fast one relayed and deleted it, and a new change took the
    freed id (SQLite reuses the highest id once its row is gone). The slow relay's delete must spare it."""
    cfg = settings(cluster.url, replicas=1, partitions=1)
    slow, fast = GatedBus(cfg), JetStreamBus(cfg)
    for bus in (slow, fast):
        bus.relay_from(writer(engine), [bus_outbox])
        await bus.connect()
    try:
        async with engine.begin() as conn:
            await produce(conn, "r1", 0)
        slow_relay = asyncio.create_task(slow.relay_once())
        await asyncio.wait_for(slow.publishing.wait(), 10)
        await fast.relay_once()  # on PostgreSQL the slow one holds the relay lock: this relays nothing
        async with engine.begin() as conn:
            await produce(conn, "r1", 1)
        slow.gate.set()
        assert await asyncio.wait_for(slow_relay, 10) == 1
        assert await outbox_seqs(engine) == [1]  # the new change waits for its own relay
        assert await fast.relay_once() == 1 and await outbox_seqs(engine) == []
    finally:
        slow.gate.set()
        for bus in (slow, fast):
            await bus.close()


async def test_killing_a_node_mid_stream_loses_nothing_and_applies_nothing_twice(
        cluster: NatsCluster, engine: AsyncEngine) -> None:
    seen: list[str] = []
    cfg = settings(cluster.url)
    entities = [f"ent{i}" for i in range(6)]
    per_entity = 60
    try:
        async with buses(cfg, engine, ["a", "b"], seen):
            for seq in range(per_entity):
                async with engine.begin() as conn:  # one committed change per entity per round
                    for entity in entities:
                        await produce(conn, entity, seq)
                if seq == per_entity // 3:
                    cluster.nodes[0].kill()
                await asyncio.sleep(0.01)
            total = len(entities) * per_entity
            found = await wait_for_effects(engine, total)
            assert found == total, await what_is_missing(engine, cfg, entities, per_entity)
            await asyncio.sleep(2 * cfg.ack_wait)  # any redelivery of a lost ack comes within this
            rows = await applied(engine)
            assert_once_and_in_order(rows, dict.fromkeys(entities, per_entity))
            # Which of the two pulls each event depends on who asks first (on a loaded machine one may get
            # them all): the split of work is checked where it is deterministic, in the instances test.
            assert {r.consumer for r in rows} <= {"a", "b"}
    finally:
        cluster.nodes[0].start()  # back for the module's other tests, even after a failure here


async def test_instances_split_the_partitions_so_an_entity_stays_with_one_process(
        cluster: NatsCluster, engine: AsyncEngine) -> None:
    """CITYOS_EVENTS_INSTANCE=i/n: the rules engine keeps windows in memory; an entity never moves."""
    seen: list[str] = []
    base = settings(cluster.url, partitions=8)
    started: list[JetStreamBus] = []
    try:
        for index, name in enumerate(["a", "b"]):
            bus = JetStreamBus(JetStreamSettings(**{**base.__dict__, "instance": index, "instances": 2}))
            bus.outboxed(TOPIC)
            bus.relay_from(writer(engine), [bus_outbox])
            bus.subscribe(TOPIC, consumer(engine, name, seen), group="counter")
            await bus.start()
            started.append(bus)
        entities = [f"w{i}" for i in range(10)]
        async with engine.begin() as conn:
            for seq in range(10):
                for entity in entities:
                    await produce(conn, entity, seq)
        assert await wait_for_effects(engine, 100) == 100
        rows = await applied(engine)
        assert_once_and_in_order(rows, dict.fromkeys(entities, 10))
        owners: dict[str, set[str]] = {}
        for r in rows:
            owners.setdefault(r.entity, set()).add(r.consumer)
        assert all(len(o) == 1 for o in owners.values())
        assert set().union(*owners.values()) == {"a", "b"}
    finally:
        for bus in started:
            await bus.close()


async def test_an_entity_change_reaches_every_process_as_a_change(cluster: NatsCluster, engine: AsyncEngine) -> None:
    """The cockpit's live view in process B sees a change committed by process A (every_process)."""
    from datetime import UTC, datetime

    from cityos.hub import events_out
    from cityos.hub.service import ENTITY_CHANGED, Change
    from cityos.hub.store import EntityRecord

    cfg = settings(cluster.url)
    writer_bus, viewer_bus = JetStreamBus(cfg), JetStreamBus(cfg)
    for bus in (writer_bus, viewer_bus):
        bus.codec(ENTITY_CHANGED, events_out.encode, events_out.decode)
        bus.outboxed(ENTITY_CHANGED)
    writer_bus.relay_from(writer(engine), [bus_outbox])
    seen: list[Event] = []

    async def live_view(event: Event) -> None:
        seen.append(event)

    viewer_bus.subscribe(ENTITY_CHANGED, live_view, every_process=True)
    now = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    after = EntityRecord("urn:ngsi-ld:Device:d1", ["https://uri.etsi.org/ngsi-ld/default-context/Device"],
                         {"https://uri.etsi.org/ngsi-ld/default-context/battery": [{"@value": 80}]}, now, now)
    change = Change("urn:ngsi-ld:Device:d1", None, after, {"https://uri.etsi.org/ngsi-ld/default-context/battery"})
    try:
        await viewer_bus.start()
        await writer_bus.start()
        async with engine.begin() as conn:  # process A's write transaction
            await conn.execute(insert(bus_outbox).values(
                tenant="", topic=ENTITY_CHANGED, payload=events_out.encode({"tenant": "", "change": change}),
                created_at=clock.now()))
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.1)
        [event] = seen
        got = event.payload["change"]
        assert isinstance(got, Change) and got.kind == "created"
        assert (got.entity_id, got.after, got.changed_attrs) == (change.entity_id, after, change.changed_attrs)
    finally:
        await writer_bus.close()
        await viewer_bus.close()


async def test_an_event_whose_handler_keeps_failing_is_set_aside_and_replayed_once_fixed(
        cluster: NatsCluster, engine: AsyncEngine) -> None:
    """Nothing is dropped: after `max_deliver` failures the event waits in `bus_dead_letters`, the
    partition moves on, and a replay reaches only the group that failed (the other claimed it already)."""
    cfg = settings(cluster.url, replicas=1, partitions=1, max_deliver=2, duplicate_window=1.0)
    broken = {"on": True}
    audit: list[tuple[str, int]] = []

    async def fragile(event: Event) -> None:
        if broken["on"] and event.payload["seq"] == 1:
            raise RuntimeError("the handler's downstream is down")
        await consumer(engine, "fragile", [])(event)

    audit_calls: list[int] = []

    async def auditor(event: Event) -> None:  # a group that does not claim ids (as ratings, environment)
        audit_calls.append(event.payload["seq"])
        audit.append((event.payload["entity"], event.payload["seq"]))

    bus = JetStreamBus(cfg)
    bus.outboxed(TOPIC)
    bus.relay_from(writer(engine), [bus_outbox])
    bus.subscribe(TOPIC, fragile, group="counter")
    bus.subscribe(TOPIC, auditor, group="audit")
    await bus.start()
    try:
        async with engine.begin() as conn:
            for seq in range(3):
                await produce(conn, "d1", seq)
        assert await wait_for_effects(engine, 2) == 2  # seq 0 and 2: the partition did not stall for good
        for _ in range(100):
            async with engine.connect() as conn:
                kept = (await conn.execute(select(dead_letters))).all()
            if kept:
                break
            await asyncio.sleep(0.1)
        [letter] = kept
        assert (letter.consumer, letter.topic, letter.payload, letter.attempts) == (
            "counter", TOPIC, {"entity": "d1", "seq": 1}, 2)
        assert "downstream is down" in letter.error and letter.event_id.startswith("bus_outbox:")
        assert [(r.entity, r.seq) for r in await applied(engine)] == [("d1", 0), ("d1", 2)]

        broken["on"] = False
        await asyncio.sleep(1.5)  # past the duplicate window, or the stream would drop the replay
        assert await bus.replay_dead_letters("counter") == (1, 0)
        assert await wait_for_effects(engine, 3) == 3
        await asyncio.sleep(1.0)
        assert sorted((r.entity, r.seq) for r in await applied(engine)) == [("d1", 0), ("d1", 1), ("d1", 2)]
        # The replay is marked for the group that failed: the audit group, which has no claims to skip
        # a repeat by, is not handed it at all.
        assert audit == [("d1", 0), ("d1", 1), ("d1", 2)] and audit_calls == [0, 1, 2]
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(dead_letters))).scalar_one() == 0
        assert bus._failures == {}  # the set-aside event's count went with it: nothing kept per event
    finally:
        await bus.close()


async def test_a_consumer_made_with_a_delivery_limit_is_updated_to_none(cluster: NatsCluster,
                                                                      engine: AsyncEngine) -> None:
    """A server-side limit drops events lost in transit with a node: consumers of older versions lose it."""
    cfg = settings(cluster.url, replicas=1, partitions=1)
    connection = await nats.connect(servers(cluster.url))
    bus = JetStreamBus(cfg)
    bus.subscribe(TOPIC, consumer(engine, "a", []), group="counter")
    try:
        js = connection.jetstream()
        await js.add_stream(name=cfg.stream, subjects=[f"{cfg.subjects}.>"])
        old = bus.consumer_config("counter", 0)
        await js.add_consumer(cfg.stream, old.evolve(max_deliver=5))
        await bus.start()
        for _ in range(50):
            info = await js.consumer_info(cfg.stream, "counter-p0")
            if info.config.max_deliver == -1:
                break
            await asyncio.sleep(0.1)
        assert info.config.max_deliver == -1
    finally:
        await bus.close()
        await connection.close()
