"""Data classes on the hub: masking in query results, retrieval, batch query, temporal results and
notifications; confidential data stays in its department; anonymous callers see public data only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.security.audit import AuditQuery
from hub.subscriptions.notify_helpers import Receiver

E = "/ngsi-ld/v1/entities"
JSON = {"Content-Type": "application/json"}
CASE = "urn:ngsi-ld:CaseFile:c1"
ID_NUMBER, PHONE, NAME = "110101199003071234", "13812345678", "张三丰"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def case_file(entity_id: str = CASE, department: str = "health", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": entity_id, "type": "CaseFile",
        "idNumber": {"type": "Property", "value": ID_NUMBER},
        "phone": {"type": "Property", "value": PHONE},
        "personName": {"type": "Property", "value": NAME},
        "diagnosis": {"type": "Property", "value": "secret diagnosis"},
        "status": {"type": "Property", "value": "open", "observedAt": "2026-01-01T08:00:00Z"},
        "district": {"type": "Property", "value": "d1"},
        "department": {"type": "Property", "value": department},
    }
    body.update(changes)
    return body


async def declare_case_file(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/data-classes/CaseFile", headers=JSON, json={
        "attributes": {"idNumber": "sensitive", "phone": "sensitive", "personName": "sensitive",
                       "diagnosis": "confidential", "status": "public", "district": "public"},
        "default": "internal"})
    assert r.status_code == 204, r.text


@pytest.fixture
async def cases(client: httpx.AsyncClient) -> None:
    await declare_case_file(client)
    assert (await client.post(E, json=case_file(), headers=JSON)).status_code == 201


def kv(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


async def test_declared_classes_are_listed(client: httpx.AsyncClient, cases: None) -> None:
    classes = kv(await client.get("/admin/data-classes"))
    assert classes["CaseFile"]["attributes"]["idNumber"] == "sensitive"
    assert classes["CaseFile"]["attributes"]["diagnosis"] == "confidential"
    # The IoT profiles feed the registry too.
    assert classes["AirQualityObserved"]["attributes"]["pm25"] == "public"
    assert classes["AirQualityObserved"]["attributes"]["batteryLevel"] == "internal"
    r = await client.put("/admin/data-classes/CaseFile", json={"default": "secret"}, headers=JSON)
    assert r.status_code == 400


async def test_masking_in_query_and_retrieval(client: httpx.AsyncClient, auth: Auth, cases: None) -> None:
    keyvalues = {"options": "keyValues"}
    operator = auth.headers("operator")
    seen = kv(await client.get(f"{E}/{CASE}", params=keyvalues, headers=operator))
    assert seen["idNumber"] == "110***********1234"
    assert seen["phone"] == "138****5678"
    assert seen["personName"] == "张**"
    assert "diagnosis" not in seen  # confidential: never outside its department
    assert seen["status"] == "open"
    listed = kv(await client.get(E, params={"type": "CaseFile", **keyvalues}, headers=operator))
    assert listed == [seen]
    # Normalized keeps the attribute's shape and metadata, only the value is masked.
    normalized = kv(await client.get(f"{E}/{CASE}", headers=operator))
    assert normalized["phone"] == {"type": "Property", "value": "138****5678"}
    batch = kv(await client.post("/ngsi-ld/v1/entityOperations/query", headers=operator | JSON,
                                 json={"type": "Query", "entities": [{"type": "CaseFile"}]}))
    assert batch[0]["idNumber"]["value"] == "110***********1234"
    assert "diagnosis" not in batch[0]
    # The sys_admin administers, but does not read personal data in clear either.
    admin = kv(await client.get(f"{E}/{CASE}", params=keyvalues))
    assert admin["idNumber"] == "110***********1234" and "diagnosis" not in admin


async def test_department_a_cannot_read_department_b_confidential(client: httpx.AsyncClient, auth: Auth,
                                                                  cases: None, app: Any) -> None:
    keyvalues = {"options": "keyValues"}
    health = kv(await client.get(f"{E}/{CASE}", params=keyvalues,
                                 headers=auth.headers("official", department="health", username="dr-wang")))
    assert health["diagnosis"] == "secret diagnosis"
    assert health["idNumber"] == ID_NUMBER  # cleared, in its own department
    transport = kv(await client.get(f"{E}/{CASE}", params=keyvalues,
                                    headers=auth.headers("official", department="transport")))
    assert "diagnosis" not in transport
    assert transport["idNumber"] == "110***********1234"
    # Nor through a query filtering on it, nor through the temporal API.
    found = kv(await client.get(E, params={"type": "CaseFile", "attrs": "diagnosis", **keyvalues},
                                headers=auth.headers("dept_admin", department="transport")))
    assert all("diagnosis" not in e for e in found)
    # The clear read by the health official is audited, with the attributes it saw.
    rows = await app.state.security.audit.search(AuditQuery(action="entity.read.sensitive", actor="dr-wang"))
    assert rows and rows[0]["resource"] == CASE
    assert {"https://uri.etsi.org/ngsi-ld/default-context/diagnosis"} <= set(rows[0]["detail"]["attrs"])


async def test_anonymous_sees_only_public_attributes(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                     auth: Auth, cases: None) -> None:
    air = {"id": "urn:ngsi-ld:AirQualityObserved:a1", "type": "AirQualityObserved",
           "pm25": {"type": "Property", "value": 17}, "batteryLevel": {"type": "Property", "value": 80},
           "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.3, 20.0]}}}
    secret = {"id": "urn:ngsi-ld:Undeclared:u1", "type": "Undeclared", "x": {"type": "Property", "value": 1}}
    for body in (air, secret):
        assert (await client.post(E, json=body, headers=JSON)).status_code == 201
    params = {"options": "keyValues"}
    seen = kv(await anon_client.get(f"{E}/{air['id']}", params=params))
    assert seen == {"id": air["id"], "type": "AirQualityObserved", "pm25": 17,
                    "location": {"type": "Point", "coordinates": [110.3, 20.0]}}
    case = kv(await anon_client.get(f"{E}/{CASE}", params=params))
    assert case == {"id": CASE, "type": "CaseFile", "status": "open", "district": "d1"}
    # A type nobody declared is internal: withheld from anonymous callers (as if absent).
    assert (await anon_client.get(f"{E}/{secret['id']}")).status_code == 404
    assert kv(await anon_client.get(E, params={"type": "Undeclared"})) == []
    # Citizens see what anonymous callers see.
    citizen = kv(await client.get(f"{E}/{air['id']}", params=params, headers=auth.headers("citizen")))
    assert "batteryLevel" not in citizen and citizen["pm25"] == 17
    # Writes need a token.
    r = await anon_client.post(E, json=dict(air, id="urn:ngsi-ld:AirQualityObserved:a2"), headers=JSON)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_masking_in_temporal_results(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Auth,
                                           cases: None) -> None:
    update = {"phone": {"type": "Property", "value": "13900001111"},
              "diagnosis": {"type": "Property", "value": "worse"}}
    assert (await client.patch(f"{E}/{CASE}/attrs", json=update, headers=JSON)).status_code == 204
    temporal = f"/ngsi-ld/v1/temporal/entities/{CASE}"
    operator = kv(await client.get(temporal, headers=auth.headers("operator")))
    values = sorted(i["value"] for i in operator["phone"])
    assert values == ["138****5678", "139****1111"]
    assert "diagnosis" not in operator
    simplified = kv(await client.get(temporal, params={"options": "temporalValues"},
                                     headers=auth.headers("operator")))
    assert sorted(v[0] for v in simplified["phone"]["values"]) == ["138****5678", "139****1111"]
    health = kv(await client.get(temporal, headers=auth.headers("official", department="health")))
    assert sorted(i["value"] for i in health["diagnosis"]) == ["secret diagnosis", "worse"]
    query = kv(await client.get("/ngsi-ld/v1/temporal/entities", params={"type": "CaseFile"},
                                headers=auth.headers("official", department="transport")))
    assert "diagnosis" not in query[0] and query[0]["idNumber"][0]["value"] == "110***********1234"
    anonymous = kv(await anon_client.get(temporal))
    assert set(anonymous) == {"id", "type", "status", "district"}


async def test_masking_in_notifications(client: httpx.AsyncClient, auth: Auth, cases: None,
                                        receiver: Receiver) -> None:
    subscription = {"type": "Subscription", "entities": [{"type": "CaseFile"}],
                    "notification": {"endpoint": {"uri": receiver.url}, "format": "keyValues"}}
    operator = auth.headers("operator")
    r = await client.post("/ngsi-ld/v1/subscriptions", json=subscription, headers=operator | JSON)
    assert r.status_code == 201, r.text
    health_sub = dict(subscription, notification={"endpoint": {"uri": receiver.url + "health"},
                                                  "format": "keyValues"})
    r = await client.post("/ngsi-ld/v1/subscriptions", json=health_sub,
                          headers=auth.headers("official", department="health") | JSON)
    assert r.status_code == 201, r.text
    change = {"status": {"type": "Property", "value": "closed"}}
    assert (await client.patch(f"{E}/{CASE}/attrs", json=change, headers=JSON)).status_code == 204
    got = await receiver.wait_count(2)
    by_path = {g.path: g.body["data"][0] for g in got}
    masked, clear = by_path["/notify"], by_path["/notifyhealth"]
    assert masked["idNumber"] == "110***********1234" and masked["phone"] == "138****5678"
    assert "diagnosis" not in masked and masked["status"] == "closed"
    assert clear["idNumber"] == ID_NUMBER and clear["diagnosis"] == "secret diagnosis"
    # The subscription's owner is not part of its representation.
    listed = kv(await client.get("/ngsi-ld/v1/subscriptions", headers=operator))
    assert all("_owner" not in s for s in listed)
