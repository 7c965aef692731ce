"""ThingsBoard's CoAP device API (NB-IoT devices), over real UDP with a real aiocoap client."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiocoap import Code
from iot_helpers import history_count

from coap_support import CoapCall, coap_device_api

AQ = {"name": "aq-coap", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "Meilan",
      "department": "EPB"}
OBS = "urn:ngsi-ld:AirQualityObserved:aq-coap"
AN_HOUR_AGO = int(time.time() * 1000) - 3_600_000


@pytest.fixture
async def coap(app: Any) -> AsyncIterator[CoapCall]:
    """The app's CoAP device API on a free UDP port, and a client: `await coap(method, path, payload)`."""
    async with coap_device_api(app.state.iot) as call:
        yield call


async def device(client: Any) -> str:
    response = await client.post("/api/iot/devices", json=AQ)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def letters(client: Any, reason: str) -> list[dict[str, Any]]:
    items = (await client.get("/api/iot/dead-letters", params={"reason": reason})).json()["items"]
    return [i for i in items if i.get("source") == "coap"]


async def test_telemetry_is_stored_and_answered_2_04(client: Any, coap: Any) -> None:
    token = await device(client)
    answer = await coap(Code.POST, f"/api/v1/{token}/telemetry",
                        orjson.dumps({"ts": AN_HOUR_AGO, "values": {"pm25": 33, "no2": 12}}))
    assert answer.code == Code.CHANGED, answer.payload
    assert orjson.loads(answer.payload) == {"readings": 2, "stored": 2, "duplicates": 0}
    body = (await client.get(f"/ngsi-ld/v1/entities/{OBS}")).json()
    assert body["pm25"]["value"] == 33 and body["no2"]["value"] == 12 and "observedAt" in body["pm25"]


async def test_attributes_and_a_repeated_reading_stored_once(client: Any, app: Any, coap: Any) -> None:
    token = await device(client)
    reading = orjson.dumps({"ts": AN_HOUR_AGO, "values": {"pm25": 21}})
    assert (await coap(Code.POST, f"/api/v1/{token}/telemetry", reading)).code == Code.CHANGED
    again = await coap(Code.POST, f"/api/v1/{token}/telemetry", reading)  # a device retrying after a lost answer
    assert again.code == Code.CHANGED and orjson.loads(again.payload)["duplicates"] == 1
    assert await history_count(app, OBS, "pm25") == 1
    answer = await coap(Code.POST, f"/api/v1/{token}/attributes", orjson.dumps({"firmwareVersion": "2.1.0"}))
    assert answer.code == Code.CHANGED, answer.payload
    assert (await client.get("/api/iot/devices/aq-coap")).json()["firmware"] == "2.1.0"


async def test_unknown_token_is_4_01_and_dead_lettered(client: Any, coap: Any) -> None:
    answer = await coap(Code.POST, "/api/v1/no-such-token/telemetry", orjson.dumps({"pm25": 5}))
    assert answer.code == Code.UNAUTHORIZED
    assert "unknown or revoked" in orjson.loads(answer.payload)["detail"]
    assert len(await letters(client, "unknown_token")) == 1


async def test_malformed_json_and_out_of_range_are_4_00_with_the_reason(client: Any, coap: Any) -> None:
    token = await device(client)
    answer = await coap(Code.POST, f"/api/v1/{token}/telemetry", b'{"pm25": 4')
    assert answer.code == Code.BAD_REQUEST
    assert orjson.loads(answer.payload)["detail"].startswith("malformed_json")
    answer = await coap(Code.POST, f"/api/v1/{token}/telemetry", orjson.dumps({"pm25": -50}))
    assert answer.code == Code.BAD_REQUEST
    assert [r["reason"] for r in orjson.loads(answer.payload)["rejected"]] == ["out_of_range"]
    assert len(await letters(client, "malformed_json")) == 1


async def test_oversize_payload_is_4_13(client: Any, app: Any, coap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await device(client)
    small = dataclasses.replace(app.state.iot.settings, max_payload_bytes=2000)
    monkeypatch.setattr(app.state.iot, "settings", small)  # the payload below goes blockwise, 1 KiB a block
    big = orjson.dumps({"pm25": 1, "note": "x" * 3000})
    answer = await coap(Code.POST, f"/api/v1/{token}/telemetry", big)
    assert answer.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert len(await letters(client, "oversize")) == 1


async def test_other_paths_and_methods_are_refused(client: Any, coap: Any) -> None:
    token = await device(client)
    assert (await coap(Code.POST, f"/api/v1/{token}/rpc")).code == Code.NOT_FOUND
    assert (await coap(Code.POST, "/api/v1/telemetry")).code == Code.NOT_FOUND
    assert (await coap(Code.GET, f"/api/v1/{token}/telemetry")).code == Code.METHOD_NOT_ALLOWED
    assert (await coap(Code.POST, "/elsewhere")).code == Code.NOT_FOUND
