"""Threshold, geo-fence and combined rules over hub changes: alarms, their lifecycle, Alert entities, bus events."""

from __future__ import annotations

from typing import Any

from ops_rules_helpers import air

PM25 = {"name": "PM2.5 high", "entityTypes": ["AirQualityObserved"], "severity": "major",
        "condition": {"threshold": {"attr": "pm25", "op": ">", "value": 115}},
        "incident": {"category": "environment.air", "level": "general"}, "department": "environment"}


async def test_threshold_raises_repeats_and_clears(api: Any, events: list[Any]) -> None:
    rule = await api.rule({**PM25, "id": "pm25-high"})
    await api.upsert(air(pm25=50, district="d1"))
    assert await api.alarms() == []
    await api.upsert(air(pm25=150, district="d1"))
    [alarm] = await api.alarms()
    assert alarm["status"] == "active" and alarm["ruleId"] == rule["id"] and alarm["value"] == 150
    assert alarm["entityId"] == "urn:ngsi-ld:AirQualityObserved:aq-1" and alarm["entityType"] == "AirQualityObserved"
    assert alarm["district"] == "d1" and alarm["department"] == "environment" and alarm["count"] == 1
    assert alarm["incident"] == {"category": "environment.air", "level": "general"}
    await api.upsert(air(pm25=170, district="d1"))
    [again] = await api.alarms()
    assert again["id"] == alarm["id"] and again["count"] == 2 and again["value"] == 170
    await api.upsert(air(pm25=20, district="d1"))
    [cleared] = await api.alarms()
    assert cleared["status"] == "cleared" and cleared["clearedBy"] == "system" and cleared["clearedAt"]
    assert [e.topic for e in events] == ["ops.alarm.raised", "ops.alarm.updated", "ops.alarm.cleared"]
    assert events[0].payload["tenant"] == "" and events[0].payload["alarm"]["id"] == alarm["id"]
    # A new occurrence is a new alarm.
    await api.upsert(air(pm25=200, district="d1"))
    items = await api.alarms(status="active")
    assert len(items) == 1 and items[0]["id"] != alarm["id"]


async def test_alert_entity_in_hub(api: Any) -> None:
    await api.rule({**PM25, "id": "pm25-high", "subCategory": "airPollution"})
    location = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.3, 20.0]}}
    await api.upsert(air(pm25=150, district="d1", location=location))
    [alarm] = await api.alarms()
    r = await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=api.admin)
    assert r.status_code == 200, r.text
    alert = r.json()
    assert alert["id"] == f"urn:ngsi-ld:Alert:alarm-{alarm['id']}" and alert["type"] == "Alert"
    assert alert["alertSource"]["object"] == "urn:ngsi-ld:AirQualityObserved:aq-1"
    assert alert["severity"]["value"] == "high" and alert["alarmSeverity"]["value"] == "major"
    assert alert["alarmStatus"]["value"] == "active" and alert["ruleId"]["value"] == "pm25-high"
    assert alert["category"]["value"] == "environment" and alert["subCategory"]["value"] == "airPollution"
    assert alert["incidentCategory"]["value"] == "environment.air" and alert["incidentLevel"]["value"] == "general"
    assert alert["location"]["value"] == {"type": "Point", "coordinates": [110.3, 20.0]}
    assert alert["district"]["value"] == "d1" and alert["department"]["value"] == "environment"
    assert alert["dateIssued"]["value"] == alarm["raisedAt"] and "validTo" not in alert
    await api.upsert(air(pm25=10, district="d1", location=location))
    alert = (await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=api.admin)).json()
    assert alert["alarmStatus"]["value"] == "cleared" and alert["validTo"]["value"]


