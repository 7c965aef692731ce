"""一数一源: a field's authoritative source (department + system) is declared; writes from another source
through the hub or as a department upload are refused or flagged as declared, and listed for the data
office. Types without a declaration are untouched."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth
from cityos.core import clock
from cityos.hub.store import DEFAULT_TENANT

STATION = "urn:ngsi-ld:AirQualityObserved:roadside-1"
PATCH = f"/ngsi-ld/v1/entities/{STATION}/attrs"
CONFLICTS = "/api/data/sources/conflicts"


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


async def _value(client: httpx.AsyncClient, attr: str) -> Any:
    found = await client.get(f"/ngsi-ld/v1/entities/{STATION}", params={"options": "keyValues"})
    return found.json()[attr]


async def _declare(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.put("/api/data/sources", json=body)


async def test_hub_writes_from_another_source_are_refused_or_flagged(client: httpx.AsyncClient,
                                                                      auth: Auth) -> None:
    made = await client.post("/ngsi-ld/v1/entities", json={
        "id": STATION, "type": "AirQualityObserved", "department": _prop("environment"), "pm25": _prop(12.0),
        "temperature": _prop(20.0), "name": _prop("路边站 Roadside 1")})
    assert made.status_code == 201, made.text
    declared = await _declare(client, entityType="AirQualityObserved", field="pm25", department="environment",
                              policy="refuse")
    assert declared.status_code == 200, declared.text
    assert declared.json()["field"].endswith("pm25") and declared.json()["system"] == "*"
    assert (await _declare(client, entityType="AirQualityObserved", field="temperature", department="environment",
                           system="iot", policy="flag")).status_code == 200
    listed = (await client.get("/api/data/sources")).json()["sources"]
    assert [(r["field"].rsplit("/", 1)[-1], r["policy"]) for r in listed] == [("pm25", "refuse"),
                                                                              ("temperature", "flag")]

    transport = auth.headers("operator", department="transport")
    environment = auth.headers("operator", department="environment")
    # Refused: transport is not the source of PM2.5; the entity keeps its value.
    refused = await client.patch(PATCH, json={"pm25": _prop(99.0)}, headers=transport)
    assert refused.status_code == 403, refused.text
    assert "一数一源" in refused.json()["detail"] and "environment/*" in refused.json()["detail"]
    assert await _value(client, "pm25") == 12.0
    # The source itself writes; an attribute without a declaration is anyone's to write (with the right).
    assert (await client.patch(PATCH, json={"pm25": _prop(13.0)}, headers=environment)).status_code == 204
    assert (await client.patch(PATCH, json={"name": _prop("路边站 1")}, headers=transport)).status_code == 204
    assert await _value(client, "pm25") == 13.0
    # Flagged: the write goes through and is listed; the system counts too (the source is environment's IoT).
    assert (await client.patch(PATCH, json={"temperature": _prop(21.0)}, headers=transport)).status_code == 204
    assert (await client.patch(PATCH, json={"temperature": _prop(22.0)}, headers=environment)).status_code == 204
    assert await _value(client, "temperature") == 22.0
    # A batch upsert from the wrong source is refused for that entity.
    batch = await client.post("/ngsi-ld/v1/entityOperations/upsert", params={"options": "update"}, json=[
        {"id": STATION, "type": "AirQualityObserved", "pm25": _prop(50.0)}], headers=transport)
    assert batch.status_code == 207, batch.text
    assert await _value(client, "pm25") == 13.0

    writes = (await client.get(CONFLICTS)).json()["writes"]
    seen = sorted((w["field"].rsplit("/", 1)[-1], w["writer"], w["outcome"]) for w in writes)
    assert seen == [("pm25", "transport/hub", "refused"), ("pm25", "transport/hub", "refused"),
                    ("temperature", "environment/hub", "flagged"), ("temperature", "transport/hub", "flagged")]
    assert all(w["record"] == STATION and w["authority"].startswith("environment/") for w in writes)
    flagged = (await client.get(CONFLICTS, params={"outcome": "flagged"})).json()["writes"]
    assert {w["outcome"] for w in flagged} == {"flagged"} and len(flagged) == 2
    # Other entity types are not checked at all.
    other = await client.post("/ngsi-ld/v1/entities", json={
        "id": "urn:ngsi-ld:NoiseLevelObserved:n1", "type": "NoiseLevelObserved", "LAeq": _prop(50.0)},
        headers=transport)
    assert other.status_code == 201, other.text


async def test_uploads_from_another_department_are_refused_or_flagged(client: httpx.AsyncClient,
                                                                       auth: Auth) -> None:
    body = {"code": "elderly-canteens", "title": "长者食堂名录", "keyField": "name",
            "fields": [{"id": "name", "class": "public"}, {"id": "seats", "class": "public", "type": "numeric"}],
            "records": [{"name": "海秀长者食堂", "seats": 40}]}
    civil = auth.headers("official", department="civil-affairs")
    health = auth.headers("official", department="health")
    assert (await client.post("/api/data/datasets", json=body, headers=civil)).status_code == 201
    assert (await _declare(client, dataset="elderly-canteens", field="*", department="civil-affairs",
                           policy="refuse")).status_code == 200
    refused = await client.post("/api/data/datasets", json={**body, "records": [{"name": "x", "seats": 1}]},
                                headers=health)
    assert refused.status_code == 409, refused.text
    assert "一数一源" in refused.json()["detail"] and "civil-affairs" in refused.json()["detail"]
    shown = (await client.get("/api/data/datasets/elderly-canteens")).json()
    assert shown["provider"] == "civil-affairs" and shown["rows"] == 1
    # The source re-uploads; a field declared flag-only from another system is let through and listed.
    assert (await _declare(client, dataset="elderly-canteens", field="seats", department="civil-affairs",
                           system="census", policy="flag")).status_code == 200
    again = await client.post("/api/data/datasets", json={**body, "records": [{"name": "a", "seats": 2},
                                                                              {"name": "b", "seats": 3}]},
                              headers=civil)
    assert again.status_code == 201, again.text
    writes = (await client.get(CONFLICTS)).json()["writes"]
    assert sorted((w["field"], w["writer"], w["outcome"]) for w in writes) == [
        ("name", "health/upload", "refused"), ("seats", "civil-affairs/upload", "flagged"),
        ("seats", "health/upload", "refused")]


async def test_declaring_sources_bad_input(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                           auth: Auth) -> None:
    good = {"entityType": "AirQualityObserved", "field": "pm25", "department": "environment"}
    bad: list[tuple[Any, str]] = [
        ({**good, "dataset": "x"}, "exactly one"), ({"field": "pm25", "department": "environment"}, "exactly one"),
        ({**good, "entityType": "*"}, "entityType"), ({**good, "entityType": "a b"}, "entityType"),
        ({**good, "field": "x' OR 1=1"}, "field"), ({**good, "department": "Env Dept"}, "department"),
        ({**good, "department": 3}, "department"), ({**good, "policy": "ignore"}, "policy"),
        ({**good, "system": ""}, "system"), ([good], "object")]
    for body, word in bad:
        answer = await client.put("/api/data/sources", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert word in answer.json()["detail"], (body, answer.json()["detail"])
    malformed = await client.put("/api/data/sources", content=b"{nope",
                                 headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert (await anon_client.put("/api/data/sources", json=good)).status_code == 401
    official = auth.headers("official", department="environment")
    assert (await client.put("/api/data/sources", json=good, headers=official)).status_code == 403
    assert (await client.get("/api/data/sources")).json()["sources"] == []
    assert (await client.get(CONFLICTS, params={"outcome": "maybe"})).status_code == 400
    assert (await client.get(CONFLICTS, params={"limit": "0"})).status_code == 400
    assert (await client.get(CONFLICTS, params={"limit": "x"})).status_code == 400
    assert (await client.get(CONFLICTS, params={"limit": "²"})).status_code == 400
    assert (await client.get(CONFLICTS, params={"limit": "9" * 40})).status_code == 400
    assert (await anon_client.get(CONFLICTS)).status_code == 401


T = "/ngsi-ld/v1/temporal/entities"


async def _history(client: httpx.AsyncClient, entity_id: str, attr: str) -> list[Any]:
    found = await client.get(f"{T}/{entity_id}", params={"attrs": attr, "lastN": "100"})
    if found.status_code == 404:
        return []
    assert found.status_code == 200, found.text
    instances = found.json().get(attr, [])
    instances = instances if isinstance(instances, list) else [instances]
    return sorted(i["value"] for i in instances)


def _at(value: Any, observed: str) -> dict[str, Any]:
    return {"type": "Property", "value": value, "observedAt": observed}


async def test_temporal_writes_from_another_source_are_refused_or_flagged(client: httpx.AsyncClient,
                                                                           auth: Auth) -> None:
    """A history instance of an attribute is that attribute written: the temporal API is held to the same
    declared source as the entity API, for entities with a current state and for history-only ones."""
    made = await client.post("/ngsi-ld/v1/entities", json={
        "id": STATION, "type": "AirQualityObserved", "department": _prop("environment"), "pm25": _prop(12.0),
        "temperature": _prop(20.0)})
    assert made.status_code == 201, made.text
    assert (await _declare(client, entityType="AirQualityObserved", field="pm25", department="environment",
                           policy="refuse")).status_code == 200
    assert (await _declare(client, entityType="AirQualityObserved", field="temperature", department="environment",
                           system="iot", policy="flag")).status_code == 200
    transport = auth.headers("operator", department="transport")
    environment = auth.headers("operator", department="environment")
    before = await _history(client, STATION, "pm25")

    refused = await client.post(f"{T}/{STATION}/attrs", json={"pm25": [_at(99.0, "2026-12-01T01:00:00Z")]},
                                headers=transport)
    assert refused.status_code == 403, refused.text
    assert "一数一源" in refused.json()["detail"] and "environment/*" in refused.json()["detail"]
    # A batch of two attributes with one refused writes neither.
    mixed = await client.post(f"{T}/{STATION}/attrs", json={"pm25": [_at(98.0, "2026-12-01T01:00:00Z")],
                                                            "name": [_at("x", "2026-12-01T01:00:00Z")]},
                              headers=transport)
    assert mixed.status_code == 403, mixed.text
    assert await _history(client, STATION, "pm25") == before
    assert await _history(client, STATION, "name") == []
    ok = await client.post(f"{T}/{STATION}/attrs", json={"pm25": [_at(14.0, "2026-12-01T01:00:00Z")]},
                           headers=environment)
    assert ok.status_code == 204, ok.text
    assert await _history(client, STATION, "pm25") == sorted([*before, 14.0])
    # Flag: the history write goes through and is listed.
    flagged = await client.post(f"{T}/{STATION}/attrs", json={"temperature": [_at(21.5, "2026-12-01T02:00:00Z")]},
                                headers=transport)
    assert flagged.status_code == 204, flagged.text
    assert 21.5 in await _history(client, STATION, "temperature")

    # Editing or deleting an authoritative attribute's history is a write of it too.
    shown = (await client.get(f"{T}/{STATION}", params={"attrs": "pm25", "lastN": "100"})).json()["pm25"]
    instance_id = (shown[0] if isinstance(shown, list) else shown)["instanceId"]
    for attempt in (client.patch(f"{T}/{STATION}/attrs/pm25/{instance_id}", json={"value": 1.0}, headers=transport),
                    client.delete(f"{T}/{STATION}/attrs/pm25/{instance_id}", headers=transport),
                    client.delete(f"{T}/{STATION}/attrs/pm25", params={"deleteAll": "true"}, headers=transport),
                    # Dropping a whole history needs a tenant-wide role: a transport administrator's.
                    client.delete(f"{T}/{STATION}", headers=auth.headers("sys_admin", department="transport"))):
        answer = await attempt
        assert answer.status_code == 403, answer.text
        assert "一数一源" in answer.json()["detail"]
    assert await _history(client, STATION, "pm25") == sorted([*before, 14.0])

    # A history-only entity (no current state): its type comes from the body, then from the registry.
    hist = "urn:ngsi-ld:AirQualityObserved:archive-1"
    body = {"id": hist, "type": "AirQualityObserved", "pm25": [_at(30.0, "2026-11-30T00:00:00Z")]}
    assert (await client.post(T, json=body, headers=transport)).status_code == 403
    assert (await client.get(f"{T}/{hist}")).status_code == 404
    assert (await client.post(T, json=body, headers=environment)).status_code == 201
    again = await client.post(T, json={"id": hist, "pm25": [_at(31.0, "2026-11-30T01:00:00Z")]}, headers=transport)
    assert again.status_code == 403, again.text
    appended = await client.post(f"{T}/{hist}/attrs", json={"pm25": [_at(31.0, "2026-11-30T01:00:00Z")]},
                                 headers=transport)
    assert appended.status_code == 403, appended.text
    assert await _history(client, hist, "pm25") == [30.0]
    # Bad input is still bad input, whoever writes: a new history without a type, a body that is not JSON.
    untyped = await client.post(T, json={"id": "urn:ngsi-ld:X:new", "pm25": [_at(1, "2026-11-30T00:00:00Z")]},
                                headers=transport)
    assert untyped.status_code == 400, untyped.text
    broken = await client.post(f"{T}/{hist}/attrs", content=b"{nope",
                               headers={**transport, "Content-Type": "application/json"})
    assert broken.status_code == 400, broken.text

    writes = (await client.get(CONFLICTS)).json()["writes"]
    temporal = [w for w in writes if w["writer"].startswith("transport/")]
    seen = sorted((w["record"].rsplit(":", 1)[-1], w["field"].rsplit("/", 1)[-1], w["outcome"]) for w in temporal)
    assert seen == sorted([("roadside-1", "pm25", "refused")] * 6 + [("roadside-1", "temperature", "flagged")]
                          + [("archive-1", "pm25", "refused")] * 3), seen
    # The environment's own history writes are the source's: nothing listed for them.
    assert not [w for w in writes if w["writer"].startswith("environment/") and w["field"].endswith("pm25")]


async def test_livelihood_publications_to_the_hub_follow_the_declared_source(client: httpx.AsyncClient,
                                                                               auth: Auth) -> None:
    """一网协同 records that are catalogued hub types (the budgets of 阳光政务, `BudgetExecution`) are written
    as the publishing department's transparency system: another department's write of a field whose
    authoritative source is declared is refused (the entity stays out of the hub) or flagged."""
    lines = [{"year": 2026, "category": "基本支出", "budget": 1_000_000, "spent": 500_000}]
    assert (await _declare(client, entityType="BudgetExecution", field="budget", department="finance",
                           system="transparency", policy="refuse")).status_code == 200
    assert (await _declare(client, entityType="BudgetExecution", field="spent", department="finance",
                           policy="flag")).status_code == 200
    civil = auth.headers("official", department="civil-affairs")
    published = await client.put("/api/transparency/departments/civil-affairs/lines", headers=civil, json=lines)
    # The department's own books are stored; the hub (and so the catalogue) does not take the refused write.
    assert published.status_code == 200, published.text
    entity = "/ngsi-ld/v1/entities/urn:ngsi-ld:BudgetExecution:civil-affairs:2026"
    assert (await client.get(entity)).status_code == 404
    finance = auth.headers("official", department="finance")
    assert (await client.put("/api/transparency/departments/finance/lines", headers=finance,
                             json=lines)).status_code == 200
    assert (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:BudgetExecution:finance:2026")).status_code == 200
    # Declared as flag only: the write goes through and is listed.
    assert (await _declare(client, entityType="BudgetExecution", field="budget", department="finance",
                           policy="flag")).status_code == 200
    assert (await client.put("/api/transparency/departments/civil-affairs/lines", headers=civil,
                             json=lines)).status_code == 200
    assert (await client.get(entity)).status_code == 200
    writes = (await client.get(CONFLICTS)).json()["writes"]
    seen = sorted((w["record"].rsplit(":", 2)[-2], w["field"].rsplit("/", 1)[-1], w["writer"], w["outcome"])
                  for w in writes)
    # The refused write lists its refusal only (its other field was not written, so it is not flagged).
    assert seen == [("civil-affairs", "budget", "civil-affairs/transparency", "flagged"),
                    ("civil-affairs", "budget", "civil-affairs/transparency", "refused"),
                    ("civil-affairs", "spent", "civil-affairs/transparency", "flagged")], seen


async def _device(client: httpx.AsyncClient, name: str, department: str) -> str:
    made = await client.post("/api/iot/devices", json={"name": name, "profile": "air-quality", "lon": 110.3,
                                                        "lat": 20.0, "district": "Meilan", "department": department})
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


async def test_device_readings_are_held_to_their_departments_source(client: httpx.AsyncClient) -> None:
    """A device writes for its department from the system `iot`: a reading of a field whose declared source
    is another department is refused (a dead letter, the conflict listed, the rest of the message stored) or
    stored and flagged; a reading stored once is flagged once, however often it is sent."""
    assert (await _declare(client, entityType="AirQualityObserved", field="pm25", department="environment",
                           policy="refuse")).status_code == 200
    assert (await _declare(client, entityType="AirQualityObserved", field="temperature", department="environment",
                           system="iot", policy="flag")).status_code == 200
    own, other = await _device(client, "aq-env", "environment"), await _device(client, "aq-bus", "transport")
    reading = {"pm25": 35, "no2": 20, "temperature": 24.5}
    assert (await client.post(f"/api/v1/{own}/telemetry", json=reading)).status_code == 200
    sent = {"ts": int(clock.now().timestamp() * 1000) - 60_000, "values": reading}
    for _ in range(2):  # the second is a duplicate: nothing new is written, so nothing is flagged again
        answer = await client.post(f"/api/v1/{other}/telemetry", json=sent)
        assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 0

    mine = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:aq-env",
                             params={"options": "keyValues"})).json()
    assert (mine["pm25"], mine["temperature"]) == (35, 24.5)
    theirs = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:AirQualityObserved:aq-bus",
                               params={"options": "keyValues"})).json()
    assert "pm25" not in theirs and (theirs["no2"], theirs["temperature"]) == (20, 24.5)
    letters = (await client.get("/api/iot/dead-letters", params={"device": "aq-bus"})).json()["items"]
    assert {letter["reason"] for letter in letters} == {"source_refused"}
    assert "一数一源" in letters[0]["detail"] and "environment/*" in letters[0]["detail"]
    assert letters[0]["payload"]["values"] == {"pm25": 35}

    writes = (await client.get(CONFLICTS)).json()["writes"]
    seen = sorted((w["record"].rsplit(":", 1)[-1], w["field"].rsplit("/", 1)[-1], w["writer"], w["principal"],
                   w["outcome"]) for w in writes)
    assert seen == [("aq-bus", "pm25", "transport/iot", "device:aq-bus", "refused"),
                    ("aq-bus", "pm25", "transport/iot", "device:aq-bus", "refused"),
                    ("aq-bus", "temperature", "transport/iot", "device:aq-bus", "flagged")], seen


async def test_care_alerts_are_written_as_civil_affairs_and_never_dropped(client: httpx.AsyncClient,
                                                                         app: Any) -> None:
    """The 120 alerts of elderly care are civil-affairs' eldercare system's writes: flagged when Alert's
    declared source is another department; when it is declared `refuse`, the refusal is listed and the alert
    still reaches the hub (a life is worth more than a governance rule)."""
    care = app.state.livelihood_care
    entity = {"id": "urn:ngsi-ld:Alert:alarm-care-t1", "type": "Alert", "category": _prop("health"),
              "alarmStatus": _prop("active")}
    assert (await _declare(client, entityType="Alert", field="category", department="emergency",
                           policy="flag")).status_code == 200
    await care.hub_write(DEFAULT_TENANT, entity)
    assert (await client.get(f"/ngsi-ld/v1/entities/{entity['id']}")).status_code == 200
    assert (await _declare(client, entityType="Alert", field="*", department="emergency",
                           policy="refuse")).status_code == 200
    second = {**entity, "id": "urn:ngsi-ld:Alert:alarm-care-t2"}
    await care.hub_write(DEFAULT_TENANT, second)
    assert (await client.get(f"/ngsi-ld/v1/entities/{second['id']}")).status_code == 200
    writes = (await client.get(CONFLICTS)).json()["writes"]
    seen = sorted((w["record"].rsplit(":", 1)[-1], w["field"].rsplit("/", 1)[-1], w["writer"], w["outcome"])
                  for w in writes)
    assert ("alarm-care-t1", "category", "civil-affairs/eldercare", "flagged") in seen, seen
    # category keeps its own rule (flag); "*" refuses the rest. The refused write lists its refusal only.
    assert [w for w in seen if w[0] == "alarm-care-t2"] == [
        ("alarm-care-t2", "alarmStatus", "civil-affairs/eldercare", "refused")], seen
