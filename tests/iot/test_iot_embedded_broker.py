"""The embedded broker (the demo's amqtt): token authentication, topic mapping, and credentials
that change while a device is connected — a rotated or revoked token ends its session at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityos.iot.models import DeviceIn
from cityos.sim.platform import EmbeddedBroker, free_port


class Device:
    """A firmware-like MQTT 3.1.1 client: username = access token, ThingsBoard topics."""

    def __init__(self, port: int, token: str, client_id: str) -> None:
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(token)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.port = port

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        (self.refused if reason.is_failure else self.connected).set()

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port, 30)
        self.client.loop_start()

    def publish(self, values: dict[str, Any]) -> None:
        self.client.publish("v1/devices/me/telemetry", orjson.dumps(values), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Listener:
    """The platform's side: what reaches the mapped topics."""

    def __init__(self, port: int) -> None:
        self.topics: list[str] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-platform", protocol=mqtt.MQTTv311)
        self.client.username_pw_set("cityos-ingest")
        self.client.on_connect = lambda c, *_a: c.subscribe("cityos/devices/+/telemetry", qos=1)
        self.client.on_subscribe = lambda *_a: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.topics.append(m.topic)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _until(event: threading.Event | Any, seconds: float = 8.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (event.is_set() if isinstance(event, threading.Event) else event()):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def broker(iot: Any) -> AsyncIterator[tuple[int, Listener]]:
    port = free_port(0)
    embedded = EmbeddedBroker("127.0.0.1", port)
    await embedded.start(iot)
    listener = Listener(port)
    try:
        assert await _until(listener.ready), "the platform listener did not subscribe"
        yield port, listener
    finally:
        listener.close()
        await embedded.stop()


async def _connected(port: int, token: str, client_id: str) -> Device:
    device = Device(port, token, client_id)
    device.start()
    assert await _until(lambda: device.connected.is_set() or device.refused.is_set())
    return device


async def test_a_device_publishes_under_its_own_name(iot: Any, broker: tuple[int, Listener]) -> None:
    port, listener = broker
    _, token = await iot.provision(DeviceIn(name="emb-1", profile="air-quality", lon=110.3, lat=20.0))
    device = await _connected(port, token, "emb-1-client")
    try:
        assert device.connected.is_set()
        device.publish({"pm25": 12})
        assert await _until(lambda: "cityos/devices/emb-1/telemetry" in listener.topics)
    finally:
        device.close()


async def test_unknown_token_is_refused(broker: tuple[int, Listener]) -> None:
    port, _ = broker
    device = await _connected(port, "not-a-token", "stranger")
    try:
        assert device.refused.is_set() and not device.connected.is_set()
    finally:
        device.close()


async def test_revoking_a_token_ends_the_session_at_once(iot: Any, broker: tuple[int, Listener]) -> None:
    port, listener = broker
    _, token = await iot.provision(DeviceIn(name="emb-2", profile="air-quality", lon=110.3, lat=20.0))
    device = await _connected(port, token, "emb-2-client")
    device.client.reconnect_delay_set(60, 120)  # no automatic reconnect inside the test's window
    try:
        await iot.revoke_token("emb-2")
        assert await _until(device.disconnected), "the revoked device is still connected"
        heard = len(listener.topics)
        again = await _connected(port, token, "emb-2-again")
        try:
            assert again.refused.is_set() and not again.connected.is_set()
            again.publish({"pm25": 13})
            await asyncio.sleep(0.5)
            assert len(listener.topics) == heard
        finally:
            again.close()
    finally:
        device.close()


async def test_rotation_drops_the_old_token_and_admits_the_new(iot: Any, broker: tuple[int, Listener]) -> None:
    port, listener = broker
    _, old = await iot.provision(DeviceIn(name="emb-3", profile="air-quality", lon=110.3, lat=20.0))
    device = await _connected(port, old, "emb-3-client")
    device.client.reconnect_delay_set(60, 120)
    try:
        new = await iot.rotate_token("emb-3")
        assert await _until(device.disconnected)
        stale = await _connected(port, old, "emb-3-stale")
        stale.close()
        assert stale.refused.is_set()
        fresh = await _connected(port, new, "emb-3-fresh")
        try:
            assert fresh.connected.is_set()
            fresh.publish({"pm25": 14})
            assert await _until(lambda: "cityos/devices/emb-3/telemetry" in listener.topics)
        finally:
            fresh.close()
    finally:
        device.close()


async def test_a_message_sent_after_revocation_is_not_delivered(iot: Any, broker: tuple[int, Listener]) -> None:
    """Even before the session is closed, the broker drops what the device sends on its old token."""
    port, listener = broker
    _, token = await iot.provision(DeviceIn(name="emb-4", profile="air-quality", lon=110.3, lat=20.0))
    device = await _connected(port, token, "emb-4-client")
    device.client.reconnect_delay_set(60, 120)
    try:
        iot.token_epoch["emb-4"] = iot.token_epoch.get("emb-4", 0) + 1  # the change, before any event is out
        device.publish({"pm25": 15})
        assert await _until(device.disconnected)
        await asyncio.sleep(0.3)
        assert "cityos/devices/emb-4/telemetry" not in listener.topics
    finally:
        device.close()
