"""Alarm correlation: root cause first (gateway outages), device work orders, one incident per area, storms."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from ops_incidents_helpers import BASE, D1, IN_D1, IN_D2, point

from cityos.ops.incidents.correlation import CorrelationSettings

ADMIN_ROLE = "sys_admin"


async def _device(client: httpx.AsyncClient, admin: dict[str, str], name: str, *, gateway: str | None = None,
                  is_gateway: bool = False, where: tuple[float, float] = IN_D1) -> None:
    entity: dict[str, Any] = {"id": f"urn:ngsi-ld:Device:{name}", "type": "Device",
                              "isGateway": {"type": "Property", "value": is_gateway},
                              "location": {"type": "GeoProperty", "value": point(*where)}}
    if gateway:
        entity["refGateway"] = {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{gateway}"}
    response = await client.post("/ngsi-ld/v1/entities", headers=admin, json=entity)
    assert response.status_code == 201, response.text


def _device_alarm(alarm_id: int, device: str, fault: str = "offline", category: str = "device.fault",
                  where: tuple[float, float] = IN_D1) -> dict[str, Any]:
    return {"id": alarm_id, "ruleId": f"device-{fault}", "entityId": f"urn:ngsi-ld:Device:{device}",
            "entityType": "Device", "category": "device", "subCategory": fault, "severity": "major",
            "status": "active", "location": point(*where), "district": "Old Town", "department": None,
            "incident": {"category": category, "level": "general"}, "value": None}


def _city_alarm(alarm_id: int, category: str, where: tuple[float, float], rule: str = "rule-x") -> dict[str, Any]:
    return {"id": alarm_id, "ruleId": rule, "entityId": f"urn:ngsi-ld:Device:station-{alarm_id}",
            "entityType": "AirQualityObserved", "category": "environment", "severity": "major", "status": "active",
            "location": point(*where), "district": None, "department": "environment",
            "incident": {"category": category, "level": "general"}, "value": 180}


async def _list(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await client.get(BASE, headers=headers, params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_gateway_outage_is_one_incident_with_its_devices(app: Any, client: httpx.AsyncClient, auth: Any,
                                                               districts: list[str]) -> None:
    bus = app.state.bus
    admin, operator = auth.headers(ADMIN_ROLE), auth.headers("operator")
    await _device(client, admin, "gw-1", is_gateway=True)
    for n in range(1, 7):
        await _device(client, admin, f"dev-{n}", gateway="gw-1")
    # Two silent devices are two maintenance work orders for IT operations, not city incidents.
    for n in (1, 2):
        await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(100 + n, f"dev-{n}")})
    assert await _list(client, operator, kind="incident") == []
    orders = await _list(client, operator, kind="maintenance")
    assert sorted(o["title"] for o in orders) == ["设备故障 Device fault · dev-1 · d1",
                                                  "设备故障 Device fault · dev-2 · d1"]
    assert {o["kind"] for o in orders} == {"maintenance"} and {o["department"] for o in orders} == {"it-operations"}
    # The third device of the same gateway: the segment went silent, one incident for it (root cause first).
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(103, "dev-3")})
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(104, "dev-4")})
    city = await _list(client, operator, kind="incident")
    assert len(city) == 1
    outage = city[0]
    assert outage["kind"] == "segment" and outage["category"] == "network.outage"
    assert outage["title"] == "网络中断 Network outage · 网关 Gateway gw-1 · d1"
    assert outage["attributes"]["affectedDevices"] == ["dev-1", "dev-2", "dev-3", "dev-4"]
    assert outage["attributes"]["affectedCount"] == 4 and outage["reportCount"] == 5
    assert await _list(client, operator, kind="maintenance", open="true") == []  # all merged into the outage
    # The gateway's own offline alarm is the same episode: no second incident.
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(110, "gw-1")})
    assert [i["id"] for i in await _list(client, operator)] == [outage["id"]]
    # A flat battery is the device's own fault: a work order of its own, outage or not.
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(
        120, "dev-5", fault="lowBattery", category="device.battery")})
    orders = await _list(client, operator, kind="maintenance")
    assert [o["title"] for o in orders] == ["电池低电量 Low battery · dev-5 · d1"]
    # The timeline shows what merged, once, as one entry (not one "merged" line per device).
    detail = (await client.get(f"{BASE}/{outage['id']}", headers=operator)).json()
    merges = [s for s in detail["timeline"] if s["action"] == "merge"]
    assert len(merges) == 1 and merges[0]["detail"]["count"] == 4
    assert [c["title"] for c in merges[0]["detail"]["children"]] == [
        f"设备故障 Device fault · dev-{n} · d1" for n in range(1, 5)]
    assert len(detail["merged"]) == 4  # each member stays traceable (and can be split out)


async def test_gateway_silence_first_then_its_devices_join(app: Any, client: httpx.AsyncClient, auth: Any,
                                                           districts: list[str]) -> None:
    bus = app.state.bus
    admin, operator = auth.headers(ADMIN_ROLE), auth.headers("operator")
    await _device(client, admin, "gw-2", is_gateway=True)
    await _device(client, admin, "dev-21", gateway="gw-2")
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(201, "gw-2")})
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(202, "dev-21")})
    city = await _list(client, operator, kind="incident")
    assert [(i["kind"], i["level"], i["department"]) for i in city] == [("segment", "large", "it-operations")]
    assert city[0]["attributes"]["affectedDevices"] == ["dev-21"]
    assert await _list(client, operator, kind="maintenance", open="true") == []


async def test_one_incident_per_area_whatever_the_path(app: Any, client: httpx.AsyncClient, auth: Any,
                                                       districts: list[str]) -> None:
    bus = app.state.bus
    operator = auth.headers("operator")
    # Two rules and an environment report about the same smog, in the same district, 1.8 km apart.
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _city_alarm(301, "environment.air", (110.301, 20.001),
                                                                              "air-pm25-severe")})
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _city_alarm(302, "environment.air", (110.318, 20.019),
                                                                              "air-pm25-sustained")})
    await bus.publish("ops.incident.requested", {
        "tenant": "", "source": "environment", "category": "environment.air", "level": "general",
        "title": "AQI 180", "description": "station 9", "location": point(*IN_D1), "dedupKey": "air:s9"})
    # The same phenomenon in the next district is another incident.
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _city_alarm(303, "environment.air", IN_D2)})
    city = await _list(client, operator)
    assert sorted((i["title"], i["reportCount"]) for i in city) == [
        ("空气污染 Air pollution · d1", 3), ("空气污染 Air pollution · d2", 1)]
    assert all("rule" not in i["title"] and "Alarm" not in i["title"] for i in city)


async def test_a_flood_is_one_incident_per_river_reach(app: Any, client: httpx.AsyncClient, auth: Any,
                                                       districts: list[str]) -> None:
    bus = app.state.bus
    admin, operator = auth.headers(ADMIN_ROLE), auth.headers("operator")
    for ident, line in (("urn:ngsi-ld:River:north", [[110.30, 20.015], [110.34, 20.015]]),
                        ("urn:ngsi-ld:River:south", [[110.30, 20.003], [110.34, 20.003]])):
        response = await client.post("/ngsi-ld/v1/entities", headers=admin, json={
            "id": ident, "type": "River", "name": {"type": "Property", "value": "Nandu River"
                                                   if ident.endswith("north") else "Meishe River"},
            "location": {"type": "GeoProperty", "value": {"type": "LineString", "coordinates": line}}})
        assert response.status_code == 201, response.text
    app.state.ops_incidents.forget_districts()
    gauges = [(401, (110.302, 20.0152)), (402, (110.318, 20.0149)),  # north river, d1: one reach
              (403, (110.305, 20.0031)),  # south river, d1: another river
              (404, (110.335, 20.0151))]  # north river, d2: the next reach
    for alarm_id, where in gauges:
        await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _city_alarm(alarm_id, "flood", where)})
    city = await _list(client, operator)
    assert sorted((i["title"], i["reportCount"]) for i in city) == [
        ("洪水 Flood · 南渡江 Nandu River · d1", 2), ("洪水 Flood · 南渡江 Nandu River · d2", 1),
        ("洪水 Flood · 美舍河 Meishe River · d1", 1)]
    assert {i["department"] for i in city} == {"water-authority"}


async def test_storm_groups_new_incidents_and_loses_none(app: Any, client: httpx.AsyncClient, auth: Any,
                                                         districts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    service = app.state.ops_incidents
    monkeypatch.setattr(service, "correlation", CorrelationSettings(enabled=True, storm_per_minute=3,
                                                                    segment_min_devices=3, segment_minutes=30))
    bus = app.state.bus
    operator = auth.headers("operator")
    # Six fires far apart (fires merge only within 200 m): the first three open, the rest form a storm.
    for n in range(6):
        where = (110.301 + 0.006 * n, 20.002 + 0.003 * n)
        await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _city_alarm(500 + n, "fire", where)})
    city = await _list(client, operator, open="true")
    kinds = sorted(i["kind"] for i in city)
    assert kinds == ["incident", "incident", "incident", "storm"]
    storm = next(i for i in city if i["kind"] == "storm")
    assert storm["title"] == "告警风暴 Alarm storm · 火灾 Fire" and storm["reportCount"] == 3
    detail = (await client.get(f"{BASE}/{storm['id']}", headers=operator)).json()
    assert len(detail["merged"]) == 3  # nothing lost: every member is there, each its own row
    members = [(await client.get(f"{BASE}/{m}", headers=operator)).json() for m in detail["merged"]]
    assert {m["status"] for m in members} == {"merged"} and {m["category"] for m in members} == {"fire"}
    # A member can be taken out of the storm again.
    response = await client.post(f"{BASE}/{detail['merged'][0]}/split", headers=operator)
    assert response.status_code == 200 and response.json()["status"] == "reported"


async def test_correlation_off_is_the_old_behaviour(app: Any, client: httpx.AsyncClient, auth: Any,
                                                    districts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.state.ops_incidents, "correlation", CorrelationSettings(enabled=False))
    bus = app.state.bus
    admin, operator = auth.headers(ADMIN_ROLE), auth.headers("operator")
    await _device(client, admin, "gw-9", is_gateway=True)
    for n in range(3):
        await _device(client, admin, f"dev-9{n}", gateway="gw-9", where=(110.301 + 0.005 * n, 20.005))
        await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _device_alarm(
            600 + n, f"dev-9{n}", where=(110.301 + 0.005 * n, 20.005))})
    listed = await _list(client, operator)
    assert len(listed) == 3 and {i["district"] for i in listed} == {D1}
    assert all(i["title"].startswith("Alarm: ") for i in listed)


async def test_bad_kind_is_refused(client: httpx.AsyncClient, auth: Any) -> None:
    response = await client.get(BASE, headers=auth.headers("operator"), params={"kind": "gateway"})
    assert response.status_code in (400, 422)
    body = response.json()
    assert body["title"] and "kind" in str(body)
