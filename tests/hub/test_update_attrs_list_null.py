"""An NGSI-LD Null for a ListRelationship (`"objectList": "urn:ngsi-ld:null"`, accepted by the parser in
merge and update) deletes the attribute like the Null of any other attribute type. Update Attributes
(v1.9.1 §5.6.2) appends what the entity lacks: such a Null must not be appended as a stored value."""

from __future__ import annotations

import httpx

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
NULL = "urn:ngsi-ld:null"
ROUTE = "urn:ngsi-ld:BusRoute:list-null"
STOPS = {"type": "ListRelationship", "objectList": ["urn:ngsi-ld:BusStop:1", "urn:ngsi-ld:BusStop:2"]}


async def key_values(client: httpx.AsyncClient) -> dict[str, object]:
    r = await client.get(f"{E}/{ROUTE}", params={"options": "keyValues"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_list_relationship_null_deletes_and_is_never_appended(client: httpx.AsyncClient) -> None:
    body = {"id": ROUTE, "type": "BusRoute", "stops": STOPS, "name": {"type": "Property", "value": "7"}}
    assert (await client.post(E, json=body, headers=JSON)).status_code == 201
    null = {"type": "ListRelationship", "objectList": NULL}
    # Missing: nothing to delete, nothing to append (207).
    r = await client.patch(f"{E}/{ROUTE}/attrs", json={"detour": null}, headers=JSON)
    assert r.status_code == 207, r.text
    assert [n["attributeName"] for n in r.json()["notUpdated"]] == ["detour"]
    assert "detour" not in await key_values(client)
    # Present: deleted, by Update Attributes, Merge Entity and Partial Attribute Update alike.
    r = await client.patch(f"{E}/{ROUTE}/attrs", json={"stops": null}, headers=JSON)
    assert r.status_code == 204, r.text
    assert "stops" not in await key_values(client)
    assert (await client.post(f"{E}/{ROUTE}/attrs", json={"stops": STOPS}, headers=JSON)).status_code == 204
    r = await client.patch(f"{E}/{ROUTE}", json={"stops": null}, headers=JSON)
    assert r.status_code == 204, r.text
    assert "stops" not in await key_values(client)
    assert (await client.post(f"{E}/{ROUTE}/attrs", json={"stops": STOPS}, headers=JSON)).status_code == 204
    r = await client.patch(f"{E}/{ROUTE}/attrs/stops", json=null, headers=JSON)
    assert r.status_code == 204, r.text
    assert await key_values(client) == {"id": ROUTE, "type": "BusRoute", "name": "7"}
