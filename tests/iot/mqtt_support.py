"""Helpers for the tests against the real Mosquitto (CITYOS_TEST_MQTT_URL)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from cityos.hub.models import attribute_history
from cityos.iot.ingest import IngestWorker, broker_address

MQTT_URL = os.environ.get("CITYOS_TEST_MQTT_URL")
needs_mqtt = pytest.mark.skipif(not MQTT_URL, reason="CITYOS_TEST_MQTT_URL is not set")


def new_prefix() -> str:
    """Each test gets its own topic tree, so leftovers of other runs on the shared broker never mix in."""
    return f"cityos-test-{uuid.uuid4().hex[:8]}/devices"


class Publisher:
    """A device-side QoS 1 publisher that remembers which messages the broker acknowledged."""

    def __init__(self, client_id: str | None = None, url: str | None = None) -> None:
        url = url or MQTT_URL
        assert url is not None
        self.host, self.port = broker_address(url)
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        self.connected.wait(10)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self.lock:
            self.acked.add(mid)

    def publish(self, topic: str, payload: Any, qos: int = 1) -> mqtt.MQTTMessageInfo:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return self.client.publish(topic, data, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def forget_session(client_id: str, url: str | None = None) -> None:
    """Drop a persistent session a test left in the broker."""
    url = url or MQTT_URL
    assert url is not None
    host, port = broker_address(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    try:
        client.connect(host, port, 10, clean_start=True)
        client.loop_start()
        time.sleep(0.2)
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass


async def start_worker(app: Any, prefix: str, shared: bool = True, **kw: Any) -> IngestWorker:
    assert MQTT_URL is not None
    worker = IngestWorker(app.state.iot, MQTT_URL, f"test-ingest-{uuid.uuid4().hex[:8]}", shared=shared,
                          prefix=prefix, **kw)
    await worker.start()
    await worker.wait_connected()
    await asyncio.sleep(0.3)  # SUBACK
    return worker


async def stop_worker(worker: IngestWorker) -> None:
    await worker.stop()
    await asyncio.to_thread(forget_session, worker.client_id)


async def history_rows(app: Any, like: str = "%", attr: str = "pm25") -> int:
    """History rows of one attribute (readings only: the static attributes of new entities are left out)."""
    t = attribute_history.c
    async with app.state.engine.connect() as conn:
        stmt = select(func.count()).select_from(attribute_history).where(t.entity_id.like(like),
                                                                         t.attr.like(f"%/{attr}"))
        return int((await conn.execute(stmt)).scalar_one())


async def wait_for(predicate: Any, seconds: float = 30.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(every)
    return bool(await predicate())
