"""Operations the ETSI suite found missing: replace attribute (v1.8.1 §5.6.19), purge entities
(§5.6.21) and discovery of types/attributes named by an expanded IRI (§5.7.6, §5.7.9)."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON, air

E = "/ngsi-ld/v1/entities"
AIR1 = "urn:ngsi-ld:AirQualityObserved:000001"
PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"


async def test_replace_attribute_keeps_created_at(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    before = (await client.get(f"{E}/{AIR1}", params={"options": "sysAttrs"})).json()["pm25"]
    r = await client.put(f"{E}/{AIR1}/attrs/pm25", json={"type": "Relationship", "object": "urn:ngsi-ld:X:1"},
                         headers=JSON)
    assert r.status_code == 204, r.text
    after = (await client.get(f"{E}/{AIR1}", params={"options": "sysAttrs"})).json()["pm25"]
    assert after["type"] == "Relationship" and after["object"] == "urn:ngsi-ld:X:1"
    assert "unitCode" not in after and "value" not in after  # replaced, not merged
    assert after["createdAt"] == before["createdAt"]


@pytest.mark.parametrize(("entity", "attr", "status", "error"), [
    ("invalidUri", "pm25", 400, "BadRequestData"),
    ("urn:ngsi-ld:AirQualityObserved:nope", "pm25", 404, "ResourceNotFound"),
    (AIR1, "@invalid", 400, "BadRequestData"),
    (AIR1, "scope", 400, "BadRequestData"),
    (AIR1, "brandName", 404, "ResourceNotFound"),
])
async def test_replace_attribute_refusals(client: httpx.AsyncClient, entity: str, attr: str, status: int,
                                          error: str) -> None:
    await client.post(E, json=air(1), headers=JSON)
    r = await client.put(f"{E}/{entity}/attrs/{attr}", json={"type": "Property", "value": 1}, headers=JSON)
    assert r.status_code == status, r.text
    assert r.json()["type"] == PROBLEM + error
    assert (await client.get(f"{E}/{AIR1}")).json()["pm25"]["value"] == 10.0


async def test_replace_attribute_of_another_dataset_is_404(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    r = await client.put(f"{E}/{AIR1}/attrs/pm25", json={"type": "Property", "value": 1,
                                                        "datasetId": "urn:ngsi-ld:Dataset:other"}, headers=JSON)
    assert r.status_code == 404


async def test_purge_by_type_and_q(client: httpx.AsyncClient) -> None:
    for n in (1, 2, 3):
        await client.post(E, json=air(n, pm25=10.0 * n), headers=JSON)
    await client.post(E, json={"id": "urn:ngsi-ld:Vehicle:1", "type": "Vehicle"}, headers=JSON)
    r = await client.delete(E, params={"type": "AirQualityObserved", "q": "pm25>15"})
    assert r.status_code == 204, r.text
    left = (await client.get(E, params={"type": "AirQualityObserved,Vehicle"})).json()
    assert sorted(e["id"] for e in left) == [AIR1, "urn:ngsi-ld:Vehicle:1"]
    assert (await client.delete(E, params={"type": "Vehicle"})).status_code == 204
    assert [e["id"] for e in (await client.get(E, params={"type": "AirQualityObserved,Vehicle"})).json()] == [AIR1]


async def test_purge_drop_and_keep_attributes(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    await client.post(E, json=air(2), headers=JSON)
    assert (await client.delete(E, params={"id": AIR1, "drop": "pm25"})).status_code == 204
    assert set((await client.get(f"{E}/{AIR1}")).json()) == {"id", "type", "location"}
    r = await client.delete(E, params={"type": "AirQualityObserved", "keep": "pm25"})
    assert r.status_code == 204
    assert set((await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000002")).json()) == {"id", "type", "pm25"}
    assert set((await client.get(f"{E}/{AIR1}")).json()) == {"id", "type"}


async def test_purge_all_needs_local(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    r = await client.delete(E)
    assert r.status_code == 400 and r.json()["type"] == PROBLEM + "BadRequestData"
    assert (await client.get(f"{E}/{AIR1}")).status_code == 200
    r = await client.delete(E, params={"type": "AirQualityObserved", "drop": "pm25", "keep": "location"})
    assert r.status_code == 400
    assert (await client.get(f"{E}/{AIR1}")).json()["pm25"]["value"] == 10.0
    assert (await client.delete(E, params={"local": "true"})).status_code == 204
    assert (await client.get(f"{E}/{AIR1}")).status_code == 404


async def test_type_and_attribute_by_expanded_iri(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    iri = "https://uri.etsi.org/ngsi-ld/default-context/AirQualityObserved"
    r = await client.get(f"/ngsi-ld/v1/types/{iri}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == iri and r.json()["entityCount"] == 1
    attr = "https://uri.etsi.org/ngsi-ld/default-context/pm25"
    r = await client.get(f"/ngsi-ld/v1/attributes/{attr}")
    assert r.status_code == 200 and r.json()["id"] == attr
    assert (await client.get("/ngsi-ld/v1/types/https://example.org/Nothing")).status_code == 404


async def test_query_with_several_id_selectors(client: httpx.AsyncClient) -> None:
    for n in (1, 2, 3):
        await client.post(E, json=air(n), headers=JSON)
    body = {"type": "Query", "entities": [{"id": air(1)["id"], "type": "AirQualityObserved"},
                                          {"id": air(3)["id"], "type": "AirQualityObserved"}]}
    r = await client.post("/ngsi-ld/v1/entityOperations/query", json=body, headers=JSON)
    assert r.status_code == 200, r.text
    assert sorted(e["id"] for e in r.json()) == [air(1)["id"], air(3)["id"]]
    mixed = {"type": "Query", "entities": [{"id": air(1)["id"]}, {"type": "AirQualityObserved", "idPattern": ".*"}]}
    r = await client.post("/ngsi-ld/v1/entityOperations/query", json=mixed, headers=JSON)
    assert r.status_code == 400 and r.json()["type"] == PROBLEM + "BadRequestData"


async def test_query_by_post_as_geojson(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    r = await client.post("/ngsi-ld/v1/entityOperations/query", json={"type": "Query", "entities": [
        {"type": "AirQualityObserved"}]}, headers=JSON | {"Accept": "application/geo+json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["features"][0]["geometry"]["type"] == "Point"


async def test_temporal_query_by_post(client: httpx.AsyncClient) -> None:
    series = {"id": "urn:ngsi-ld:Vehicle:q1", "type": "Vehicle",
              "speed": [{"type": "Property", "value": 120, "observedAt": "2020-08-01T12:03:00Z"},
                        {"type": "Property", "value": 80, "observedAt": "2020-08-01T12:05:00Z"}]}
    r = await client.post("/ngsi-ld/v1/temporal/entities", json=series, headers=JSON)
    assert r.status_code in (201, 204), r.text
    body = {"type": "Query", "entities": [{"type": "Vehicle"}], "attrs": ["speed"],
            "temporalQ": {"timerel": "after", "timeAt": "2020-08-01T12:04:00Z"}}
    r = await client.post("/ngsi-ld/v1/temporal/entityOperations/query", json=body, headers=JSON)
    assert r.status_code == 200, r.text
    [found] = r.json()
    assert found["id"] == "urn:ngsi-ld:Vehicle:q1" and [i["value"] for i in found["speed"]] == [80]
    r = await client.post("/ngsi-ld/v1/temporal/entityOperations/query", json={"type": "Nope"}, headers=JSON)
    assert r.status_code == 400 and r.json()["type"] == PROBLEM + "BadRequestData"
    bad_time = {**body, "temporalQ": {"timerel": "after", "timeAt": "yesterday"}}
    r = await client.post("/ngsi-ld/v1/temporal/entityOperations/query", json=bad_time, headers=JSON)
    assert r.status_code == 400


async def test_update_attrs_adds_types(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    r = await client.patch(f"{E}/{AIR1}/attrs", json={"type": ["Sensor", "AirQualityObserved"]}, headers=JSON)
    assert r.status_code == 204, r.text
    assert sorted((await client.get(f"{E}/{AIR1}")).json()["type"]) == ["AirQualityObserved", "Sensor"]
    assert [e["id"] for e in (await client.get(E, params={"type": "Sensor"})).json()] == [AIR1]
    r = await client.patch(f"{E}/{AIR1}/attrs", json={"type": "bad type"}, headers=JSON)
    assert r.status_code == 400


async def test_partial_update_of_a_sub_attribute_only(client: httpx.AsyncClient) -> None:
    parked = {"id": "urn:ngsi-ld:Vehicle:p1", "type": "Vehicle",
              "isParked": {"type": "Relationship", "object": "urn:ngsi-ld:Parking:1"}}
    await client.post(E, json=parked, headers=JSON)
    r = await client.patch(f"{E}/urn:ngsi-ld:Vehicle:p1/attrs/isParked",
                           json={"providedBy": {"type": "Relationship", "object": "urn:ngsi-ld:Person:J"}},
                           headers=JSON)
    assert r.status_code == 204, r.text
    got = (await client.get(f"{E}/urn:ngsi-ld:Vehicle:p1")).json()["isParked"]
    assert got["object"] == "urn:ngsi-ld:Parking:1"
    assert got["providedBy"]["object"] == "urn:ngsi-ld:Person:J"
    # a new type needs its own value
    r = await client.patch(f"{E}/urn:ngsi-ld:Vehicle:p1/attrs/isParked", json={"type": "Property"}, headers=JSON)
    assert r.status_code == 400


async def test_geojson_carries_its_context_in_the_body(client: httpx.AsyncClient) -> None:
    """v1.8.1 §6.3.15: a GeoJSON answer (Feature or FeatureCollection) has its @context as a member."""
    entity = {"id": "urn:ngsi-ld:AirQualityObserved:geo1", "type": "AirQualityObserved",
              "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [116.4, 39.9]}}}
    assert (await client.post("/ngsi-ld/v1/entities", json=entity, headers=JSON)).status_code == 201
    geo = {"Accept": "application/geo+json"}
    feature = (await client.get(f"/ngsi-ld/v1/entities/{entity['id']}", headers=geo)).json()
    assert feature["type"] == "Feature" and "@context" in feature
    collection = (await client.get("/ngsi-ld/v1/entities", params={"type": "AirQualityObserved"}, headers=geo)).json()
    assert collection["type"] == "FeatureCollection" and "@context" in collection


async def test_create_with_a_non_object_body_is_invalid_request(client: httpx.AsyncClient) -> None:
    """§5.6.1: Create Entity takes an entity, a JSON object; `[]` is a malformed request."""
    r = await client.post("/ngsi-ld/v1/entities", json=[], headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest"


async def test_entity_type_that_expands_to_a_keyword_is_400(client: httpx.AsyncClient) -> None:
    """"type" is @type in the core @context: not an entity type (§4.6.2, §5.6.1 BadRequestData)."""
    body = {"id": "urn:ngsi-ld:Building:kw", "type": "type"}
    r = await client.post("/ngsi-ld/v1/entities", json=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


async def test_query_with_attrs_id_and_type_is_400(client: httpx.AsyncClient) -> None:
    """§5.7.2: attrs lists attribute names; id and type are entity members (pick selects them)."""
    for attrs in ("id,type", "type", "id"):
        r = await client.get("/ngsi-ld/v1/entities", params={"type": "Building", "attrs": attrs})
        assert r.status_code == 400, (attrs, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