async def test_acknowledge_and_clear_lifecycle(api: Any, events: list[Any]) -> None:
    await api.rule({**PM25, "id": "pm25-high"})
    await api.upsert(air(pm25=150))
    [alarm] = await api.alarms()
    path = f"/api/ops/alarms/{alarm['id']}"
    r = await api.client.post(f"{path}/acknowledge", headers=api.operator)
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    assert r.json()["acknowledgedBy"].startswith("user:operator") and r.json()["acknowledgedAt"]
    r = await api.client.post(f"{path}/acknowledge", headers=api.operator)
    assert r.status_code == 409 and "only an active alarm" in r.json()["detail"]
    # A repeat keeps it acknowledged.
    await api.upsert(air(pm25=160))
    assert (await api.client.get(path, headers=api.operator)).json() | {"count": 0} == \
        (await api.client.get(path, headers=api.operator)).json() | {"count": 0}
    assert (await api.client.get(path, headers=api.operator)).json()["status"] == "acknowledged"
    r = await api.client.post(f"{path}/clear", json={"reason": "sensor recalibrated"}, headers=api.operator)
    assert r.status_code == 200 and r.json()["status"] == "cleared" and r.json()["clearReason"] == "sensor recalibrated"
    r = await api.client.post(f"{path}/clear", headers=api.operator)
    assert r.status_code == 409
    r = await api.client.post(f"{path}/acknowledge", headers=api.operator)
    assert r.status_code == 409
    alert = (await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=api.admin)).json()
    assert alert["alarmStatus"]["value"] == "cleared"
    assert [e.topic for e in events] == ["ops.alarm.raised", "ops.alarm.updated", "ops.alarm.updated",
                                         "ops.alarm.cleared"]
    # The next true reading after a manual clear opens a new alarm.
    await api.upsert(air(pm25=170))
    assert len(await api.alarms(status="active")) == 1


async def test_alarm_bad_requests(api: Any) -> None:
    r = await api.client.get("/api/ops/alarms/999999", headers=api.operator)
    assert r.status_code == 404
    for verb in ("acknowledge", "clear"):
        r = await api.client.post(f"/api/ops/alarms/999999/{verb}", headers=api.operator)
        assert r.status_code == 404
    r = await api.client.get("/api/ops/alarms/abc", headers=api.operator)
    assert r.status_code == 400
    r = await api.client.get("/api/ops/alarms", params={"status": "bogus"}, headers=api.operator)
    assert r.status_code == 400 and "status" in r.json()["detail"]
    r = await api.client.get("/api/ops/alarms", params={"severity": "huge"}, headers=api.operator)
    assert r.status_code == 400
    await api.rule({**PM25, "id": "pm25-high"})
    await api.upsert(air(pm25=150))
    [alarm] = await api.alarms()
    r = await api.client.post(f"/api/ops/alarms/{alarm['id']}/clear", content=b"{not json",
                              headers=api.operator)
    assert r.status_code == 400
    r = await api.client.post(f"/api/ops/alarms/{alarm['id']}/clear", json={"reason": 5}, headers=api.operator)
    assert r.status_code == 400
    r = await api.client.post(f"/api/ops/alarms/{alarm['id']}/clear", json={"why": "x"}, headers=api.operator)
    assert r.status_code == 400


async def test_alarm_auth(api: Any) -> None:
    await api.rule({**PM25, "id": "pm25-high"})
    await api.upsert(air(pm25=150, district="d2"))
    [alarm] = await api.alarms()
    r = await api.anon.get("/api/ops/alarms")
    assert r.status_code == 401
    r = await api.client.get("/api/ops/alarms", headers=api.auth.headers("citizen"))
    assert r.status_code == 403
    r = await api.client.post(f"/api/ops/alarms/{alarm['id']}/acknowledge", headers=api.auth.headers("auditor"))
    assert r.status_code == 403
    # An official may act only on alarms of its department.
    other = api.auth.headers("official", department="transport", districts=["d9"])
    r = await api.client.post(f"/api/ops/alarms/{alarm['id']}/acknowledge", headers=other)
    assert r.status_code == 403
    mine = api.auth.headers("official", department="environment")
    r = await api.client.post(f"/api/ops/alarms/{alarm['id']}/acknowledge", headers=mine)
    assert r.status_code == 200
    # Another tenant sees nothing.
    r = await api.client.get("/api/ops/alarms", headers=api.auth.headers("operator", tenant="other"))
    assert r.status_code == 200 and r.json()["total"] == 0


async def test_alarm_filters(api: Any) -> None:
    await api.rule({**PM25, "id": "pm25-high"})
    await api.rule({"id": "temp-high", "name": "hot", "entityTypes": ["AirQualityObserved"], "severity": "warning",
                    "condition": {"threshold": {"attr": "temperature", "op": ">=", "value": 40}},
                    "department": "weather"})
    await api.upsert(air("urn:ngsi-ld:AirQualityObserved:a", pm25=150, temperature=41, district="d1"),
                     air("urn:ngsi-ld:AirQualityObserved:b", pm25=150, temperature=20, district="d2"))
    assert len(await api.alarms()) == 3
    assert len(await api.alarms(severity="major")) == 2
    assert [a["ruleId"] for a in await api.alarms(severity="warning")] == ["temp-high"]
    assert len(await api.alarms(district="d2")) == 1
    assert len(await api.alarms(department="weather")) == 1
    assert len(await api.alarms(type="AirQualityObserved", status="open")) == 3
    assert len(await api.alarms(ruleId="pm25-high", entityId="urn:ngsi-ld:AirQualityObserved:a")) == 1
    assert await api.alarms(status="cleared") == []
    r = await api.client.get("/api/ops/alarms", params={"limit": 1, "offset": 1}, headers=api.operator)
    assert r.json()["total"] == 3 and len(r.json()["items"]) == 1


