"""Update Attributes (`PATCH /entities/{id}/attrs/`) per ETSI GS CIM 009 v1.8.1 §5.6.2 and §6.6.3.2: it
replaces the attributes (and datasetId instances) the entity has and leaves the others out, listing them
in `notUpdated` (207). The conformance suite's 011_01_03, 046_20, 046_23–046_30 and 046_41 create
attributes with this operation and expect 204; that is the v1.9.1 text ("and by appending non-existing
ones"), not v1.8.1's. Append Attributes (§5.6.3) and Merge Entity (§5.6.17) are the v1.8.1 operations
that create attributes, and they do."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, air
from hub.subscriptions.notify_helpers import (  # noqa: F401 - the fixture is used by name
    Receiver,
    S,
    receiver_fixture,
    subscription,
)

E = "/ngsi-ld/v1/entities"
ROOF = "urn:ngsi-ld:Dataset:roof"


async def test_update_attributes_does_not_create_an_attribute(client: httpx.AsyncClient) -> None:
    entity = air(601)
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    # The spec's own resource URI ends in a slash (§6.6.1: entities/{entityId}/attrs/), as the suite sends it.
    r = await client.patch(f"{E}/{entity['id']}/attrs/", json={
        "pm25": {"type": "Property", "value": 30},
        "name": {"type": "Property", "value": "Tour Eiffel"},
    }, headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["updated"] == ["pm25"]
    assert [item["attributeName"] for item in r.json()["notUpdated"]] == ["name"]
    kv = (await client.get(f"{E}/{entity['id']}", params={"options": "keyValues"})).json()
    assert kv["pm25"] == 30 and "name" not in kv
    # Only attributes the entity lacks: nothing is updated, still 207 (§6.6.3.2: partial success).
    r = await client.patch(f"{E}/{entity['id']}/attrs/", json={"name": {"type": "Property", "value": "x"}},
                           headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["updated"] == []


async def test_update_attributes_does_not_create_a_dataset_instance(client: httpx.AsyncClient) -> None:
    entity = air(602)
    entity["temperature"] = {"type": "Property", "value": 20}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    url = f"{E}/{entity['id']}"
    # The attribute exists, but not its roof instance: §5.6.2 replaces a matching instance only.
    r = await client.patch(f"{url}/attrs", json={
        "temperature": {"type": "Property", "value": 25, "datasetId": ROOF}}, headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["updated"] == []
    assert (await client.get(url)).json()["temperature"] == {"type": "Property", "value": 20}
    # Once the instance exists (appended, §5.6.3), the same update replaces it.
    r = await client.post(f"{url}/attrs", json={
        "temperature": {"type": "Property", "value": 21, "datasetId": ROOF}}, headers=JSON)
    assert r.status_code == 204, r.text
    r = await client.patch(f"{url}/attrs", json={
        "temperature": {"type": "Property", "value": 25, "datasetId": ROOF}}, headers=JSON)
    assert r.status_code == 204, r.text
    temps = (await client.get(url)).json()["temperature"]
    assert {t.get("datasetId", "@none"): t["value"] for t in temps} == {"@none": 20, ROOF: 25}


async def test_append_and_merge_create_what_update_leaves_out(client: httpx.AsyncClient) -> None:
    entity = air(603)
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    url = f"{E}/{entity['id']}"
    r = await client.post(f"{url}/attrs/", json={"name": {"type": "Property", "value": "a"}}, headers=JSON)
    assert r.status_code == 204, r.text  # Append Attributes, §5.6.3
    r = await client.patch(url, json={"street": {"type": "Property", "value": "b"}}, headers=JSON)
    assert r.status_code == 204, r.text  # Merge Entity, §5.6.17
    kv = (await client.get(url, params={"options": "keyValues"})).json()
    assert kv["name"] == "a" and kv["street"] == "b"


async def test_an_attribute_left_out_is_not_notified_as_created(client: httpx.AsyncClient,
                                                                 receiver: Receiver) -> None:
    entity = air(604)
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    body = subscription(receiver.url, notificationTrigger=["attributeCreated"],
                        entities=[{"type": "AirQualityObserved", "id": entity["id"]}])
    assert (await client.post(S, json=body, headers=JSON)).status_code == 201
    url = f"{E}/{entity['id']}"
    r = await client.patch(f"{url}/attrs/", json={"name": {"type": "Property", "value": "x"}}, headers=JSON)
    assert r.status_code == 207, r.text
    # An attribute really created is notified. Notifications keep the order of the writes, so the first
    # one being this append shows the update before it created nothing to notify.
    r = await client.post(f"{url}/attrs/", json={"street": {"type": "Property", "value": "y"}}, headers=JSON)
    assert r.status_code == 204, r.text
    received = await receiver.wait_count(1)
    data = received[0].body["data"][0]
    assert "street" in data and "name" not in data
