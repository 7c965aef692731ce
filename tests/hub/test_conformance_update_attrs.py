"""Update Attributes (`PATCH /entities/{id}/attrs/`) per ETSI GS CIM 009 v1.9.1 §5.6.2 (resource §6.6.3.2):
the attributes and datasetId instances the entity has are replaced, and the ones it lacks are appended
("…updating already existing Attributes … and by appending non-existing ones"). An appended attribute is
a write like Append Attributes' (§5.6.3): history, `attributeCreated`, audit, the caller's write scope.
What still cannot be applied is listed in `notUpdated` (207): an NGSI-LD Null for an attribute the entity
lacks, a scope for an entity without one (§4.18, the suite's 011_05_02). Partial Attribute Update
(§5.6.4) still answers 404 for a missing attribute."""

from __future__ import annotations

from typing import Any

import httpx

from auth_tokens import Auth
from cityos.security.audit import AuditQuery
from hub.helpers import CORE, JSON, LD, air
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
    subscription,
)

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
ROOF = "urn:ngsi-ld:Dataset:roof"
NULL = "urn:ngsi-ld:null"


async def created(client: httpx.AsyncClient, entity: dict[str, Any]) -> str:
    r = await client.post(E, json=entity, headers=JSON)
    assert r.status_code == 201, r.text
    return f"{E}/{entity['id']}"


async def key_values(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await client.get(url, params={"options": "keyValues"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_update_attributes_appends_a_missing_attribute(client: httpx.AsyncClient, app: Any) -> None:
    entity = air(601)
    url = await created(client, entity)
    # The spec's own resource URI ends in a slash (§6.6.1: entities/{entityId}/attrs/), as the suite sends it.
    r = await client.patch(f"{url}/attrs/", json={
        "pm25": {"type": "Property", "value": 30},
        "name": {"type": "Property", "value": "Tour Eiffel", "observedAt": "2026-12-06T10:00:00Z"},
    }, headers=JSON)
    assert r.status_code == 204, r.text
    assert r.content == b""
    kv = await key_values(client, url)
    assert kv["pm25"] == 30 and kv["name"] == "Tour Eiffel"
    # The appended attribute is dated like an appended one: created now, not copied from anything.
    full = (await client.get(url, params={"options": "sysAttrs"})).json()
    assert full["name"]["createdAt"] == full["name"]["modifiedAt"]
    assert full["pm25"]["createdAt"] < full["pm25"]["modifiedAt"]
    # History: the appended instance is there, next to the updated one's.
    r = await client.get(f"{T}/{entity['id']}", params={"attrs": "name,pm25"})
    assert r.status_code == 200, r.text
    history = r.json()
    names = history["name"] if isinstance(history["name"], list) else [history["name"]]
    assert [i["value"] for i in names] == ["Tour Eiffel"]
    assert sorted(i["value"] for i in history["pm25"]) == [10.0, 30]
    # Audited as the operation it was.
    rows = await app.state.security.audit.search(AuditQuery(action="entity.update_attrs"))
    assert rows and rows[0]["resource"] == entity["id"] and rows[0]["outcome"] == "success"


async def test_update_attributes_appends_a_missing_dataset_instance(client: httpx.AsyncClient) -> None:
    entity = air(602)
    entity["temperature"] = {"type": "Property", "value": 20}
    url = await created(client, entity)
    # The attribute exists but not its roof instance: appended (§5.6.2, "otherwise … shall be appended").
    r = await client.patch(f"{url}/attrs", json={
        "temperature": {"type": "Property", "value": 25, "datasetId": ROOF}}, headers=JSON)
    assert r.status_code == 204, r.text
    temps = (await client.get(url)).json()["temperature"]
    assert {t.get("datasetId", "@none"): t["value"] for t in temps} == {"@none": 20, ROOF: 25}
    # Now it exists, the same update replaces it and leaves the default instance alone.
    r = await client.patch(f"{url}/attrs", json={
        "temperature": {"type": "Property", "value": 26, "datasetId": ROOF}}, headers=JSON)
    assert r.status_code == 204, r.text
    temps = (await client.get(url)).json()["temperature"]
    assert {t.get("datasetId", "@none"): t["value"] for t in temps} == {"@none": 20, ROOF: 26}
    r = await client.get(f"{T}/{entity['id']}", params={"attrs": "temperature", "datasetId": ROOF})
    assert sorted(i["value"] for i in r.json()["temperature"]) == [25, 26]


async def test_an_appended_attribute_is_expanded_with_the_request_context(client: httpx.AsyncClient) -> None:
    entity = air(603)
    url = await created(client, entity)
    body = {"@context": [{"nickname": "https://example.org/terms/nickname"}, CORE],
            "nickname": {"type": "Property", "value": "Tour"}}
    r = await client.patch(f"{url}/attrs", json=body, headers=LD)
    assert r.status_code == 204, r.text
    kv = await key_values(client, url)
    assert kv["https://example.org/terms/nickname"] == "Tour" and "nickname" not in kv


async def test_an_appended_geoproperty_is_found_by_a_geoquery(client: httpx.AsyncClient) -> None:
    # A new geometry changes the entity's geometry rows: PostgreSQL's one-statement PATCH does not apply.
    entity = air(604)
    url = await created(client, entity)
    area = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.2945, 48.8584]}}
    r = await client.patch(f"{url}/attrs", json={"area": area}, headers=JSON)
    assert r.status_code == 204, r.text
    r = await client.get(E, params={"type": "AirQualityObserved", "georel": "near;maxDistance==100",
                                    "geometry": "Point", "coordinates": "[2.2945,48.8584]", "geoproperty": "area"})
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [entity["id"]]


