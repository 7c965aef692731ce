"""Ingestion through the ThingsBoard HTTP device API and IotService.ingest: mapping, validation,
dead letters, duplicates, out-of-order readings, backfill, gateways, replay."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from iot_helpers import history_count, ms

from cityos.core import clock
from cityos.iot.messages import Envelope

AQ = {"name": "aq-1", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "Meilan", "department": "EPB"}
OBS = "urn:ngsi-ld:AirQualityObserved:aq-1"


async def setup_device(client: Any, **over: Any) -> str:
    response = await client.post("/api/iot/devices", json={**AQ, **over})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def entity(client: Any, entity_id: str = OBS) -> dict[str, Any]:
    response = await client.get(f"/ngsi-ld/v1/entities/{entity_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def letters(client: Any, **params: Any) -> list[dict[str, Any]]:
    return list((await client.get("/api/iot/dead-letters", params=params)).json()["items"])


async def test_flat_payload_lands_in_observed_and_device_entities(client: Any, app: Any) -> None:
    token = await setup_device(client)
    response = await client.post(f"/api/v1/{token}/telemetry", json={"pm25": 41, "humidity": 55.5, "battery": 80})
    assert response.status_code == 200, response.text
    body = await entity(client)
    assert body["pm25"]["value"] == 41 and body["pm25"]["unitCode"] == "GQ" and "observedAt" in body["pm25"]
    assert body["relativeHumidity"]["unitCode"] == "P1"  # key mapping humidity → relativeHumidity
    assert body["location"]["value"]["coordinates"] == [110.3, 20.0]
    device = await entity(client, "urn:ngsi-ld:Device:aq-1")
    assert device["deviceState"]["value"] == "active" and device["batteryLevel"]["value"] == 80
    assert "dateLastValueReported" in device
    assert await history_count(app, OBS, "pm25") == 1


async def test_ts_values_and_arrays(client: Any, app: Any) -> None:
    token = await setup_device(client)
    now = clock.now()
    t1, t2, t3 = (ms(now - timedelta(minutes=m)) for m in (3, 2, 1))
    payload = [{"ts": t1, "values": {"pm25": 1}}, {"ts": t2, "values": {"pm25": 2}}, {"ts": t3, "values": {"pm25": 3}}]
    assert (await client.post(f"/api/v1/{token}/telemetry", json=payload)).status_code == 200
    assert (await entity(client))["pm25"]["value"] == 3
    assert await history_count(app, OBS, "pm25") == 3


async def test_duplicates_are_stored_once(client: Any, app: Any) -> None:
    token = await setup_device(client)
    ts = ms(clock.now() - timedelta(seconds=30))
    message = {"ts": ts, "values": {"pm25": 7, "no2": 9}}
    for _ in range(3):
        assert (await client.post(f"/api/v1/{token}/telemetry", json=message)).status_code == 200
    same_batch = await client.post(f"/api/v1/{token}/telemetry", json=[message, message])
    assert same_batch.json()["duplicates"] == 4
    assert await history_count(app, OBS, "pm25") == 1 and await history_count(app, OBS, "no2") == 1
    # an older duplicate (already in history, not the latest) is recognised too
    newer = {"ts": ts + 1000, "values": {"pm25": 8}}
    await client.post(f"/api/v1/{token}/telemetry", json=newer)
    again = await client.post(f"/api/v1/{token}/telemetry", json=message)
    assert again.json()["stored"] == 0 and again.json()["duplicates"] == 2
    assert await history_count(app, OBS, "pm25") == 2


async def test_out_of_order_and_backfill_never_move_latest_backwards(client: Any, app: Any) -> None:
    token = await setup_device(client)
    now = clock.now()
    newest = ms(now - timedelta(seconds=10))
    await client.post(f"/api/v1/{token}/telemetry", json={"ts": newest, "values": {"pm25": 50}})
    late = [{"ts": ms(now - timedelta(hours=h)), "values": {"pm25": h}} for h in range(1, 72)]
    response = await client.post(f"/api/v1/{token}/telemetry", json=late)
    assert response.status_code == 200 and response.json()["stored"] == 71
    body = await entity(client)
    assert body["pm25"]["value"] == 50
    assert await history_count(app, OBS, "pm25") == 72
    too_old = {"ts": ms(now - timedelta(hours=80)), "values": {"pm25": 1}}
    rejected = await client.post(f"/api/v1/{token}/telemetry", json=too_old)
    assert rejected.status_code == 400 and "bad_timestamp" in rejected.text
    future = {"ts": ms(now + timedelta(hours=1)), "values": {"pm25": 1}}
    assert (await client.post(f"/api/v1/{token}/telemetry", json=future)).status_code == 400


async def test_bad_input_goes_to_dead_letters(client: Any, app: Any) -> None:
    token = await setup_device(client)
    cases = [
        (b'{"pm25": 12', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b'"just a string"', 400, "bad_payload"),
        (b'{"pm25": "high"}', 400, "wrong_type"),
        (b'{"pm25": true}', 400, "wrong_type"),
        (b'{"pm25": -3}', 400, "out_of_range"),
        (b'{"colour": "red"}', 400, "unknown_key"),
        (b'{"ts": "yesterday", "values": {"pm25": 1}}', 400, "bad_timestamp"),
        (b'{"ts": 1, "values": {}}', 400, "bad_timestamp"),
    ]
    for payload, status, reason in cases:
        response = await client.post(f"/api/v1/{token}/telemetry", content=payload,
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == status, (payload, response.text)
        assert reason in response.text, (payload, response.text)
    reasons = [d["reason"] for d in await letters(client)]
    assert reasons == [r for _, _, r in cases]
    # nothing was stored
    assert "pm25" not in await entity(client)
    # a mixed message keeps its good readings and dead-letters the bad ones
    mixed = await client.post(f"/api/v1/{token}/telemetry", json={"pm25": 10, "pm10": 99999, "x": 1})
    assert mixed.status_code == 200 and mixed.json()["readings"] == 1
    last = (await letters(client))[-1]
    assert last["payload"]["values"] == {"pm10": 99999, "x": 1} and last["device"] == "aq-1"


async def test_unknown_token_and_oversize(client: Any, app: Any, monkeypatch: Any) -> None:
    token = await setup_device(client)
    unknown = await client.post("/api/v1/not-a-token/telemetry", json={"pm25": 1})
    assert unknown.status_code == 401
    monkeypatch.setattr(app.state.iot, "settings", type(app.state.iot.settings)(max_payload_bytes=1000))
    big = await client.post(f"/api/v1/{token}/telemetry", content=b'{"pm25": ' + b" " * 2000 + b"1}",
                            headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    reasons = [(d["reason"], d["device"]) for d in await letters(client)]
    assert reasons == [("unknown_token", None), ("oversize", "aq-1")]


async def test_replay_dead_letter_with_fixed_payload(client: Any, app: Any) -> None:
    token = await setup_device(client)
    ts = ms(clock.now() - timedelta(seconds=5))
    await client.post(f"/api/v1/{token}/telemetry", json={"ts": ts, "values": {"pm25": "12.5"}})
    letter = (await letters(client))[0]
    still_bad = await client.post(f"/api/iot/dead-letters/{letter['id']}/replay")
    assert still_bad.status_code == 422
    fixed = await client.post(f"/api/iot/dead-letters/{letter['id']}/replay",
                              json={"payload": {"ts": ts, "values": {"pm25": 12.5}}})
    assert fixed.status_code == 200, fixed.text
    assert (await entity(client))["pm25"]["value"] == 12.5
    assert await letters(client) == []
    assert (await letters(client, status="replayed"))[0]["id"] == letter["id"]
    twice = await client.post(f"/api/iot/dead-letters/{letter['id']}/replay")
    assert twice.status_code == 409
    bad_body = await client.post(f"/api/iot/dead-letters/{letter['id']}/replay", content=b"{nope")
    assert bad_body.status_code == 400


async def test_replay_of_unknown_token_letter_needs_a_device(client: Any) -> None:
    await setup_device(client)
    await client.post("/api/v1/bogus/telemetry", json={"pm25": 3})
    letter = (await letters(client))[0]
    assert (await client.post(f"/api/iot/dead-letters/{letter['id']}/replay")).status_code == 400
    ok = await client.post(f"/api/iot/dead-letters/{letter['id']}/replay", json={"device": "aq-1"})
    assert ok.status_code == 200 and (await entity(client))["pm25"]["value"] == 3


async def test_client_attributes(client: Any) -> None:
    token = await setup_device(client)
    response = await client.post(f"/api/v1/{token}/attributes", json={"fw_version": "2.1.0", "model": "AQ-9"})
    assert response.status_code == 200, response.text
    device = await entity(client, "urn:ngsi-ld:Device:aq-1")
    assert device["firmwareVersion"]["value"] == "2.1.0" and device["model"]["value"] == "AQ-9"
    assert (await client.get("/api/iot/devices/aq-1")).json()["firmware"] == "2.1.0"
    bad = await client.post(f"/api/v1/{token}/attributes", json={"bad name": 1})
    assert bad.status_code == 400


async def test_gateway_forms(client: Any, app: Any) -> None:
    gw = await client.post("/api/iot/devices", json={**AQ, "name": "gw-1", "profile": "smart-meter", "gateway": True})
    assert gw.status_code == 201
    await setup_device(client)
    iot = app.state.iot
    ts = ms(clock.now() - timedelta(hours=2))
    report = await iot.ingest([
        Envelope("gw-1", "gateway/connect", orjson.dumps({"device": "meter-9", "type": "smart-meter"})),
        Envelope("gw-1", "gateway/telemetry", orjson.dumps({
            "aq-1": [{"ts": ts, "values": {"pm25": 5}}, {"ts": ts + 60_000, "values": {"pm25": 6}}],
            "meter-9": [{"ts": ts, "values": {"kwh": 1200.5, "power": 3.2}}],
            "ghost": [{"ts": ts, "values": {"pm25": 1}}]})),
        Envelope("gw-1", "gateway/attributes", orjson.dumps({"meter-9": {"fw_version": "1.0"}})),
        Envelope("aq-1", "gateway/telemetry", orjson.dumps({"aq-1": {"pm25": 1}})),
    ])
    assert report.readings == 4
    assert sorted(r.reason for r in report.rejections) == ["not_a_gateway", "unknown_device"]
    assert (await entity(client))["pm25"]["value"] == 6
    meter = await entity(client, "urn:ngsi-ld:EnergyMeter:meter-9")
    assert meter["totalActiveEnergyImport"]["unitCode"] == "KWH"
    child = (await client.get("/api/iot/devices/meter-9")).json()
    assert child["gatewayName"] == "gw-1" and child["firmware"] == "1.0"
    device = await entity(client, "urn:ngsi-ld:Device:meter-9")
    assert device["refGateway"]["object"] == "urn:ngsi-ld:Device:gw-1"


async def test_device_typed_profile_keeps_readings_on_device(client: Any) -> None:
    token = await setup_device(client, name="smoke-1", profile="smoke")
    assert (await client.post(f"/api/v1/{token}/telemetry", json={"smoke": 3, "alarm": False})).status_code == 200
    device = await entity(client, "urn:ngsi-ld:Device:smoke-1")
    assert device["smokeDensity"]["value"] == 3 and device["fireAlarm"]["value"] is False
    assert "refDevice" not in device


async def test_enum_and_boolean_keys(client: Any) -> None:
    token = await setup_device(client, name="park-1", profile="parking-spot")
    assert (await client.post(f"/api/v1/{token}/telemetry", json={"status": "occupied"})).status_code == 200
    wrong = await client.post(f"/api/v1/{token}/telemetry", json={"status": "flying"})
    assert wrong.status_code == 400 and "out_of_range" in wrong.text


async def test_loop_survives_garbage_batch(client: Any, app: Any) -> None:
    await setup_device(client)
    iot = app.state.iot
    junk = [Envelope("aq-1", "telemetry", bytes([0xff, 0xfe, 0x00])), Envelope(None, "telemetry", b"{}"),
            Envelope("aq-1", "bogus", b"{}"), Envelope("aq-1", "telemetry", b"[1, 2]"),
            Envelope("aq-1", "telemetry", b'{"pm25": 1e999}'), Envelope("aq-1", "telemetry", b'{"pm25": 4}')]
    report = await iot.ingest(junk)
    assert report.readings == 1 and report.dead_letters == 5
    assert (await entity(client))["pm25"]["value"] == 4


async def test_redelivered_reading_without_ts_is_a_duplicate(client: Any, app: Any) -> None:
    """A reading without "ts" is observed at its receive time, which has microseconds; its history row,
    whether written as the latest value or as an older reading of the batch, keeps observedAt's
    millisecond, so a redelivery of the same message is recognised."""
    await setup_device(client)
    received = (clock.now() - timedelta(seconds=30)).replace(microsecond=123456)
    first = Envelope("aq-1", "telemetry", b'{"pm25": 7}', "mqtt", None, received)
    second = Envelope("aq-1", "telemetry", b'{"pm25": 8}', "mqtt", None, received + timedelta(seconds=1))
    report = await app.state.iot.ingest([first, second])
    assert report.stored == 2
    for envelope in (first, second):
        again = await app.state.iot.ingest([envelope])
        assert again.stored == 0 and again.duplicates == 1
    assert await history_count(app, OBS, "pm25") == 2
    assert (await entity(client))["pm25"]["value"] == 8


async def test_gateway_parts_dead_letter_their_own_payload(client: Any, app: Any) -> None:
    """Each device's part of a gateway message is checked on its own; a refused part keeps its own
    JSON as the dead letter's payload (validated before or under the batch's locks alike)."""
    gw = await client.post("/api/iot/devices", json={**AQ, "name": "gw-2", "profile": "smart-meter", "gateway": True})
    assert gw.status_code == 201
    await setup_device(client)
    iot = app.state.iot
    for attempt in range(2):  # the second time the devices' profiles are known before the locks
        ts = ms(clock.now()) - 1000 * (2 - attempt)
        report = await iot.ingest([Envelope("gw-2", "gateway/telemetry", orjson.dumps({
            "aq-1": [{"ts": ts, "values": {"pm25": 7, "pm10": -3}}],
            "ghost": [{"ts": ts, "values": {"pm25": 1}}],
        })), Envelope("gw-2", "gateway/telemetry", orjson.dumps({"aq-1": ["not an object"]}))])
        assert report.readings == 1
        reasons = sorted(r.reason for r in report.rejections)
        assert reasons == ["bad_payload", "out_of_range", "unknown_device"], reasons
        payloads = {r.reason: orjson.loads(r.payload) for r in report.rejections}
        assert payloads["out_of_range"] == {"ts": ts, "values": {"pm10": -3}}
        assert payloads["unknown_device"] == [{"ts": ts, "values": {"pm25": 1}}]
        assert payloads["bad_payload"] == ["not an object"]
    assert (await entity(client))["pm25"]["value"] == 7
    letters = (await client.get("/api/iot/dead-letters", params={"device": "aq-1"})).json()
    assert {item["reason"] for item in letters["items"]} == {"out_of_range", "bad_payload"}
