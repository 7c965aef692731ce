"""Incidents from alarms, environment events and Alert entities; the hub view of incidents."""

from __future__ import annotations

from typing import Any

import httpx
from ops_incidents_helpers import BASE, D1, IN_D1, act, create, point

from cityos.ops.incidents.listeners import reconcile
from cityos.ops.incidents.models import incidents

ADMIN_ROLE = "sys_admin"


def _alarm(alarm_id: int, severity: str = "major", level: str | None = "general",
           category: str = "fire") -> dict[str, Any]:
    return {"id": alarm_id, "ruleId": 7, "entityId": "urn:ngsi-ld:Device:smoke-1", "entityType": "Device",
            "severity": severity, "status": "active", "location": point(*IN_D1), "district": "Old Town",
            "department": "fire-rescue", "incident": {"category": category, "level": level} if category else None,
            "message": "smoke detected", "value": 1, "raisedAt": "2026-03-02T08:00:00.000Z"}


async def test_alarm_opens_one_incident_and_updates_it(app: Any, client: httpx.AsyncClient, auth: Any,
                                                       districts: list[str]) -> None:
    bus = app.state.bus
    operator = auth.headers("operator")
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _alarm(11)})
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _alarm(11)})  # replay: no second incident
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _alarm(12, category=None)})  # no incident spec
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": {"id": None}})  # malformed: ignored
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _alarm(13, category="Bad Category!")})
    listed = (await client.get(BASE, headers=operator)).json()
    assert listed["total"] == 1
    incident = listed["items"][0]
    assert (incident["source"], incident["category"], incident["department"], incident["district"]) == \
        ("alarm", "fire", "fire-rescue", D1)
    assert incident["entityId"] == "urn:ngsi-ld:Device:smoke-1" and incident["level"] == "general"
    await bus.publish("ops.alarm.updated", {"tenant": "", "alarm": _alarm(11, level="major")})
    updated = (await client.get(f"{BASE}/{incident['id']}", headers=operator)).json()
    assert updated["level"] == "major"
    await bus.publish("ops.alarm.cleared", {"tenant": "", "alarm": _alarm(11)})
    timeline = (await client.get(f"{BASE}/{incident['id']}/timeline", headers=operator)).json()
    assert [s["action"] for s in timeline] == ["report", "update", "alarm.cleared"]
    # once closed, the same alarm id opens a new incident
    for step in ("dispatch", "accept", "arrive", "resolve", "close"):
        await act(client, operator, incident["id"], step)
    await bus.publish("ops.alarm.raised", {"tenant": "", "alarm": _alarm(11)})
    assert (await client.get(BASE, headers=operator)).json()["total"] == 2
    # reopening the old one would make two open incidents for one alarm
    response = await client.post(f"{BASE}/{incident['id']}/reopen", headers=operator)
    assert response.status_code == 409


async def test_environment_request_is_deduplicated(app: Any, client: httpx.AsyncClient, auth: Any,
                                                   districts: list[str]) -> None:
    event = {"tenant": "", "source": "environment", "category": "environment.air", "level": "large",
             "title": "AQI 中度污染", "description": "AQI 180 at station 4", "location": point(*IN_D1),
             "entityId": "urn:ngsi-ld:AirQualityObserved:s4", "dedupKey": "air:s4:2026-03-02T08"}
    for _ in range(3):
        await app.state.bus.publish("ops.incident.requested", event)
    await app.state.bus.publish("ops.incident.requested", {**event, "dedupKey": "air:s5"})
    await app.state.bus.publish("ops.incident.requested", {**event, "category": None})  # refused quietly
    # The second station's episode at the same place merges into the first: one incident to work on.
    assert len((await client.get(BASE, headers=auth.headers("operator"))).json()["items"]) == 1
    items = (await client.get(BASE, headers=auth.headers("operator"), params={"includeMerged": "true"})).json()["items"]
    assert len(items) == 2
    assert {i["department"] for i in items} == {"environment"} and {i["level"] for i in items} == {"large"}
    parent = next(i for i in items if i["status"] != "merged")
    child = next(i for i in items if i["status"] == "merged")
    assert str(child["parentId"]) == str(parent["id"]) and parent["reportCount"] == 2
    assert parent["sla"]["responseDue"] is not None


