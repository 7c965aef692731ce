"""Domain handlers under JetStream redelivery, on a real 3-node cluster: each effect is applied once.

A redelivery is what JetStream does when a consumer's acknowledgement never arrives (its process
died after committing, a node went down). Here it is produced for real: the group's last handler
fails the first delivery of every event *after* the domain handler has committed its effect, the
bus naks, and the server delivers the same message again (same `Nats-Msg-Id`, so the same
`Event.id`). The effects are then read back from the tables: one alarm counted once, one incident,
one timeline entry for its alarm's clearing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import select

from cityos.core.bus_models import applied_events
from cityos.core.events import Event
from cityos.core.jetstream import JetStreamBus, JetStreamSettings
from cityos.hub import events_out
from cityos.hub.service import ENTITY_CHANGED
from cityos.ops.incidents.listeners import Listeners
from cityos.ops.incidents.models import incidents, steps
from cityos.ops.rules.models import alarms
from nats_cluster import NatsCluster

JSON = {"Content-Type": "application/json"}
ALARM_TOPICS = ("ops.alarm.raised", "ops.alarm.cleared")


class FailFirstDelivery:
    """The group's last handler: fails each event's first delivery, after the effects committed."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()

    async def __call__(self, event: Event) -> None:
        assert event.id is not None
        self.deliveries[event.id] += 1
        if self.deliveries[event.id] == 1:
            raise RuntimeError("the acknowledgement is lost")

    def redelivered(self, count: int) -> bool:
        return sum(1 for n in self.deliveries.values() if n >= 2) >= count


