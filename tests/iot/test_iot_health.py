"""Device health with an injected clock: offline/online, KPI per district, battery alarms, data quality, RPC timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from iot_helpers import ms, recorder

from cityos.iot import health
from cityos.iot.messages import Envelope

AQ = {"name": "aq-1", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "Meilan", "department": "EPB"}


async def telemetry(client: Any, app: Any, token: str, payload: dict[str, Any]) -> Any:
    """POST a reading, then wait for the IoT events it raised: they are published off the ingest path."""
    response = await client.post(f"/api/v1/{token}/telemetry", json=payload)
    await app.state.iot.events.drain()
    return response


async def test_offline_after_missed_intervals_and_back_online(client: Any, app: Any, fixed_clock: Any) -> None:
    rows = [{**AQ, "name": f"d-{i}", "district": "Meilan" if i < 2 else "Longhua"} for i in range(3)]
    created = (await client.post("/api/iot/devices/bulk", json=rows)).json()["created"]
    tokens = {c["name"]: c["token"] for c in created}
    for token in tokens.values():
        assert (await telemetry(client, app, token, {"pm25": 5})).status_code == 200
    offline_events = recorder(app, "iot.device.offline")
    online_events = recorder(app, "iot.device.online")
    fixed_clock[0] += timedelta(seconds=60 * 2)  # 2 missed intervals of 60 s: still fine
    assert (await health.run_once(app.state.iot))["offline"] == []
    await telemetry(client, app, tokens["d-2"], {"pm25": 6})
    fixed_clock[0] += timedelta(seconds=60 * 2 + 1)  # d-0 and d-1 now silent for > 3 intervals
    went = (await health.run_once(app.state.iot))["offline"]
    assert sorted(went) == ["urn:ngsi-ld:Device:d-0", "urn:ngsi-ld:Device:d-1"]
    assert len(offline_events) == 2
    kpi = (await client.get("/api/iot/health")).json()
    assert kpi["offlineByDistrict"] == {"Meilan": 2} and kpi["byStatus"] == {"offline": 2, "active": 1}
    assert await app.state.iot.offline_by_district() == {"Meilan": 2}
    entity = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:d-0?options=keyValues")).json()
    assert entity["deviceState"] == "offline"
    assert (await health.run_once(app.state.iot))["offline"] == []  # once only
    await telemetry(client, app, tokens["d-0"], {"pm25": 7})
    assert (await client.get("/api/iot/devices/d-0")).json()["status"] == "active"
    assert [e["name"] for e in online_events] == ["d-0"]
    entity = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:d-0?options=keyValues")).json()
    assert entity["deviceState"] == "active"


async def test_low_battery_alarm_once(client: Any, app: Any, fixed_clock: Any) -> None:
    token = (await client.post("/api/iot/devices", json=AQ)).json()["token"]
    alarms = recorder(app, "iot.device.alarm")
    await telemetry(client, app, token, {"battery": 50})
    assert alarms == []
    fixed_clock[0] += timedelta(seconds=60)
    await telemetry(client, app, token, {"battery": 20})
    fixed_clock[0] += timedelta(seconds=60)
    await telemetry(client, app, token, {"battery": 19})
    assert len(alarms) == 1 and alarms[0]["kind"] == "lowBattery" and alarms[0]["battery"] == 20
    assert alarms[0]["district"] == "Meilan"
    device = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:aq-1?options=keyValues")).json()
    assert device["batteryLevel"] == 19
    assert (await client.get("/api/iot/health")).json()["lowBattery"] == 1


async def test_spike_and_frozen_flags(client: Any, app: Any, fixed_clock: Any) -> None:
    token = (await client.post("/api/iot/devices", json=AQ)).json()["token"]
    quality = recorder(app, "iot.data.quality")
    await telemetry(client, app, token, {"pm25": 20})
    fixed_clock[0] += timedelta(seconds=60)
    await telemetry(client, app, token, {"pm25": 900})  # jump > half the range
    assert [(q["kind"], q["key"]) for q in quality] == [("spike", "pm25")]
    for _ in range(10):
        fixed_clock[0] += timedelta(seconds=60)
        await telemetry(client, app, token, {"pm25": 900, "temperature": 20 + _})
    assert [(q["kind"], q["key"]) for q in quality] == [("spike", "pm25"), ("frozen", "pm25")]


async def test_a_repeated_floor_value_is_not_frozen(client: Any, app: Any, fixed_clock: Any) -> None:
    """Zero PM2.5 (or no smoke, an empty road at night) repeated is a quiet world, not a stuck sensor."""
    token = (await client.post("/api/iot/devices", json=AQ)).json()["token"]
    quality = recorder(app, "iot.data.quality")
    for minute in range(12):
        fixed_clock[0] += timedelta(seconds=60)
        await telemetry(client, app, token, {"pm25": 0, "temperature": 20 + minute})
    assert quality == []


async def test_rpc_without_broker_fails_and_timeout(client: Any, app: Any, fixed_clock: Any) -> None:
    await client.post("/api/iot/devices", json=AQ)
    sent = await client.post("/api/iot/devices/aq-1/rpc", json={"method": "reboot", "params": {"delay": 1}})
    assert sent.status_code == 201 and sent.json()["status"] in ("failed", "sent")
    iot = app.state.iot
    from cityos.iot.models import RpcIn

    request = await iot.create_rpc("aq-1", RpcIn(method="setLed", params={"on": True}, timeout=5000))
    await iot.set_rpc_status(request["id"], "sent")
    fixed_clock[0] += timedelta(seconds=6)
    assert (await health.run_once(iot))["rpcTimedOut"] >= 1
    assert (await client.get(f"/api/iot/rpc/{request['id']}")).json()["status"] == "timed_out"
    other = await iot.create_rpc("aq-1", RpcIn(method="getTime", timeout=60_000))
    await iot.set_rpc_status(other["id"], "sent")
    await iot.ingest([Envelope("aq-1", "rpc/response", orjson.dumps({"time": ms(fixed_clock[0])}),
                               rpc_id=other["id"])])
    answer = (await client.get(f"/api/iot/rpc/{other['id']}")).json()
    assert answer["status"] == "succeeded" and "time" in answer["response"]
    failing = await iot.create_rpc("aq-1", RpcIn(method="explode"))
    await iot.ingest([Envelope("aq-1", "rpc/response", b'{"error": "no such method"}', rpc_id=failing["id"])])
    assert (await client.get(f"/api/iot/rpc/{failing['id']}")).json()["status"] == "failed"
    bad = await client.post("/api/iot/devices/aq-1/rpc", json={"method": ""})
    assert bad.status_code == 400


async def test_a_batch_of_answers_is_recorded_together_and_only_by_their_own_device(client: Any, app: Any) -> None:
    """A control round's answers arrive together: each request takes its own device's first answer; a repeated
    answer, another device's answer and an answer to an unknown request change nothing."""
    from cityos.iot.models import RpcIn

    await client.post("/api/iot/devices", json=AQ)
    await client.post("/api/iot/devices", json={**AQ, "name": "aq-2"})
    iot = app.state.iot
    first, second, third = [await iot.create_rpc("aq-1", RpcIn(method="setLed", params={"n": n})) for n in range(3)]
    signal = iot.answer_signal.upcoming()
    report = await iot.ingest([
        Envelope("aq-1", "rpc/response", b'{"ok": 1}', rpc_id=second["id"]),
        Envelope("aq-1", "rpc/response", b'{"error": "led broken"}', rpc_id=first["id"]),
        Envelope("aq-1", "rpc/response", b'{"ok": "again"}', rpc_id=second["id"]),
        Envelope("aq-2", "rpc/response", b'{"ok": "not mine"}', rpc_id=third["id"]),
        Envelope("aq-1", "rpc/response", b'{"ok": 0}', rpc_id=987654321),
    ])
    assert report.dead_letters == 0 and signal.is_set()  # the control loop's watcher is woken at once
    answers = {r["id"]: (await client.get(f"/api/iot/rpc/{r['id']}")).json() for r in (first, second, third)}
    assert (answers[first["id"]]["status"], answers[first["id"]]["error"]) == ("failed", "led broken")
    assert (answers[second["id"]]["status"], answers[second["id"]]["response"]) == ("succeeded", {"ok": 1})
    assert answers[third["id"]]["status"] == "queued" and answers[third["id"]]["response"] is None
    assert not iot.answer_signal.upcoming().is_set()


