"""Devices straight to NATS's MQTT listener, with users generated from the device registry.

A real `nats-server` (MQTT listener and JetStream on, its own loopback ports, started here) includes
the users file CityOS writes and is signalled to reload it. Real MQTT clients (paho) connect as
devices: an allowed device's reading is stored through the JetStream ingest worker; a device
publishing on another device's topic is dropped by the server; a rotated token stops working and a
deleted device can no longer connect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from cityos.hub.models import attribute_history
from cityos.iot.models import DeviceIn
from cityos.iot.nats_ingest import JetStreamIngestWorker
from cityos.iot.nats_mqtt import NatsMqttSettings, NatsMqttUsers, nats_password_hash, render
from own_services import free_port, wait_for_port

SERVICE_PASSWORD = uuid.uuid4().hex


class MqttNats:
    """One nats-server with JetStream and an MQTT listener, including `users.conf`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cityos-nats-mqtt-"))
        self.port, self.mqtt_port = free_port(), free_port()
        self.users = self.dir / "users.conf"
        self.pid_file = self.dir / "nats.pid"
        self.conf = self.dir / "nats.conf"
        self.conf.write_text("\n".join([
            "server_name: mqtt-test", f"listen: 127.0.0.1:{self.port}", f'pid_file: "{self.pid_file}"',
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}', f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}",
            'include "users.conf"', ""]))
        self.log = self.dir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str = "cityos", password: str = SERVICE_PASSWORD) -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["nats-server", "-c", str(self.conf)], stdout=log, stderr=log)
        if not (wait_for_port(self.port, 20) and wait_for_port(self.mqtt_port, 20)):
            raise RuntimeError(f"nats-server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Device:
    """A paho client connected as a device (username = name, password = token)."""

    def __init__(self, server: MqttNats, name: str, token: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
        self.client.username_pw_set(name, token)
        self.connack: Any = None
        self.disconnected = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.server = server

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = reason

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.disconnected = True

    def connect(self, seconds: float = 20.0) -> bool:
        """True when the server accepted the device, False when it refused it."""
        self.client.connect("127.0.0.1", self.server.mqtt_port)
        self.client.loop_start()
        deadline = time.monotonic() + seconds
        while self.connack is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.connack is not None, "no CONNACK"
        return not self.connack.is_failure

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        info = self.client.publish(topic, orjson.dumps(body), qos=1)
        info.wait_for_publish(20)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def device_connects(server: MqttNats, name: str, token: str) -> bool:
    device = Device(server, name, token)
    try:
        return await asyncio.to_thread(device.connect)
    finally:
        await asyncio.to_thread(device.close)


async def eventually(check: Any, seconds: float = 60.0) -> bool:
    for _ in range(int(seconds * 10)):
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
async def server(app: Any) -> AsyncIterator[tuple[MqttNats, NatsMqttUsers]]:
    nodes = MqttNats()
    settings = NatsMqttSettings(nodes.users, nodes.pid_file, "cityos", nats_password_hash(SERVICE_PASSWORD),
                                poll_seconds=600.0)  # only the registry's events wake it in this test
    users = NatsMqttUsers(app.state.engine, app.state.iot.tenant, settings)
    app.state.iot.settings = dataclasses.replace(app.state.iot.settings, nats_mqtt=True)
    await users.sync_once()  # the include exists before the server reads its config
    nodes.start()
    users.attach(app.state.bus)
    users.start()
    try:
        yield nodes, users
    finally:
        await users.stop()
        nodes.stop()


async def pm25_values(app: Any, device: str) -> list[float]:
    t = attribute_history.c
    async with app.state.engine.connect() as conn:
        rows = (await conn.execute(select(t.instance).where(t.entity_id.like(f"%:{device}"),
                                                            t.attr.like("%/pm25")))).all()
    return [float(_value(instance)) for (instance,) in rows]


def _value(instance: Any) -> Any:
    """The stored instance's value (expanded JSON-LD: a list of value objects or one)."""
    while isinstance(instance, list) and instance:
        instance = instance[0]
    if isinstance(instance, dict):
        for key in ("@value", "https://uri.etsi.org/ngsi-ld/hasValue", "value"):
            if key in instance:
                return _value(instance[key])
    return instance


def test_render_skips_dotted_names_on_nats_2_9_and_quotes_the_rest() -> None:
    settings = NatsMqttSettings(Path("/nonexistent"), None, "svc", "$2a$04$x")
    text = render(settings, [("b-1", "$2a$04$b"), ("a.b", "$2a$04$a"), ('q"x', "$2a$04$q")])
    assert '"a.b"' not in text and '"cityos.devices.b-1.>"' in text
    assert '"q\\"x"' in text  # quoted as a string: a name cannot end the entry early
    assert '"cityos.devices.a//b.>"' in render(settings, [("a.b", "$2a$04$a")], dotted_topics=True)


async def test_devices_connect_to_nats_mqtt_with_registry_credentials(
        client: Any, app: Any, server: tuple[MqttNats, NatsMqttUsers]) -> None:
    nodes, users = server
    reloads = users.reloads
    names = ["mq-1", "mq-2", "mq.dotted"]
    result = await app.state.iot.provision_many([DeviceIn(name=n, profile="air-quality", lon=110.3, lat=20.0,
                                                          district="D1") for n in names])
    assert not result.errors
    tokens = {row["name"]: row["token"] for row in result.created}
    assert await eventually(lambda: _reloaded(users, reloads))
    text = nodes.users.read_text()
    assert all(token not in text for token in tokens.values())  # only bcrypts reach the file
    assert '"mq.dotted"' not in text  # NATS 2.9 refuses dotted topics: that device stays on Mosquitto

    stream = f"D{uuid.uuid4().hex[:8]}"
    worker = JetStreamIngestWorker(app.state.iot, nodes.url(), "w-mqtt", stream=stream, batch=20, ack_wait=5.0)
    watcher = await nats.connect(nodes.url())
    seen: list[tuple[str, bytes]] = []

    async def on_message(message: Any) -> None:
        seen.append((message.subject, message.data))

    await watcher.subscribe("cityos.devices.>", cb=on_message)
    await watcher.flush()
    await worker.start()
    one = Device(nodes, "mq-1", tokens["mq-1"])
    try:
        # The reload is applied by the server a moment after the signal: the device retries until accepted.
        assert await eventually(lambda: device_connects(nodes, "mq-1", tokens["mq-1"]))
        assert not await device_connects(nodes, "mq-1", "not-the-token")
        assert not await device_connects(nodes, "mq-1", tokens["mq-2"])  # another device's token
        assert await asyncio.to_thread(one.connect)
        now = int(time.time() * 1000)
        await asyncio.to_thread(one.publish, "cityos/devices/mq-1/telemetry", {"ts": now, "values": {"pm25": 41}})
        assert await eventually(lambda: _has(app, "mq-1", 41.0))

        # mq-1 on mq-2's topic, then on its own: one connection keeps their order, so once the second
        # has reached the stream's subscribers, the first would have too had the server let it through.
        await asyncio.to_thread(one.publish, "cityos/devices/mq-2/telemetry", {"ts": now, "values": {"pm25": 666}})
        if one.disconnected:  # a server may also close the offender's connection: reconnect for the marker
            one = Device(nodes, "mq-1", tokens["mq-1"])
            assert await asyncio.to_thread(one.connect)
        await asyncio.to_thread(one.publish, "cityos/devices/mq-1/telemetry",
                                {"ts": now + 1000, "values": {"pm25": 42}})
        assert await eventually(lambda: _has(app, "mq-1", 42.0))
        assert [s for s, _ in seen] == ["cityos.devices.mq-1.telemetry"] * 2
        assert await pm25_values(app, "mq-2") == []

        # A rotated token: the old one is refused once the server has reloaded, the new one accepted.
        reloads = users.reloads
        new_token = await app.state.iot.rotate_token("mq-2")
        assert await eventually(lambda: _reloaded(users, reloads))
        assert await eventually(lambda: _refused(nodes, "mq-2", tokens["mq-2"]))
        assert await device_connects(nodes, "mq-2", new_token)

        # A deleted device: its user is gone and it can no longer connect.
        reloads = users.reloads
        await app.state.iot.delete_device("mq-1")
        assert await eventually(lambda: _reloaded(users, reloads))
        assert '"mq-1"' not in nodes.users.read_text()
        assert await eventually(lambda: _refused(nodes, "mq-1", tokens["mq-1"]))
    finally:
        await asyncio.to_thread(one.close)
        await worker.stop()
        await watcher.close()


async def _reloaded(users: NatsMqttUsers, before: int) -> bool:
    return users.reloads > before


async def _has(app: Any, device: str, value: float) -> bool:
    return value in await pm25_values(app, device)


async def _refused(server: MqttNats, name: str, token: str) -> bool:
    return not await device_connects(server, name, token)
