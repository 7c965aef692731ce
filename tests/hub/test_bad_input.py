"""Hostile and malformed input: a clear 4xx with ProblemDetails, no crash, data untouched."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON, air

E = "/ngsi-ld/v1/entities"
B = "/ngsi-ld/v1/entityOperations"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"


async def snapshot(client: httpx.AsyncClient) -> list[dict]:
    r = await client.get(E, params={"type": "AirQualityObserved", "limit": "1000", "options": "sysAttrs"})
    return r.json()


def problem(r: httpx.Response, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == ERR + kind, body
    assert body["title"] and body["detail"]


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    await client.post(E, json=air(1), headers=JSON)
    before = await snapshot(client)
    r = await client.post(E, content=b'{"id": "urn:x:1", "type": ', headers=JSON)
    problem(r, 400, "InvalidRequest")
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:000001/attrs", content=b"[1,2", headers=JSON)
    problem(r, 400, "InvalidRequest")
    assert await snapshot(client) == before


@pytest.mark.parametrize("entity", [
    {"id": "no uri here", "type": "T"},
    {"id": "urn:x:1"},
    {"id": "urn:x:1", "type": ""},
    {"id": "urn:x:1", "type": "T", "temp": {"type": "Property"}},
    {"id": "urn:x:1", "type": "T", "temp": {"type": "Relationship", "object": "not a uri"}},
    {"id": "urn:x:1", "type": "T", "temp": {"type": "Weird", "value": 1}},
    {"id": "urn:x:1", "type": "T", "temp": {"type": "Property", "value": 1, "observedAt": "yesterday"}},
    {"id": "urn:x:1", "type": "T",
     "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [500, 1]}}},
    {"id": "urn:x:1", "type": "T",
     "location": {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}}},
    {"id": "urn:x:1", "type": "T", "bad name": 1},
    {"id": "urn:x:1", "type": "T", "temp": None},
    {"id": "urn:x:1", "type": "type"},
])
async def test_wrong_shapes_are_400(client: httpx.AsyncClient, entity: object) -> None:
    r = await client.post(E, json=entity, headers=JSON)
    problem(r, 400, "BadRequestData")
    assert (await client.get(E, params={"type": "T"})).json() == []


@pytest.mark.parametrize("body", [[1, 2, 3], [], "just a string", 5])
async def test_a_body_that_is_no_entity_is_invalid_request(client: httpx.AsyncClient, body: object) -> None:
    r = await client.post(E, json=body, headers=JSON)
    problem(r, 400, "InvalidRequest")
    assert (await client.get(E, params={"type": "T"})).json() == []


async def test_unsupported_media_type_and_accept(client: httpx.AsyncClient) -> None:
    r = await client.post(E, content=b"id=1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.get(E, params={"type": "T"}, headers={"Accept": "text/csv"})
    assert r.status_code == 406


async def test_oversize_body_is_413_and_nothing_written(client: httpx.AsyncClient) -> None:
    huge = [air(i, description={"type": "Property", "value": "x" * 2000}) for i in range(2000)]
    r = await client.post(f"{B}/create", json=huge, headers=JSON)
    assert r.status_code == 413
    assert r.json()["detail"]
    assert await snapshot(client) == []


@pytest.mark.parametrize("q", [
    "pm25==1;DROP TABLE hub_entities",
    "pm25=='1' OR '1'='1'",
    'pm25=="x\\" OR 1=1 --"',
    "(" * 200 + "pm25>1" + ")" * 200,
    "pm25==1.." + "9" * 400,
    "pm25>",
    "",
    ";;;",
    "pm25~=(",
    "a" * 5000,
])
async def test_hostile_q_is_4xx_and_harmless(client: httpx.AsyncClient, q: str) -> None:
    await client.post(E, json=air(1), headers=JSON)
    before = await snapshot(client)
    r = await client.get(E, params={"type": "AirQualityObserved", "q": q})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["type"] == ERR + "BadRequestData"
    assert await snapshot(client) == before


@pytest.mark.parametrize("params", [
    {"georel": "near;maxDistance==abc", "geometry": "Point", "coordinates": "[1,2]"},
    {"georel": "near;maxDistance==10", "geometry": "Point", "coordinates": "[1,2"},
    {"georel": "within", "geometry": "Polygon", "coordinates": "[[[0,0],[1,0],[1,1]]]"},
    {"georel": "within", "geometry": "Point"},
    {"georel": "sideways", "geometry": "Point", "coordinates": "[1,2]"},
    {"georel": "near;maxDistance==10", "geometry": "Point", "coordinates": "[1,2]", "geoproperty": "x'); DROP--"},
    {"limit": "-1"}, {"limit": "abc"}, {"offset": "1e9"}, {"count": "maybe"},  # options=fancy: InvalidRequest
    {"idPattern": "(unclosed"}, {"id": "not a uri"}, {"type": "bad type"},
])
async def test_bad_query_parameters_are_400(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await client.get(E, params={"type": "AirQualityObserved", **params})
    problem(r, 400, "BadRequestData")


async def test_unknown_ids_are_404(client: httpx.AsyncClient) -> None:
    problem(await client.get(f"{E}/urn:ngsi-ld:Nothing:1"), 404, "ResourceNotFound")
    problem(await client.patch(f"{E}/urn:ngsi-ld:Nothing:1/attrs", json={"a": 1}, headers=JSON), 404,
            "ResourceNotFound")
    problem(await client.delete(f"{E}/urn:ngsi-ld:Nothing:1/attrs/a"), 404, "ResourceNotFound")
    problem(await client.get(f"{E}/not-a-uri"), 400, "BadRequestData")


async def test_unknown_route_and_method_are_problem_details(client: httpx.AsyncClient) -> None:
    r = await client.get("/ngsi-ld/v1/nothing-here")
    assert r.status_code == 404 and r.json()["type"].startswith(ERR)
    r = await client.put("/ngsi-ld/v1/entities")
    assert r.status_code == 405 and r.json()["type"].startswith(ERR)


async def test_deeply_nested_value_is_400(client: httpx.AsyncClient) -> None:
    value: object = 1
    for _ in range(100):
        value = {"a": value}
    r = await client.post(E, json={"id": "urn:x:deep", "type": "T", "v": {"type": "Property", "value": value}},
                          headers=JSON)
    problem(r, 400, "BadRequestData")


async def test_duplicate_create_in_one_batch(client: httpx.AsyncClient) -> None:
    r = await client.post(f"{B}/create", json=[air(1), air(1)], headers=JSON)
    assert r.status_code == 207
    assert len(await snapshot(client)) == 1


async def test_catastrophic_id_pattern_is_answered_quickly(client: httpx.AsyncClient) -> None:
    # (a+)+$ backtracks exponentially in Python's re; the broker must neither hang nor error.
    await client.post(E, json={"id": "urn:x:" + "a" * 60 + "!", "type": "T"}, headers=JSON)
    r = await client.get(E, params={"type": "T", "idPattern": "^urn:x:(a+)+$"})
    assert r.status_code == 200
    assert r.json() == []


async def test_nul_characters_are_refused_everywhere(client: httpx.AsyncClient) -> None:
    # PostgreSQL cannot store NUL in text or jsonb: it must be a 400, never a database error.
    r = await client.post(E, content=b'{"id": "urn:x:nul", "type": "T", "name": "a\\u0000b"}', headers=JSON)
    problem(r, 400, "BadRequestData")
    assert (await client.get(f"{E}/urn:x:nul")).status_code == 404
    r = await client.get(E, params={"type": "T", "q": "name==\"a\x00b\""})
    problem(r, 400, "BadRequestData")
    r = await client.get("/api/iot/devices", params={"department": "\x00x"})
    assert r.status_code == 400
    assert r.json()["type"].endswith("BadRequestData")


async def test_a_body_without_content_type_is_examined(client: httpx.AsyncClient) -> None:
    """RFC 9110 §8.3: without a Content-Type the recipient may examine the data. A body that is not
    JSON is then invalid JSON (§6.3.4: 400 InvalidRequest); JSON whose reading (JSON or JSON-LD) is
    not declared stays 415, as does an empty one."""
    r = await client.post(E, content=b'{"id": "urn:ngsi-ld:T:nc", "type": ')
    problem(r, 400, "InvalidRequest")
    r = await client.post(E, content=b'{"id": "urn:ngsi-ld:T:nc", "type": "T"}')
    assert r.status_code == 415
    r = await client.patch(f"{E}/urn:ngsi-ld:T:nc/attrs", content=b"")
    assert r.status_code == 415
    assert (await client.get(f"{E}/urn:ngsi-ld:T:nc")).status_code == 404
    sub = {"type": "Subscription", "entities": [{"type": "Building"}],
           "notification": {"endpoint": {"uri": "http://127.0.0.1:9/n"}}}
    r = await client.post("/ngsi-ld/v1/csourceSubscriptions", json=sub, headers=JSON)
    assert r.status_code == 201, r.text
    r = await client.patch(r.headers["Location"], content=b'{"q": "a==1", ')
    problem(r, 400, "InvalidRequest")
