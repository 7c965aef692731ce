"""Device alarms from the real IoT domain: offline/online, low battery and its recovery, data quality."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cityos.iot import health

AQ = {"name": "aq-1", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "d1",
      "department": "environment"}
DEVICE = "urn:ngsi-ld:Device:aq-1"


async def _device(api: Any) -> str:
    r = await api.client.post("/api/iot/devices", json=AQ, headers=api.admin)
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


async def _send(api: Any, token: str, payload: dict[str, Any]) -> None:
    r = await api.client.post(f"/api/v1/{token}/telemetry", json=payload)
    assert r.status_code == 200, r.text
    await api.app.state.iot.events.drain()  # IoT events are published off the ingest path


async def test_offline_then_online(api: Any, app: Any, now: list[datetime]) -> None:
    token = await _device(api)
    await _send(api, token, {"pm25": 5})
    now[0] += timedelta(seconds=60 * 3 + 1)
    assert (await health.run_once(app.state.iot))["offline"] == [DEVICE]
    [alarm] = await api.alarms()
    assert alarm["ruleId"] == "device-offline" and alarm["entityId"] == DEVICE and alarm["category"] == "device"
    assert alarm["entityType"] == "Device" and alarm["district"] == "d1" and alarm["department"] == "environment"
    assert alarm["location"] == {"type": "Point", "coordinates": [110.3, 20.0]}
    assert alarm["incident"] == {"category": "device.fault", "level": "general"}
    # The built-in rule was installed on first use: visible, versioned, and can be switched off.
    r = await api.client.get("/api/ops/rules/device-offline", headers=api.operator)
    assert r.status_code == 200 and r.json()["createdBy"] == "system"
    alert = (await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=api.admin)).json()
    assert alert["category"]["value"] == "device" and alert["alertSource"]["object"] == DEVICE
    now[0] += timedelta(seconds=5)
    await _send(api, token, {"pm25": 6})
    [alarm] = await api.alarms()
    assert alarm["status"] == "cleared" and alarm["clearReason"] == "device back online"


async def test_disabled_device_rule_raises_nothing(api: Any, app: Any, now: list[datetime]) -> None:
    token = await _device(api)
    await _send(api, token, {"pm25": 5})
    r = await api.client.post("/api/ops/rules/install-defaults", headers=api.operator)
    assert "device-offline" in r.json()["created"]
    r = await api.client.post("/api/ops/rules/device-offline/disable", headers=api.operator)
    assert r.status_code == 200
    now[0] += timedelta(seconds=60 * 3 + 1)
    assert (await health.run_once(app.state.iot))["offline"] == [DEVICE]
    assert await api.alarms() == []


async def test_low_battery_and_recovery(api: Any, now: list[datetime]) -> None:
    token = await _device(api)
    await _send(api, token, {"battery": 50})
    now[0] += timedelta(seconds=60)
    await _send(api, token, {"battery": 15})
    [alarm] = await api.alarms()
    assert alarm["ruleId"] == "device-low-battery" and alarm["value"] == 15 and alarm["severity"] == "minor"
    now[0] += timedelta(seconds=60)
    await _send(api, token, {"battery": 18})  # still low: no new alarm (IoT reports the crossing once)
    assert len(await api.alarms()) == 1
    now[0] += timedelta(seconds=60)
    await _send(api, token, {"battery": 95})
    [alarm] = await api.alarms()
    assert alarm["status"] == "cleared" and alarm["clearReason"] == "battery recovered"


async def test_data_quality_spike_is_a_warning(api: Any, now: list[datetime]) -> None:
    token = await _device(api)
    await _send(api, token, {"pm25": 10})
    now[0] += timedelta(seconds=60)
    await _send(api, token, {"pm25": 900})
    [alarm] = await api.alarms()
    assert alarm["ruleId"] == "device-data-spike" and alarm["severity"] == "warning"
    assert alarm["value"] == {"attr": "pm25", "value": 900}
    alert = (await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=api.admin)).json()
    assert alert["severity"]["value"] == "low" and alert["subCategory"]["value"] == "dataSpike"


async def test_default_rules_on_simulated_readings(api: Any, now: list[datetime]) -> None:
    """The shipped PM2.5 rule on what the IoT profile writes (AirQualityObserved.pm25)."""
    r = await api.client.post("/api/ops/rules/install-defaults", headers=api.operator)
    assert r.status_code == 200
    token = await _device(api)
    for minute in range(12):  # values vary, or the frozen-data check would (rightly) fire too
        await _send(api, token, {"pm25": 180 + minute})
        now[0] += timedelta(minutes=1)
    active = sorted(await api.alarms(status="active"), key=lambda a: a["ruleId"])
    # 180 µg/m³ is over the severe threshold at once and over 115 for the 10-minute window
    assert [a["ruleId"] for a in active] == ["air-pm25-severe", "air-pm25-sustained"]
    active = active[1:]
    assert active[0]["entityId"] == "urn:ngsi-ld:AirQualityObserved:aq-1"
    assert active[0]["incident"] == {"category": "environment.air", "level": "general"}
    assert active[0]["district"] == "d1" and active[0]["department"] == "environment"
