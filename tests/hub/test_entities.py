"""Entity CRUD over the NGSI-LD API (ETSI GS CIM 009 §5.6, §5.7)."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, LD, air, link

E = "/ngsi-ld/v1/entities"


async def test_create_then_retrieve_normalized(client: httpx.AsyncClient) -> None:
    r = await client.post(E, json=air(1, 12.5), headers=JSON)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{E}/urn:ngsi-ld:AirQualityObserved:000001"
    r = await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001")
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "AirQualityObserved"
    assert body["pm25"] == {"type": "Property", "value": 12.5, "unitCode": "GQ",
                            "observedAt": "2026-11-20T08:00:00Z"}
    assert body["location"]["value"] == {"type": "Point", "coordinates": [116.4, 39.9]}
    assert "json-ld#context" in r.headers["Link"]
    assert "createdAt" not in body


async def test_create_duplicate_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post(E, json=air(1), headers=JSON)).status_code == 201
    r = await client.post(E, json=air(1, 99), headers=JSON)
    assert r.status_code == 409
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/AlreadyExists"
    kept = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001")).json()
    assert kept["pm25"]["value"] == 10.0


async def test_key_values_concise_and_sys_attrs(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(2, 33), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000002"
    kv = (await client.get(url, params={"options": "keyValues"})).json()
    assert kv == {"id": "urn:ngsi-ld:AirQualityObserved:000002", "type": "AirQualityObserved", "pm25": 33,
                  "location": {"type": "Point", "coordinates": [116.4, 39.9]}}
    concise = (await client.get(url, params={"options": "concise"})).json()
    assert concise["pm25"] == {"value": 33, "unitCode": "GQ", "observedAt": "2026-11-20T08:00:00Z"}
    assert concise["location"] == {"type": "Point", "coordinates": [116.4, 39.9]}
    sys = (await client.get(url, params={"options": "sysAttrs"})).json()
    assert sys["createdAt"].endswith("Z") and sys["modifiedAt"].endswith("Z")
    assert "createdAt" in sys["pm25"]


async def test_attrs_projection(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(3), headers=JSON)
    body = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000003", params={"attrs": "pm25"})).json()
    assert set(body) == {"id", "type", "pm25"}


async def test_json_ld_in_and_out_with_user_context(client: httpx.AsyncClient) -> None:
    entity = {
        "@context": [{"pm": "https://smartdatamodels.org/dataModel.Environment/pm25", "Air": "https://example.org/Air"},
                     "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"],
        "id": "urn:ngsi-ld:Air:1", "type": "Air", "pm": {"type": "Property", "value": 7},
    }
    r = await client.post(E, json=entity, headers=LD)
    assert r.status_code == 201, r.text
    # Without the context, names come back expanded.
    plain = (await client.get(f"{E}/urn:ngsi-ld:Air:1")).json()
    assert plain["type"] == "https://example.org/Air"
    assert plain["https://smartdatamodels.org/dataModel.Environment/pm25"]["value"] == 7
    # With it, as JSON-LD, they are compacted and the @context is in the body.
    r = await client.post("/ngsi-ld/v1/entityOperations/query", headers=LD | {"Accept": "application/ld+json"},
                          json={"type": "Query", "entities": [{"type": "Air"}], "@context": entity["@context"]})
    assert r.status_code == 200, r.text
    [found] = r.json()
    assert found["pm"]["value"] == 7 and found["type"] == "Air" and "@context" in found


async def test_ld_json_without_context_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(E, json=air(4), headers=LD)
    assert r.status_code == 400
    assert (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000004")).status_code == 404


async def test_json_with_context_in_body_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(E, json={**air(5), "@context": "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"},
                          headers=JSON)
    assert r.status_code == 400


async def test_replace_merge_delete(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(6, 10), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000006"
    r = await client.put(url, json={"type": "AirQualityObserved", "no2": {"type": "Property", "value": 40}},
                         headers=JSON)
    assert r.status_code == 204, r.text
    body = (await client.get(url)).json()
    assert "pm25" not in body and body["no2"]["value"] == 40
    r = await client.patch(url, json={"no2": {"type": "Property", "value": 41}, "o3": 5}, headers=JSON)
    assert r.status_code == 204, r.text
    body = (await client.get(url, params={"options": "keyValues"})).json()
    assert body["no2"] == 41 and body["o3"] == 5
    r = await client.patch(url, json={"o3": "urn:ngsi-ld:null"}, headers=JSON)
    assert r.status_code == 204
    assert "o3" not in (await client.get(url)).json()
    assert (await client.delete(url)).status_code == 204
    assert (await client.get(url)).status_code == 404
    assert (await client.delete(url)).status_code == 404


async def test_append_with_no_overwrite_reports_207(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(7, 10), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000007/attrs"
    r = await client.post(url, params={"options": "noOverwrite"},
                          json={"pm25": {"type": "Property", "value": 99}, "pm10": {"type": "Property", "value": 20}},
                          headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["updated"] == ["pm10"]
    assert r.json()["notUpdated"][0]["attributeName"] == "pm25"
    kv = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000007", params={"options": "keyValues"})).json()
    assert kv["pm25"] == 10 and kv["pm10"] == 20
    r = await client.post(url, json={"pm25": {"type": "Property", "value": 11}}, headers=JSON)
    assert r.status_code == 204


async def test_update_attrs_updates_and_appends(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(8, 10), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000008/attrs"
    # v1.9.1 §5.6.2: the missing attribute is appended (tests/hub/test_conformance_update_attrs.py).
    r = await client.patch(url, json={"pm25": {"type": "Property", "value": 12},
                                      "nope": {"type": "Property", "value": 1}}, headers=JSON)
    assert r.status_code == 204, r.text
    r = await client.patch(url, json={"pm25": {"type": "Property", "value": 13}}, headers=JSON)
    assert r.status_code == 204
    kv = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000008", params={"options": "keyValues"})).json()
    assert kv["pm25"] == 13 and kv["nope"] == 1


async def test_partial_attribute_update_keeps_metadata(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(9, 10), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000009"
    r = await client.patch(f"{url}/attrs/pm25", json={"value": 15}, headers=JSON)
    assert r.status_code == 204, r.text
    pm = (await client.get(url)).json()["pm25"]
    assert pm["value"] == 15 and pm["unitCode"] == "GQ"
    assert (await client.patch(f"{url}/attrs/missing", json={"value": 1}, headers=JSON)).status_code == 404


async def test_multi_attributes_with_dataset_id(client: httpx.AsyncClient) -> None:
    entity = air(10)
    entity["temperature"] = [
        {"type": "Property", "value": 20},
        {"type": "Property", "value": 21, "datasetId": "urn:ngsi-ld:dataset:roof"},
    ]
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000010"
    temps = (await client.get(url)).json()["temperature"]
    assert [t.get("datasetId") for t in temps] == [None, "urn:ngsi-ld:dataset:roof"]
    r = await client.delete(f"{url}/attrs/temperature", params={"datasetId": "urn:ngsi-ld:dataset:roof"})
    assert r.status_code == 204
    assert (await client.get(url)).json()["temperature"]["value"] == 20
    r = await client.delete(f"{url}/attrs/temperature", params={"datasetId": "urn:ngsi-ld:dataset:nope"})
    assert r.status_code == 404
    assert (await client.delete(f"{url}/attrs/temperature", params={"deleteAll": "true"})).status_code == 204
    assert "temperature" not in (await client.get(url)).json()


async def test_relationship_language_and_sub_properties(client: httpx.AsyncClient) -> None:
    entity = {
        "id": "urn:ngsi-ld:ParkingSpot:1", "type": "ParkingSpot",
        "refParkingSite": {"type": "Relationship", "object": "urn:ngsi-ld:ParkingSite:1"},
        "name": {"type": "LanguageProperty", "languageMap": {"en": "North gate", "zh": "北门"}},
        "status": {"type": "Property", "value": "free",
                   "reliability": {"type": "Property", "value": 0.9}},
    }
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    url = f"{E}/urn:ngsi-ld:ParkingSpot:1"
    body = (await client.get(url)).json()
    assert body["refParkingSite"] == {"type": "Relationship", "object": "urn:ngsi-ld:ParkingSite:1"}
    assert body["status"]["reliability"]["value"] == 0.9
    assert body["name"]["languageMap"]["zh"] == "北门"
    zh = (await client.get(url, params={"lang": "zh", "options": "keyValues"})).json()
    assert zh["name"] == "北门"
    kv = (await client.get(url, params={"options": "keyValues"})).json()
    assert kv["refParkingSite"] == "urn:ngsi-ld:ParkingSite:1"


async def test_geojson_representation(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(11), headers=JSON)
    r = await client.get(E, params={"type": "AirQualityObserved"}, headers={"Accept": "application/geo+json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/geo+json")
    fc = r.json()
    assert fc["type"] == "FeatureCollection"
    assert fc["features"][0]["geometry"] == {"type": "Point", "coordinates": [116.4, 39.9]}


async def test_user_context_via_link_header_round_trip(client: httpx.AsyncClient) -> None:
    # An inline context posted to the broker is hosted there and usable in Link headers.
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"level": "https://example.org/waterLevel"}},
                          headers=JSON)
    assert r.status_code == 201
    url = r.headers["Location"]
    body = {"id": "urn:ngsi-ld:River:1", "type": "River", "level": {"type": "Property", "value": 3.2}}
    assert (await client.post(E, json=body, headers=JSON | link(url))).status_code == 201
    raw = (await client.get(f"{E}/urn:ngsi-ld:River:1")).json()
    assert "https://example.org/waterLevel" in raw
    compacted = (await client.get(f"{E}/urn:ngsi-ld:River:1", headers=link(url))).json()
    assert compacted["level"]["value"] == 3.2
    listed = (await client.get("/ngsi-ld/v1/jsonldContexts")).json()
    assert url in listed


async def test_multi_typed_entity_is_found_by_each_type(client: httpx.AsyncClient) -> None:
    body = {"id": "urn:ngsi-ld:Pole:1", "type": ["Streetlight", "CameraPole"], "height": 9}
    assert (await client.post(E, json=body, headers=JSON)).status_code == 201
    for etype in ("Streetlight", "CameraPole", "Streetlight,Other"):
        found = (await client.get(E, params={"type": etype})).json()
        assert [e["id"] for e in found] == ["urn:ngsi-ld:Pole:1"], etype
    assert sorted((await client.get(f"{E}/urn:ngsi-ld:Pole:1")).json()["type"]) == ["CameraPole", "Streetlight"]
    types = (await client.get("/ngsi-ld/v1/types")).json()["typeList"]
    assert {"CameraPole", "Streetlight"} <= set(types)


async def test_merge_patch_content_type(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(12, 10), headers=JSON)
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:000012", json={"pm25": 11},
                           headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 204
    kv = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000012", params={"options": "keyValues"})).json()
    assert kv["pm25"] == 11
