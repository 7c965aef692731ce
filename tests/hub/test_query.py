"""GET /entities: filters, q, geo, paging (ETSI GS CIM 009 §5.7.2, §4.9, §4.10)."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, air

E = "/ngsi-ld/v1/entities"
BATCH = "/ngsi-ld/v1/entityOperations"


async def seed(client: httpx.AsyncClient, n: int = 30) -> None:
    entities = [air(i, pm25=float(i), lon=116.40 + i * 0.001, lat=39.90) for i in range(n)]
    entities.append({"id": "urn:ngsi-ld:NoiseLevelObserved:1", "type": "NoiseLevelObserved",
                     "LAeq": {"type": "Property", "value": 65.0},
                     "address": {"type": "Property", "value": {"city": "Haikou", "district": "Meilan"}},
                     "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [110.3, 20.0]}}})
    r = await client.post(f"{BATCH}/create", json=entities, headers=JSON)
    assert r.status_code == 201, r.text


async def ids(client: httpx.AsyncClient, **params: str) -> list[str]:
    r = await client.get(E, params={"limit": "1000", **params})
    assert r.status_code == 200, r.text
    return [e["id"] for e in r.json()]


async def test_type_and_type_lists(client: httpx.AsyncClient) -> None:
    await seed(client)
    assert len(await ids(client, type="AirQualityObserved")) == 30
    assert len(await ids(client, type="AirQualityObserved,NoiseLevelObserved")) == 31
    assert await ids(client, type="Nothing") == []


async def test_id_and_id_pattern(client: httpx.AsyncClient) -> None:
    await seed(client)
    # Ids alone do not make a query (§5.7.2.4): local=true asks for the local entities.
    both = "urn:ngsi-ld:AirQualityObserved:000003,urn:ngsi-ld:NoiseLevelObserved:1"
    assert await ids(client, local="true", id=both) == [
        "urn:ngsi-ld:AirQualityObserved:000003", "urn:ngsi-ld:NoiseLevelObserved:1"]
    assert len(await ids(client, local="true", idPattern="^urn:ngsi-ld:AirQualityObserved:00001.$")) == 10


async def test_attrs_filter_requires_attribute(client: httpx.AsyncClient) -> None:
    await seed(client)
    assert await ids(client, attrs="LAeq") == ["urn:ngsi-ld:NoiseLevelObserved:1"]


async def test_q_comparisons_ranges_lists_and_logic(client: httpx.AsyncClient) -> None:
    await seed(client)
    assert len(await ids(client, type="AirQualityObserved", q="pm25>25")) == 4
    assert len(await ids(client, type="AirQualityObserved", q="pm25==10..14")) == 5
    assert len(await ids(client, type="AirQualityObserved", q="pm25==1,2,3")) == 3
    assert len(await ids(client, type="AirQualityObserved", q="pm25<2|pm25>=28")) == 4
    assert len(await ids(client, type="AirQualityObserved", q="(pm25<2|pm25>=28);pm25!=29")) == 3
    assert await ids(client, q='address[city]=="Haikou"') == ["urn:ngsi-ld:NoiseLevelObserved:1"]
    assert await ids(client, q="address[city]~=Hai.*") == ["urn:ngsi-ld:NoiseLevelObserved:1"]
    assert len(await ids(client, type="AirQualityObserved", q="pm25.unitCode==\"GQ\"")) == 30
    assert await ids(client, q="LAeq") == ["urn:ngsi-ld:NoiseLevelObserved:1"]


async def test_geo_near_and_within(client: httpx.AsyncClient) -> None:
    await seed(client)
    # Entities are 0.001° (~85 m) apart along a parallel from 116.40E.
    near = await ids(client, type="AirQualityObserved", georel="near;maxDistance==200", geometry="Point",
                     coordinates="[116.40, 39.90]")
    assert near == [f"urn:ngsi-ld:AirQualityObserved:{i:06d}" for i in range(3)]
    box = "[[[116.4045,39.89],[116.4105,39.89],[116.4105,39.91],[116.4045,39.91],[116.4045,39.89]]]"
    within = await ids(client, georel="within", geometry="Polygon", coordinates=box)
    assert within == [f"urn:ngsi-ld:AirQualityObserved:{i:06d}" for i in range(5, 11)]


async def test_paging_count_and_links(client: httpx.AsyncClient) -> None:
    await seed(client)
    r = await client.get(E, params={"type": "AirQualityObserved", "limit": "7", "count": "true"})
    assert r.headers["NGSILD-Results-Count"] == "30"
    seen = [e["id"] for e in r.json()]
    while 'rel="next"' in r.headers.get("Link", ""):
        next_link = next(p for p in r.headers["Link"].split(", <") if 'rel="next"' in p)
        url = next_link[next_link.index("/ngsi-ld"):next_link.index(">")]
        r = await client.get(url)
        assert r.status_code == 200
        seen += [e["id"] for e in r.json()]
    assert seen == sorted(seen) and len(seen) == 30 and len(set(seen)) == 30
    r = await client.get(E, params={"type": "AirQualityObserved", "limit": "5", "offset": "25"})
    assert [e["id"] for e in r.json()] == seen[25:]
    assert 'rel="prev"' in r.headers["Link"]
    r = await client.get(E, params={"type": "AirQualityObserved", "limit": "0", "count": "true"})
    assert r.json() == [] and r.headers["NGSILD-Results-Count"] == "30"


async def test_limit_over_maximum_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get(E, params={"type": "AirQualityObserved", "limit": "100000"})
    assert r.status_code == 400
    assert r.json()["type"].endswith("BadRequestData")


async def test_geo_index_follows_location_updates_only_when_they_change(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1, lon=116.40, lat=39.90), headers=JSON)
    url = f"{E}/urn:ngsi-ld:AirQualityObserved:000001/attrs"
    near_new = {"georel": "near;maxDistance==100", "geometry": "Point", "coordinates": "[121.47, 31.23]"}
    assert await ids(client, **near_new) == []
    # A value-only update leaves the geometry where it was.
    assert (await client.patch(url, json={"pm25": {"type": "Property", "value": 50}}, headers=JSON)).status_code == 204
    assert await ids(client, georel="near;maxDistance==100", geometry="Point", coordinates="[116.40, 39.90]") == [
        "urn:ngsi-ld:AirQualityObserved:000001"]
    moved = {"location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [121.47, 31.23]}}}
    assert (await client.patch(url, json=moved, headers=JSON)).status_code == 204
    assert await ids(client, **near_new) == ["urn:ngsi-ld:AirQualityObserved:000001"]
    r = await client.post(f"{BATCH}/upsert", json=[air(1, lon=110.0, lat=20.0)], headers=JSON)
    assert r.status_code == 204
    assert await ids(client, **near_new) == []
    assert await ids(client, georel="near;maxDistance==100", geometry="Point", coordinates="[110.0, 20.0]") == [
        "urn:ngsi-ld:AirQualityObserved:000001"]