async def test_geofence_and_combinations(api: Any) -> None:
    square = {"type": "Polygon", "coordinates": [[[110.0, 19.9], [110.2, 19.9], [110.2, 20.1], [110.0, 20.1],
                                                   [110.0, 19.9]]]}
    await api.rule({"id": "in-zone-and-high", "name": "high inside the zone", "entityTypes": ["AirQualityObserved"],
                    "severity": "critical",
                    "condition": {"all": [{"geofence": {"inside": square}},
                                          {"any": [{"threshold": {"attr": "pm25", "op": ">", "value": 100}},
                                                   {"threshold": {"attr": "no2", "op": ">", "value": 200}}]}]}})
    await api.rule({"id": "left-zone", "name": "left the zone", "entityTypes": ["AirQualityObserved"],
                    "severity": "minor", "condition": {"geofence": {"outside": square}}})

    def at(lon: float, **values: Any) -> dict[str, Any]:
        return air(location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, 20.0]}},
                   **values)

    await api.upsert(at(110.1, pm25=50, no2=10))
    assert await api.alarms() == []
    await api.upsert(at(110.1, pm25=50, no2=250))
    assert [a["ruleId"] for a in await api.alarms(status="active")] == ["in-zone-and-high"]
    await api.upsert(at(110.5, pm25=50, no2=250))  # moved out: inside-rule clears, outside-rule fires
    active = await api.alarms(status="active")
    assert [a["ruleId"] for a in active] == ["left-zone"]
    assert active[0]["location"] == {"type": "Point", "coordinates": [110.5, 20.0]}


async def test_id_pattern_equality_and_sets(api: Any) -> None:
    await api.rule({"id": "only-a", "name": "a only", "entityTypes": ["AirQualityObserved"], "severity": "minor",
                    "idPattern": "urn:ngsi-ld:AirQualityObserved:a-.*",
                    "condition": {"threshold": {"attr": "state", "op": "in", "value": ["bad", "broken"]}}})
    await api.rule({"id": "flag", "name": "flag", "entityTypes": ["AirQualityObserved"], "severity": "minor",
                    "condition": {"threshold": {"attr": "alarm", "op": "==", "value": True}}})
    await api.upsert(air("urn:ngsi-ld:AirQualityObserved:a-1", state="bad", alarm=1),
                     air("urn:ngsi-ld:AirQualityObserved:b-1", state="bad", alarm=True))
    found = sorted((a["ruleId"], a["entityId"]) for a in await api.alarms())
    # `1` is not `true`; b-1 does not match the id pattern.
    assert found == [("flag", "urn:ngsi-ld:AirQualityObserved:b-1"), ("only-a", "urn:ngsi-ld:AirQualityObserved:a-1")]


async def test_entity_deleted_clears(api: Any) -> None:
    await api.rule({**PM25, "id": "pm25-high"})
    await api.upsert(air(pm25=150))
    r = await api.client.delete("/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:aq-1", headers=api.admin)
    assert r.status_code == 204
    [alarm] = await api.alarms()
    assert alarm["status"] == "cleared" and alarm["clearReason"] == "entity deleted"


async def test_alarms_in_another_tenant(api: Any) -> None:
    admin_t = {**api.auth.headers("sys_admin"), "NGSILD-Tenant": "city2"}
    r = await api.client.post("/api/ops/rules", json={**PM25, "id": "pm25-high"}, headers=admin_t)
    assert r.status_code == 201, r.text
    await api.upsert(air(pm25=150))  # default tenant: no rule there
    assert await api.alarms() == []
    r = await api.client.post("/ngsi-ld/v1/entityOperations/upsert", json=[air(pm25=150)], headers=admin_t)
    assert r.status_code in (201, 204), r.text
    r = await api.client.get("/api/ops/alarms", headers=admin_t)
    [alarm] = r.json()["items"]
    r = await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=admin_t)
    assert r.status_code == 200
    r = await api.client.get(f"/ngsi-ld/v1/entities/{alarm['alertId']}", headers=api.admin)
    assert r.status_code == 404
