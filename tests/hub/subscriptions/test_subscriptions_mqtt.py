"""MQTT notifications through a real broker (Mosquitto at CITYOS_TEST_MQTT_URL)."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import httpx
import orjson
import pytest

from cityos.hub.subscriptions.delivery import UNREACHABLE
from hub.helpers import JSON, air
from hub.subscriptions.notify_helpers import E, S, subscription

MQTT_URL = os.environ.get("CITYOS_TEST_MQTT_URL")
pytestmark = pytest.mark.skipif(not MQTT_URL, reason="CITYOS_TEST_MQTT_URL is not set")


async def _collect(client: aiomqtt.Client, want: int, seconds: float = 10.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append(orjson.loads(message.payload))
            if len(got) >= want:
                return

    await asyncio.wait_for(read(), seconds)
    return got


@pytest.mark.parametrize("qos", ["0", "1", "2"])  # MQTT-QoS 0, 1 or 2 (v1.8.1 §5.2.22)
async def test_mqtt_notifications(client: httpx.AsyncClient, qos: str) -> None:
    assert MQTT_URL is not None
    broker = urlsplit(MQTT_URL)
    topic = f"cityos/test/{uuid.uuid4().hex}"
    uri = f"mqtt://{broker.hostname}:{broker.port or 1883}/{topic}"
    async with aiomqtt.Client(broker.hostname or "127.0.0.1", broker.port or 1883) as mqtt:
        await mqtt.subscribe(topic, qos=1)
        body = subscription(uri, notification={"endpoint": {
            "uri": uri, "notifierInfo": [{"key": "MQTT-QoS", "value": qos}],
            "receiverInfo": [{"key": "X-Origin", "value": "cityos-test"}]}, "format": "keyValues"})
        r = await client.post(S, json=body, headers=JSON)
        assert r.status_code == 201, r.text
        sub_id = r.headers["Location"].rsplit("/", 1)[1]
        for n in range(3):
            assert (await client.post(E, json=air(n, 10 + n), headers=JSON)).status_code == 201
        got = await _collect(mqtt, 3)
    # Different entities may be notified concurrently: only each entity's own order is guaranteed.
    assert sorted(m["body"]["data"][0]["pm25"] for m in got) == [10, 11, 12]
    first = got[0]
    assert first["body"]["type"] == "Notification" and first["body"]["subscriptionId"] == sub_id
    assert first["metadata"]["Content-Type"] == "application/json"
    assert first["metadata"]["NGSILD-Notification-Id"] == first["body"]["id"]
    assert first["metadata"]["X-Origin"] == "cityos-test"
    await asyncio.sleep(0.2)
    status = (await client.get(f"{S}/{sub_id}")).json()["notification"]
    assert status["timesSent"] == 3 and status["status"] == "ok"


async def test_mqtt_broker_down_is_a_failure(client: httpx.AsyncClient) -> None:
    from hub.subscriptions.notify_helpers import closed_port

    uri = f"mqtt://127.0.0.1:{closed_port()}/cityos/nowhere"
    r = await client.post(S, json=subscription(uri), headers=JSON)
    sub_id = r.headers["Location"].rsplit("/", 1)[1]
    await client.post(E, json=air(1), headers=JSON)
    for _ in range(100):
        status = (await client.get(f"{S}/{sub_id}")).json()["notification"]
        if status.get("timesFailed", 0) >= 1:  # shown from the first attempt on
            break
        await asyncio.sleep(0.05)
    # A generic reason (no "connection refused"): port state stays unknown to the subscriber.
    assert status["timesFailed"] >= 1 and status["lastErrorReason"] == UNREACHABLE
