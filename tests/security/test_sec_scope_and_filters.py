"""Issue #5 gaps: filters on hidden/masked attributes, discovery, honest counts, department scope of
device management and subscriptions."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth
from security.test_sec_masking_hub import CASE, ID_NUMBER, JSON, case_file, declare_case_file

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
S = "/ngsi-ld/v1/subscriptions"
LOCATION = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.3, 20.0]}}


async def _cases(client: httpx.AsyncClient) -> None:
    await declare_case_file(client)
    assert (await client.post(E, json=case_file(location=LOCATION), headers=JSON)).status_code == 201


def _problem(r: httpx.Response, status: int = 403) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["type"] and body["title"] and body["detail"]
    return body


# ---------------------------------------------------------------------- 1. filters


async def test_filter_on_hidden_attribute_is_refused(client: httpx.AsyncClient,
                                                     anon_client: httpx.AsyncClient) -> None:
    await _cases(client)
    ok = await anon_client.get(E, params={"type": "CaseFile", "q": 'status=="open"'})
    assert ok.status_code == 200 and [e["id"] for e in ok.json()] == [CASE]
    for params in ({"q": 'diagnosis=="secret diagnosis"'}, {"q": "diagnosis"}, {"attrs": "diagnosis"},
                   {"q": f'idNumber=="{ID_NUMBER}"'},
                   {"georel": "near;maxDistance==1000", "geometry": "Point", "coordinates": "[110.3,20.0]"}):
        detail = _problem(await anon_client.get(E, params={"type": "CaseFile", **params}))["detail"]
        assert "attribute" in detail
    # The same for the batch query and the temporal query.
    _problem(await anon_client.post("/ngsi-ld/v1/entityOperations/query", headers=JSON, json={
        "type": "Query", "entities": [{"type": "CaseFile"}], "q": 'diagnosis=="secret diagnosis"'}))
    _problem(await anon_client.get(T, params={"type": "CaseFile", "q": 'diagnosis=="x"',
                                              "timerel": "after", "timeAt": "2000-01-01T00:00:00Z"}))


async def test_masked_attribute_is_not_filterable_by_value(client: httpx.AsyncClient, auth: Auth) -> None:
    await _cases(client)
    operator = auth.headers("operator")  # sees sensitive values masked
    by_value = {"type": "CaseFile", "q": f'idNumber=="{ID_NUMBER}"'}
    _problem(await client.get(E, params=by_value, headers=operator))
    _problem(await client.get(E, params=by_value))  # sys_admin sees them masked too
    # Presence of a masked attribute is shown, so testing for it is allowed.
    r = await client.get(E, params={"type": "CaseFile", "q": "idNumber"}, headers=operator)
    assert r.status_code == 200 and len(r.json()) == 1
    # An official sees them in clear in its own department only: elsewhere the entity does not match.
    health = auth.headers("official", department="health")
    r = await client.get(E, params={**by_value, "count": "true"}, headers=health)
    assert r.status_code == 200 and [e["id"] for e in r.json()] == [CASE]
    env = auth.headers("official", department="environment", districts=["d1"])
    r = await client.get(E, params={**by_value, "count": "true"}, headers=env)
    assert r.status_code == 200 and r.json() == []
    assert "NGSILD-Results-Count" not in r.headers  # its view is filtered: no count


# ---------------------------------------------------------------------- 2. discovery


async def test_discovery_hides_hidden_attributes(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                 auth: Auth) -> None:
    await _cases(client)
    await client.post(E, headers=JSON, json={"id": "urn:ngsi-ld:Secret:1", "type": "Secret",
                                             "code": {"type": "Property", "value": 7}})
    names = (await anon_client.get("/ngsi-ld/v1/attributes")).json()["attributeList"]
    assert "status" in names and "diagnosis" not in names and "idNumber" not in names and "code" not in names
    types = (await anon_client.get("/ngsi-ld/v1/types")).json()["typeList"]
    assert "CaseFile" in types and "Secret" not in types
    assert (await anon_client.get("/ngsi-ld/v1/types/Secret")).status_code == 404
    assert (await anon_client.get("/ngsi-ld/v1/attributes/diagnosis")).status_code == 404
    info = (await anon_client.get("/ngsi-ld/v1/types/CaseFile")).json()
    assert {a["attributeName"] for a in info["attributeDetails"]} == {"status", "district"}
    details = (await anon_client.get("/ngsi-ld/v1/types", params={"details": "true"})).json()
    assert "diagnosis" not in next(t for t in details if t["typeName"] == "CaseFile")["attributeNames"]
    # Staff see the masked ones (their presence is shown) but not another department's confidential.
    operator = (await client.get("/ngsi-ld/v1/attributes", headers=auth.headers("operator"))).json()
    assert "idNumber" in operator["attributeList"] and "diagnosis" not in operator["attributeList"]
    health = await client.get("/ngsi-ld/v1/attributes", headers=auth.headers("official", department="health"))
    assert "diagnosis" in health.json()["attributeList"]


# ---------------------------------------------------------------------- 3. counts and paging


async def test_counts_only_what_the_caller_sees(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    await _cases(client)
    for i in range(3):
        r = await client.post(E, headers=JSON, json={"id": f"urn:ngsi-ld:Secret:{i}", "type": "Secret",
                                                     "code": {"type": "Property", "value": i}})
        assert r.status_code == 201
    r = await anon_client.get(E, params={"local": "true", "count": "true", "limit": "1"})
    assert r.status_code == 200 and r.headers["NGSILD-Results-Count"] == "1"
    assert [e["id"] for e in r.json()] == [CASE]  # a full page: the withheld ones are left out in SQL
    assert 'rel="next"' not in r.headers.get("Link", "")
    r = await anon_client.get(E, params={"type": "Secret", "count": "true"})
    assert r.status_code == 200 and r.json() == [] and r.headers["NGSILD-Results-Count"] == "0"
    # sys_admin still counts everything.
    r = await client.get(E, params={"local": "true", "count": "true", "limit": "1"})
    assert r.headers["NGSILD-Results-Count"] == "5"  # with the DataClassPolicy entity


# ---------------------------------------------------------------------- 4. department scope


AQ = {"profile": "air-quality", "lon": 110.3, "lat": 20.0}


async def test_dept_admin_manages_only_its_devices(client: httpx.AsyncClient, auth: Auth) -> None:
    env = auth.headers("dept_admin", department="environment", districts=["d1"])
    r = await client.post("/api/iot/devices", json={**AQ, "name": "other-1", "department": "transport"})
    assert r.status_code == 201, r.text
    other = r.json()["id"]
    r = await client.post("/api/iot/devices", json={**AQ, "name": "env-1", "department": "environment"},
                          headers=env)
    assert r.status_code == 201, r.text
    mine = r.json()["id"]
    _problem(await client.post("/api/iot/devices", json={**AQ, "name": "x-1", "department": "transport"},
                               headers=env))
    _problem(await client.post("/api/iot/devices/bulk", headers=env,
                               json=[{**AQ, "name": "x-2", "department": "transport"}]))
    assert (await client.get(f"/api/iot/devices/{mine}", headers=env)).status_code == 200
    _problem(await client.get(f"/api/iot/devices/{other}", headers=env))
    _problem(await client.delete(f"/api/iot/devices/{other}", headers=env))
    _problem(await client.post(f"/api/iot/devices/{other}/token", headers=env))
    _problem(await client.post(f"/api/iot/devices/{other}/rpc", headers=env, json={"method": "reboot"}))
    listed = (await client.get("/api/iot/devices", headers=env)).json()
    assert [d["id"] for d in listed["items"]] == [mine]
    _problem(await client.get("/api/iot/devices", params={"department": "transport"}, headers=env))
    # Tenant-wide roles are unaffected.
    assert (await client.get(f"/api/iot/devices/{other}", headers=auth.headers("operator"))).status_code == 200
    assert (await client.delete(f"/api/iot/devices/{mine}", headers=env)).status_code == 204


async def test_officials_see_only_their_departments_subscriptions(client: httpx.AsyncClient, auth: Auth) -> None:
    env1 = auth.headers("official", department="environment")
    env2 = auth.headers("official", department="environment")
    transport = auth.headers("official", department="transport")
    body = {"type": "Subscription", "entities": [{"type": "CaseFile"}],
            "notification": {"endpoint": {"uri": "http://x.test/"}}}
    r = await client.post(S, json={**body, "id": "urn:ngsi-ld:Subscription:env"}, headers=env1 | JSON)
    assert r.status_code == 201, r.text
    r = await client.post(S, json={**body, "id": "urn:ngsi-ld:Subscription:admin"}, headers=JSON)
    assert r.status_code == 201, r.text
    sub = f"{S}/urn:ngsi-ld:Subscription:env"
    assert (await client.get(sub, headers=env2)).status_code == 200  # same department
    _problem(await client.get(sub, headers=transport))
    _problem(await client.patch(sub, json={"isActive": False}, headers=transport | JSON))
    _problem(await client.delete(sub, headers=transport))
    _problem(await client.get(f"{S}/urn:ngsi-ld:Subscription:admin", headers=env1))
    r = await client.get(S, params={"count": "true"}, headers=env2)
    assert [s["id"] for s in r.json()] == ["urn:ngsi-ld:Subscription:env"]
    assert r.headers["NGSILD-Results-Count"] == "1"
    assert (await client.get(S, headers=transport)).json() == []
    assert len((await client.get(S)).json()) == 2  # sys_admin: tenant-wide
    assert (await client.delete(sub, headers=env2)).status_code == 204


async def test_dept_admin_sees_only_its_dead_letters_and_health(client: httpx.AsyncClient, auth: Auth) -> None:
    env = auth.headers("dept_admin", department="environment", districts=["d1"])
    tokens = {}
    for name, department in (("env-dl", "environment"), ("tr-dl", "transport")):
        r = await client.post("/api/iot/devices", json={**AQ, "name": name, "department": department})
        assert r.status_code == 201, r.text
        tokens[name] = r.json()["token"]
        bad = await client.post(f"/api/v1/{tokens[name]}/telemetry", json={"pm25": -5})  # out of range
        assert bad.status_code == 400
    assert (await client.post("/api/v1/not-a-token/telemetry", json={"pm25": 1})).status_code == 401
    everything = (await client.get("/api/iot/dead-letters")).json()  # sys_admin: tenant-wide
    by_device = {item["device"]: item["id"] for item in everything["items"]}
    assert {"env-dl", "tr-dl", None} <= set(by_device)
    mine = (await client.get("/api/iot/dead-letters", headers=env)).json()
    assert [item["device"] for item in mine["items"]] == ["env-dl"] and mine["total"] == 1
    _problem(await client.get("/api/iot/dead-letters", params={"department": "transport"}, headers=env))
    assert (await client.get(f"/api/iot/dead-letters/{by_device['env-dl']}", headers=env)).status_code == 200
    _problem(await client.get(f"/api/iot/dead-letters/{by_device['tr-dl']}", headers=env))
    _problem(await client.get(f"/api/iot/dead-letters/{by_device[None]}", headers=env))  # no known device
    _problem(await client.post(f"/api/iot/dead-letters/{by_device['tr-dl']}/replay", headers=env,
                               json={"payload": {"pm25": 5}}))
    _problem(await client.post(f"/api/iot/dead-letters/{by_device[None]}/replay", headers=env,
                               json={"payload": {"pm25": 5}, "device": "tr-dl"}))
    replayed = await client.post(f"/api/iot/dead-letters/{by_device['env-dl']}/replay", headers=env,
                                 json={"payload": {"pm25": 5}})
    assert replayed.status_code == 200, replayed.text
    # The transport letter was not touched by the refused replays.
    still = (await client.get(f"/api/iot/dead-letters/{by_device['tr-dl']}")).json()
    assert still["status"] == "pending"
    health = (await client.get("/api/iot/health", headers=env)).json()
    assert health["devices"] == 1
    assert (await client.get("/api/iot/health")).json()["devices"] == 2
    _problem(await client.get("/api/iot/health", params={"department": "transport"}, headers=env))
