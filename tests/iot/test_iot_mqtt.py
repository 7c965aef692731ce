"""MQTT ingestion against the real Mosquitto: manual ack after commit, bad input, shared subscription, RPC."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from mqtt_support import (
    MQTT_URL,
    Publisher,
    history_rows,
    needs_mqtt,
    new_prefix,
    start_worker,
    stop_worker,
    wait_for,
)
from sqlalchemy import select

from cityos.iot.commands import CommandSender
from cityos.iot.ingest import InboundMessage, InOrderAcks
from cityos.iot.messages import Envelope
from cityos.iot.models import DeviceIn, RpcIn, devices

pytestmark = needs_mqtt


async def provision(app: Any, count: int, profile: str = "air-quality", prefix: str = "m") -> list[str]:
    specs = [DeviceIn(name=f"{prefix}-{i:03d}", profile=profile, lon=110.3, lat=20.0, district=f"D{i % 3}")
             for i in range(count)]
    result = await app.state.iot.provision_many(specs)
    assert not result.errors
    return [s.name for s in specs]


async def test_mqtt_telemetry_is_acked_after_commit(client: Any, app: Any) -> None:
    names = await provision(app, 5)
    topics = new_prefix()
    worker = await start_worker(app, topics)
    commits: list[int] = []
    worker.stats.on_commit.append(lambda envs, report: commits.append(len(envs)))
    publisher = Publisher()
    try:
        base = int(time.time() * 1000) - 60_000
        for i in range(200):
            name = names[i % 5]
            payload = {"ts": base + i, "values": {"pm25": i % 300, "no2": 10}}
            publisher.publish(f"{topics}/{name}/telemetry", payload).wait_for_publish(5)
        assert await wait_for(_rows_equal(app, 200))
        assert await wait_for(_acked(worker, 200))
        assert sum(commits) == 200 and worker.stats.batches < 200  # batched
        body = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:m-004?options=keyValues")).json()
        assert body["pm25"] == 199 % 300
        device = (await client.get("/api/iot/devices/m-004")).json()
        assert device["status"] == "active"
    finally:
        publisher.close()
        await stop_worker(worker)


def _acked(worker: Any, n: int) -> Any:
    async def check() -> bool:
        return bool(worker.stats.acked >= n)
    return check


def _rows_equal(app: Any, n: int, like: str = "urn:ngsi-ld:AirQualityObserved:%") -> Any:
    async def check() -> bool:
        return await history_rows(app, like) >= n
    return check


async def test_mqtt_bad_input_never_stops_the_loop(client: Any, app: Any) -> None:
    names = await provision(app, 1)
    topics = new_prefix()
    worker = await start_worker(app, topics)
    publisher = Publisher()
    try:
        bad = [(f"{topics}/{names[0]}/telemetry", b"{not json"),
               (f"{topics}/{names[0]}/telemetry", b'{"pm25": "x"}'),
               (f"{topics}/{names[0]}/telemetry", b'{"unknown": 1}'),
               (f"{topics}/ghost/telemetry", b'{"pm25": 1}'),
               (f"{topics}/{names[0]}/gateway/telemetry", b'{"x": []}'),
               (f"{topics}/{names[0]}/telemetry", b"\x00\xff" * 10),
               (f"{topics}/{names[0]}/telemetry", b'{"pm25": 33}')]
        for topic, payload in bad:
            publisher.publish(topic, payload).wait_for_publish(5)
        assert await wait_for(_acked(worker, len(bad)))
        letters = (await client.get("/api/iot/dead-letters")).json()["items"]
        assert sorted(d["reason"] for d in letters) == sorted(
            ["malformed_json", "wrong_type", "unknown_key", "unknown_device", "not_a_gateway", "malformed_json"])
        assert all(d["source"] == "mqtt" and d["topic"].startswith(topics) for d in letters)
        body = (await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:{names[0]}")).json()
        assert body["pm25"]["value"] == 33
    finally:
        publisher.close()
        await stop_worker(worker)


async def test_redelivered_messages_are_stored_once(client: Any, app: Any) -> None:
    names = await provision(app, 1)
    topics = new_prefix()
    worker = await start_worker(app, topics)
    publisher = Publisher()
    try:
        ts = int(time.time() * 1000) - 1000
        for _ in range(5):  # the same reading published five times (a device retrying)
            publisher.publish(f"{topics}/{names[0]}/telemetry", {"ts": ts, "values": {"pm25": 5}}).wait_for_publish(5)
        assert await wait_for(_acked(worker, 5))
        assert await history_rows(app, "urn:ngsi-ld:AirQualityObserved:%") == 1
    finally:
        publisher.close()
        await stop_worker(worker)


async def test_two_workers_share_the_load(client: Any, app: Any) -> None:
    names = await provision(app, 20)
    topics = new_prefix()
    workers = [await start_worker(app, topics), await start_worker(app, topics)]
    publisher = Publisher()
    total = 2000
    try:
        base = int(time.time() * 1000) - 600_000
        infos = [publisher.publish(f"{topics}/{names[i % 20]}/telemetry", {"ts": base + i, "values": {"pm25": 1}})
                 for i in range(total)]
        for info in infos:
            info.wait_for_publish(10)
        assert await wait_for(_rows_equal(app, total), 60)
        await asyncio.sleep(0.5)
        received = [w.stats.received for w in workers]
        assert sum(received) == total, received  # none lost, none delivered twice
        assert await history_rows(app, "urn:ngsi-ld:AirQualityObserved:%") == total
        share = received[0] / total
        assert 0.4 <= share <= 0.6, received
    finally:
        publisher.close()
        for worker in workers:
            await stop_worker(worker)


async def test_rpc_round_trip(client: Any, app: Any) -> None:
    names = await provision(app, 1)
    topics = new_prefix()
    worker = await start_worker(app, topics)
    device = Publisher()
    answered: list[str] = []

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        rpc_id = message.topic.rsplit("/", 1)[1]
        answered.append(message.payload.decode())
        device.client.publish(f"{topics}/{names[0]}/rpc/response/{rpc_id}", b'{"ok": true}', qos=1)

    device.client.on_message = on_message
    device.client.subscribe(f"{topics}/{names[0]}/rpc/request/+", qos=1)
    assert MQTT_URL is not None
    sender = CommandSender(app.state.iot, MQTT_URL, prefix=topics)
    try:
        await asyncio.sleep(0.3)
        request = await sender.send(names[0], RpcIn(method="reboot", params={"delay": 0}, timeout=5000))
        assert request["status"] in ("sent", "succeeded")

        async def done() -> bool:
            return bool((await app.state.iot.get_rpc(request["id"]))["status"] == "succeeded")

        assert await wait_for(done, 10)
        assert '"method":"reboot"' in answered[0]
        assert (await app.state.iot.get_rpc(request["id"]))["response"] == {"ok": True}
    finally:
        device.close()
        await sender.close()
        await stop_worker(worker)


async def test_an_answer_is_recorded_while_readings_wait_and_acked_after_them(client: Any, app: Any) -> None:
    """A device's RPC answer takes its own lane: it is committed while a batch of readings is held up, and
    its PUBACK still waits for the reading that came in before it (MQTT acknowledges in order)."""
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("holds up one lane with a row lock; SQLite locks the whole database")
    sensor, cabinet = await provision(app, 2)
    request = await app.state.iot.create_rpc(cabinet, RpcIn(method="setPhase", params={"phase": 1}, timeout=30000))
    topics = new_prefix()
    worker = await start_worker(app, topics)
    publisher = Publisher()
    try:
        async with app.state.engine.connect() as blocker:
            transaction = await blocker.begin()
            await blocker.execute(select(devices.c.id).where(devices.c.name == sensor).with_for_update())
            reading = {"ts": int(time.time() * 1000), "values": {"pm25": 12, "no2": 10}}
            publisher.publish(f"{topics}/{sensor}/telemetry", reading).wait_for_publish(5)
            assert await wait_for(_received(worker, 1), 10)
            publisher.publish(f"{topics}/{cabinet}/rpc/response/{request['id']}", {"phase": 1}).wait_for_publish(5)

            async def answered() -> bool:
                return bool((await app.state.iot.get_rpc(request["id"]))["status"] == "succeeded")

            assert await wait_for(answered, 10)
            assert await history_rows(app) == 0  # the reading is still waiting for its device's row
            assert worker.stats.acked == 0  # so the answer's PUBACK waits too
            await transaction.rollback()
        assert await wait_for(_rows_equal(app, 1), 10)
        assert await wait_for(_acked(worker, 2), 10)
        assert (await app.state.iot.get_rpc(request["id"]))["response"] == {"phase": 1}
    finally:
        publisher.close()
        await stop_worker(worker)


def _received(worker: Any, n: int) -> Any:
    async def check() -> bool:
        return bool(worker.stats.received >= n)
    return check


def test_acknowledgements_leave_in_arrival_order() -> None:
    acks = InOrderAcks()
    msgs = [InboundMessage(generation=1, mid=100 + i, qos=1, envelope=Envelope("d", "telemetry", b"{}", "mqtt"), seq=i)
            for i in range(4)]
    assert acks.committed([msgs[2]]) == []  # committed early (an answer), held for 0 and 1
    assert acks.committed([msgs[0]]) == [msgs[0]]
    assert acks.committed([msgs[3], msgs[1]]) == [msgs[1], msgs[2], msgs[3]]
    assert acks.committed([]) == []