async def wait_for(check: Any, seconds: float = 60.0) -> bool:
    for _ in range(int(seconds * 10)):
        if check():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_redelivered_events_apply_rules_and_incidents_once(client: Any, app: Any,
                                                                 cluster: NatsCluster) -> None:
    entity = f"urn:ngsi-ld:AirQualityObserved:redelivered-{uuid.uuid4().hex[:6]}"
    # A real change of the hub, taken before any rule exists (the in-process rules raise nothing on it).
    seen: list[Event] = []

    async def keep(event: Event) -> None:
        seen.append(event)

    undo = app.state.bus.subscribe(ENTITY_CHANGED, keep)
    made = await client.post("/ngsi-ld/v1/entityOperations/upsert", headers=JSON, json=[
        {"id": entity, "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 150}}])
    undo()
    assert made.status_code in (201, 204), made.text
    [change] = [e.payload for e in seen if e.payload["change"].entity_id == entity]
    rule = await client.post("/api/ops/rules", json={
        "id": "pm25-redelivered", "name": "PM2.5 high", "entityTypes": ["AirQualityObserved"], "severity": "major",
        "condition": {"threshold": {"attr": "pm25", "op": ">", "value": 115}}})
    assert rule.status_code == 201, rule.text

    cfg = JetStreamSettings(url=cluster.url, stream=f"R{uuid.uuid4().hex[:8]}", subjects=f"r{uuid.uuid4().hex[:8]}",
                            replicas=3, partitions=2, ack_wait=5.0)
    bus = JetStreamBus(cfg)
    bus.codec(ENTITY_CHANGED, events_out.encode, events_out.decode)
    # Each group consumes every event of its partitions; each fails every event's first delivery.
    failing = {"rules": FailFirstDelivery(), "incidents": FailFirstDelivery()}
    bus.subscribe(ENTITY_CHANGED, app.state.ops_rules.on_entity_changed, group="rules")
    bus.subscribe("*", failing["rules"], group="rules")
    listeners = Listeners(app.state.ops_incidents, bus)
    bus.subscribe("*", failing["incidents"], group="incidents")
    alarm = {"id": 990001, "severity": "major", "message": "PM2.5 150", "entityId": entity, "district": "d1",
             "department": "environment", "category": "environment", "subCategory": "airPollution",
             "incident": {"category": "environment.air", "level": "general"}}
    try:
        await bus.start()
        await bus.publish(ENTITY_CHANGED, change)
        await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": alarm})
        assert await wait_for(lambda: all(f.redelivered(2) for f in failing.values())), failing
        # The clearing after the incident exists (the same partition keeps them in order anyway).
        await bus.publish("ops.alarm.cleared", {"tenant": "", "alarm": {"id": alarm["id"]}})
        assert await wait_for(lambda: all(f.redelivered(3) for f in failing.values())), failing
        await asyncio.sleep(2.0)  # the redelivered copies' handlers have returned; let the last ack land
    finally:
        listeners.close()
        await bus.close()

    async with app.state.engine.connect() as conn:
        raised = (await conn.execute(select(alarms.c.count, alarms.c.status).where(
            alarms.c.entity_id == entity, alarms.c.rule_id == "pm25-redelivered"))).all()
        opened = (await conn.execute(select(incidents.c.id).where(
            incidents.c.dedup_key == f"alarm:{alarm['id']}"))).all()
        notes = (await conn.execute(select(steps.c.action).where(
            steps.c.incident_id.in_([row.id for row in opened]), steps.c.action == "alarm.cleared"))).all()
        claimed = (await conn.execute(select(applied_events.c.consumer, applied_events.c.event_id))).all()
    assert [(row.count, row.status) for row in raised] == [(1, "active")]  # counted once, not twice
    assert len(opened) == 1
    assert len(notes) == 1
    # Every event handled twice was claimed once, under the consumer that applied it.
    for group, expected in (("rules", 1), ("incidents", 2)):
        twice = {event_id for event_id, n in failing[group].deliveries.items() if n >= 2}
        assert len(twice) == 3
        assert sum(1 for c, e in claimed if c == group and e in twice) == expected


async def test_applied_ids_are_forgotten_after_the_streams_retention(app: Any) -> None:
    """The relay prunes claims no stream can redeliver any more (older than its retention and a day)."""
    from datetime import timedelta

    from sqlalchemy import delete, insert

    from cityos.core import clock
    from cityos.core.jetstream import APPLIED_KEPT

    engine = app.state.engine
    now = clock.now()
    rows = [{"consumer": "prune-test", "event_id": "old", "applied_at": now - timedelta(seconds=APPLIED_KEPT + 60)},
            {"consumer": "prune-test", "event_id": "recent", "applied_at": now - timedelta(days=1)}]
    async with engine.begin() as conn:
        await conn.execute(delete(applied_events).where(applied_events.c.consumer == "prune-test"))
        await conn.execute(insert(applied_events), rows)
    bus = JetStreamBus(JetStreamSettings(url="nats://127.0.0.1:1"))  # never started: pruning needs no server
    bus.relay_from(lambda: engine.begin(), [])
    assert await bus.prune_applied() >= 1
    async with engine.connect() as conn:
        left = (await conn.execute(select(applied_events.c.event_id).where(
            applied_events.c.consumer == "prune-test"))).scalars().all()
    assert left == ["recent"]


async def test_a_redelivered_wristband_fall_raises_one_care_alert(client: Any, app: Any,
                                                                 cluster: NatsCluster) -> None:
    """Eldercare's alert keys hold the time of handling: without the claim a redelivery is a second fall."""
    from cityos.livelihood import models as m
    from cityos.livelihood.eldercare.api import _wristband_listener
    from livelihood.lh_support import BASE, born_years_ago, register

    device = f"wb-{uuid.uuid4().hex[:6]}"
    subject = f"P-{uuid.uuid4().hex[:6]}"
    seen: list[Event] = []

    async def keep(event: Event) -> None:
        seen.append(event)

    # The wristband's change is taken before it belongs to anyone: the in-process listener ignores it.
    undo = app.state.bus.subscribe(ENTITY_CHANGED, keep)
    made = await client.post("/ngsi-ld/v1/entities", headers=JSON, json={
        "id": f"urn:ngsi-ld:Device:{device}", "type": "Device", "fallDetected": {"type": "Property", "value": True}})
    undo()
    assert made.status_code == 201, made.text
    [change] = [e.payload for e in seen if e.payload["change"].entity_id == f"urn:ngsi-ld:Device:{device}"]
    await register(client, subject, {"birth_date": born_years_ago(82), "hukou": "local"}, user_id=f"u-{subject}",
                   district="d-east")
    enrolled = await client.put(f"{BASE}/care/people", json={
        "subject": subject, "devices": [device], "chain": [{"role": "emergency", "ackMinutes": 5}]})
    assert enrolled.status_code == 200, enrolled.text

    cfg = JetStreamSettings(url=cluster.url, stream=f"E{uuid.uuid4().hex[:8]}", subjects=f"e{uuid.uuid4().hex[:8]}",
                            replicas=3, partitions=2, ack_wait=5.0)
    bus = JetStreamBus(cfg)
    bus.codec(ENTITY_CHANGED, events_out.encode, events_out.decode)
    failing = FailFirstDelivery()
    bus.subscribe(ENTITY_CHANGED, _wristband_listener(app.state.livelihood_care), group="eldercare")
    bus.subscribe("*", failing, group="eldercare")
    try:
        await bus.start()
        await bus.publish(ENTITY_CHANGED, change)
        assert await wait_for(lambda: failing.redelivered(1)), failing.deliveries
        await asyncio.sleep(2.0)  # the redelivered copy's handler has returned; let its ack land
    finally:
        await bus.close()
    async with app.state.engine.connect() as conn:
        alerts = (await conn.execute(select(m.care_alerts.c.kind).where(
            m.care_alerts.c.subject_id == subject))).all()
    assert [a.kind for a in alerts] == ["fall"]