async def test_a_slow_event_handler_does_not_hold_up_ingestion(client: Any, app: Any, fixed_clock: Any) -> None:
    """An alarm storm through slow handlers must not stall ingestion (its broker waits for acks)."""
    import asyncio

    token = (await client.post("/api/iot/devices", json=AQ)).json()["token"]
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(event: Any) -> None:
        await release.wait()
        handled.append(event.payload["kind"])

    undo = app.state.bus.subscribe("iot.data.quality", slow)
    try:
        await telemetry(client, app, token, {"pm25": 20})
        fixed_clock[0] += timedelta(seconds=60)
        r = await client.post(f"/api/v1/{token}/telemetry", json={"pm25": 900})  # a spike: one quality event
        assert r.status_code == 200 and handled == []  # committed and answered while the handler still waits
        stored = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:aq-1?options=keyValues"))
        assert stored.json()["pm25"] == 900
        release.set()
        await app.state.iot.events.drain()
        assert handled == ["spike"]
    finally:
        release.set()
        undo()


async def test_date_last_value_reported_is_refreshed_every_few_minutes(client: Any, app: Any,
                                                                        fixed_clock: Any) -> None:
    """Rewriting the Device entity on every report doubled ingestion's entity writes; it lags ≤ 5 min."""
    token = (await client.post("/api/iot/devices", json=AQ)).json()["token"]

    async def reported() -> str:
        body = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:aq-1?options=keyValues")).json()
        return str(body["dateLastValueReported"])

    await telemetry(client, app, token, {"pm25": 10})
    first = await reported()
    fixed_clock[0] += timedelta(seconds=60)  # one reporting interval later
    await telemetry(client, app, token, {"pm25": 11})
    assert await reported() == first
    assert (await client.get("/api/iot/devices/aq-1")).json()["status"] == "active"
    fixed_clock[0] += timedelta(seconds=241)  # 301 s after the first report
    await telemetry(client, app, token, {"pm25": 12})
    assert await reported() > first
