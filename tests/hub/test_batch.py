"""Batch operations (ETSI GS CIM 009 §5.6.7-5.6.10)."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, air

B = "/ngsi-ld/v1/entityOperations"
E = "/ngsi-ld/v1/entities"


async def count(client: httpx.AsyncClient, etype: str = "AirQualityObserved") -> int:
    r = await client.get(E, params={"type": etype, "count": "true", "limit": "0"})
    return int(r.headers["NGSILD-Results-Count"])


async def test_create_more_than_a_thousand(client: httpx.AsyncClient) -> None:
    r = await client.post(f"{B}/create", json=[air(i) for i in range(2500)], headers=JSON)
    assert r.status_code == 201, r.text[:300]
    assert len(r.json()) == 2500
    assert await count(client) == 2500


async def test_create_partial_failure_is_207(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    bad = {"id": "not a uri", "type": "AirQualityObserved"}
    r = await client.post(f"{B}/create", json=[air(1), air(2), bad], headers=JSON)
    assert r.status_code == 207
    body = r.json()
    assert body["success"] == ["urn:ngsi-ld:AirQualityObserved:000002"]
    assert {e["entityId"] for e in body["errors"]} == {"urn:ngsi-ld:AirQualityObserved:000001", "not a uri"}
    assert await count(client) == 2


async def test_upsert_replace_and_update(client: httpx.AsyncClient) -> None:
    await client.post(f"{B}/create", json=[air(1, 5)], headers=JSON)
    r = await client.post(f"{B}/upsert", json=[air(1, 6), air(2, 7)], headers=JSON)
    assert r.status_code == 201
    assert r.json() == ["urn:ngsi-ld:AirQualityObserved:000002"]
    r = await client.post(f"{B}/upsert", json=[{"id": "urn:ngsi-ld:AirQualityObserved:000001",
                                                "type": "AirQualityObserved", "no2": 3}], headers=JSON)
    assert r.status_code == 204
    one = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001", params={"options": "keyValues"})).json()
    assert "pm25" not in one and one["no2"] == 3  # replace is the default
    r = await client.post(f"{B}/upsert", params={"options": "update"},
                          json=[{"id": "urn:ngsi-ld:AirQualityObserved:000001", "type": "AirQualityObserved",
                                 "o3": 4}], headers=JSON)
    assert r.status_code == 204
    one = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001", params={"options": "keyValues"})).json()
    assert one["no2"] == 3 and one["o3"] == 4


async def test_update_unknown_entity_is_207(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1, 5), headers=JSON)
    r = await client.post(f"{B}/update", json=[{"id": "urn:ngsi-ld:AirQualityObserved:000001", "pm25": 8},
                                               {"id": "urn:ngsi-ld:AirQualityObserved:999999", "pm25": 9}],
                          headers=JSON)
    assert r.status_code == 207
    assert r.json()["errors"][0]["error"]["type"].endswith("ResourceNotFound")
    one = (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001", params={"options": "keyValues"})).json()
    assert one["pm25"] == 8


async def test_delete_batch(client: httpx.AsyncClient) -> None:
    await client.post(f"{B}/create", json=[air(i) for i in range(5)], headers=JSON)
    r = await client.post(f"{B}/delete", json=[air(i)["id"] for i in range(3)], headers=JSON)
    assert r.status_code == 204
    r = await client.post(f"{B}/delete", json=[air(3)["id"], "urn:ngsi-ld:X:nope"], headers=JSON)
    assert r.status_code == 207
    assert await count(client) == 1


async def test_batch_query(client: httpx.AsyncClient) -> None:
    await client.post(f"{B}/create", json=[air(i, float(i)) for i in range(10)], headers=JSON)
    r = await client.post(f"{B}/query", json={"type": "Query", "entities": [{"type": "AirQualityObserved"}],
                                              "q": "pm25>6"}, headers=JSON)
    assert r.status_code == 200, r.text
    assert len(r.json()) == 3