async def test_an_appended_attribute_is_notified_as_created(client: httpx.AsyncClient,
                                                            receiver: Receiver) -> None:
    entity = air(605)
    url = await created(client, entity)
    body = subscription(receiver.url, notificationTrigger=["attributeCreated"], showChanges=True,
                        entities=[{"type": "AirQualityObserved", "id": entity["id"]}])
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    # Only an existing attribute: attributeUpdated, which this subscription does not ask for.
    r = await client.patch(f"{url}/attrs/", json={"pm25": {"type": "Property", "value": 11}}, headers=JSON)
    assert r.status_code == 204, r.text
    r = await client.patch(f"{url}/attrs/", json={"name": {"type": "Property", "value": "x"}}, headers=JSON)
    assert r.status_code == 204, r.text
    # Notifications keep the order of the writes: the first one being the append shows the update before
    # it did not fire attributeCreated.
    received = await receiver.wait_count(1)
    data = received[0].body["data"][0]
    assert data["name"] == {"type": "Property", "value": "x"}  # created: no previousValue
    assert data["pm25"]["value"] == 11 and "previousValue" not in data["pm25"]  # unchanged here


async def test_an_appended_attribute_needs_the_write_scope_of_an_append(client: httpx.AsyncClient,
                                                                         auth: Auth) -> None:
    """A citizen owning an entity may change its own data, not add an attribute that hands it over."""
    owned = {"id": "urn:ngsi-ld:Resident:U1", "type": "Resident",
             "owner": {"type": "Property", "value": "citizen-0601"},
             "status": {"type": "Property", "value": "active"}}
    url = await created(client, owned)
    mine = auth.headers("citizen", user_id="citizen-0601")
    give = {"owningDepartment": {"type": "Property", "value": "water"}}
    for attempt in (client.post(f"{url}/attrs", json=give, headers=mine | JSON),
                    client.patch(f"{url}/attrs", json={"status": {"type": "Property", "value": "moved"}, **give},
                                 headers=mine | JSON)):
        r = await attempt
        assert r.status_code == 403, r.text
    # Refused as a whole: the status update in the same request is not written either.
    kv = await key_values(client, url)
    assert kv["status"] == "active" and "owningDepartment" not in kv
    r = await client.patch(f"{url}/attrs", json={"nickname": {"type": "Property", "value": "u"}},
                           headers=mine | JSON)
    assert r.status_code == 204, r.text
    assert (await key_values(client, url))["nickname"] == "u"


async def test_what_cannot_be_applied_is_still_refused(client: httpx.AsyncClient) -> None:
    entity = air(606)
    url = await created(client, entity)
    # An invalid fragment is refused before anything is written, the valid attribute beside it included.
    for bad in ({"pm25": {"type": "Property", "value": 1}, "name": {"type": "Property"}},
                {"pm25": {"type": "Property", "value": 1}, "name": {"type": "Relationship", "object": "not a uri"}},
                {"pm25": {"type": "Property", "value": 1}, "bad name": {"type": "Property", "value": 1}}):
        r = await client.patch(f"{url}/attrs", json=bad, headers=JSON)
        assert r.status_code == 400, (bad, r.text)
    for bad_body in ([{"name": {"type": "Property", "value": 1}}], "name"):
        r = await client.patch(f"{url}/attrs", json=bad_body, headers=JSON)
        assert r.status_code == 400, r.text
    kv = await key_values(client, url)
    assert kv["pm25"] == 10.0 and "name" not in kv
    # An NGSI-LD Null deletes what exists; for what does not, there is nothing to delete or append (207).
    r = await client.patch(f"{url}/attrs", json={"pm25": {"type": "Property", "value": 2},
                                                 "name": {"type": "Property", "value": NULL}}, headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["updated"] == ["pm25"]
    assert [n["attributeName"] for n in r.json()["notUpdated"]] == ["name"]
    kv = await key_values(client, url)
    assert kv["pm25"] == 2 and "name" not in kv
    # An entity that does not exist is not created.
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:nope/attrs",
                           json={"name": {"type": "Property", "value": 1}}, headers=JSON)
    assert r.status_code == 404, r.text
    # Partial Attribute Update (§5.6.4) appends nothing: a missing attribute is still 404.
    r = await client.patch(f"{url}/attrs/street", json={"type": "Property", "value": "y"}, headers=JSON)
    assert r.status_code == 404, r.text
    assert "street" not in await key_values(client, url)


async def test_a_scope_is_still_not_added(client: httpx.AsyncClient) -> None:
    """§4.18 and the suite's 011_05_02: Update Attributes replaces a scope, never adds one."""
    entity = air(607)
    url = await created(client, entity)
    r = await client.patch(f"{url}/attrs", json={"scope": "/Paris", "name": {"type": "Property", "value": "n"}},
                           headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["updated"] == ["name"]
    assert [n["attributeName"] for n in r.json()["notUpdated"]] == ["scope"]
    kv = await key_values(client, url)
    assert kv["name"] == "n" and "scope" not in kv