async def test_alert_entities_open_incidents_and_reconcile(app: Any, client: httpx.AsyncClient, auth: Any,
                                                           districts: list[str]) -> None:
    admin = auth.headers(ADMIN_ROLE)
    operator = auth.headers("operator")

    def alert(alarm_id: int, status: str = "active") -> dict[str, Any]:
        return {"id": f"urn:ngsi-ld:Alert:alarm-{alarm_id}", "type": "Alert",
                "category": {"type": "Property", "value": "environment"},
                "severity": {"type": "Property", "value": "high"},
                "alarmSeverity": {"type": "Property", "value": "major"},
                "alertSource": {"type": "Relationship", "object": "urn:ngsi-ld:Device:water-1"},
                "alarmStatus": {"type": "Property", "value": status},
                "description": {"type": "Property", "value": "river level high"},
                "incidentCategory": {"type": "Property", "value": "flood"},
                "incidentLevel": {"type": "Property", "value": "large"},
                "location": {"type": "GeoProperty", "value": point(*IN_D1)}}

    response = await client.post("/ngsi-ld/v1/entities", headers=admin, json=alert(21))
    assert response.status_code == 201
    items = (await client.get(BASE, headers=operator)).json()["items"]
    assert [(i["category"], i["department"], i["level"], i["entityId"]) for i in items] == \
        [("flood", "water-authority", "large", "urn:ngsi-ld:Device:water-1")]
    # the crash case: Alert entities written while nobody listened are picked up at start-up
    response = await client.post("/ngsi-ld/v1/entityOperations/upsert", headers=admin,
                                 json=[alert(22), alert(23, "cleared")])
    assert response.status_code in (200, 201, 204)
    async with app.state.engine.begin() as conn:
        await conn.execute(incidents.delete().where(incidents.c.dedup_key == "alarm:22"))  # "lost" in a crash
    assert await reconcile(app.state.ops_incidents) == 1
    assert await reconcile(app.state.ops_incidents) == 0
    listed = (await client.get(BASE, headers=operator, params={"includeMerged": "true"})).json()["items"]
    # Titles come from the category and the place (the catalogue), never from a rule or its message.
    assert sorted(i["title"] for i in listed) == ["洪水 Flood · d1", "洪水 Flood · d1"]
    # both alarms are at the same place: the re-created one merges into the first
    assert sorted(i["status"] for i in listed) == ["merged", "reported"]


async def test_hub_view_of_incidents(app: Any, client: httpx.AsyncClient, auth: Any, districts: list[str],
                                     service: Any) -> None:
    admin = auth.headers(ADMIN_ROLE)
    operator = auth.headers("operator")
    incident = (await create(client, operator, description="deep hole"))["incident"]
    await service.sync_hub()
    url = f"/ngsi-ld/v1/entities/urn:ngsi-ld:Incident:{incident['id']}"
    entity = (await client.get(url, headers=admin, params={"options": "keyValues"})).json()
    assert entity["type"] == "Incident" and entity["status"] == "reported" and entity["category"] == "pothole"
    assert entity["department"] == "transport" and entity["district"] == D1 and entity["slaState"] == "ok"
    assert entity["location"]["type"] == "Point" and "responseDue" in entity and "dateReported" in entity
    for step in ("dispatch", "accept", "arrive", "resolve", "close"):
        await act(client, operator, incident["id"], step)
    assert await service.sync_hub() == 1
    assert await service.sync_hub() == 0
    closed = (await client.get(url, headers=admin, params={"options": "keyValues"})).json()
    assert closed["status"] == "closed" and "dateClosed" in closed
    near = await client.get("/ngsi-ld/v1/entities", headers=admin, params={
        "type": "Incident", "q": 'status=="closed"', "georel": "near;maxDistance==100",
        "geometry": "Point", "coordinates": f"[{IN_D1[0]},{IN_D1[1]}]"})
    assert [e["id"] for e in near.json()] == [f"urn:ngsi-ld:Incident:{incident['id']}"]
