"""Path spelling (ETSI conformance): a trailing slash names the same NGSI-LD resource; a missing
entity id where one is needed is BadRequestData (ETSI GS CIM 009 v1.8.1 §5.6.17, §5.6.18)."""

from __future__ import annotations

import httpx

from hub.helpers import JSON, air

V1 = "/ngsi-ld/v1"
AIR1 = "urn:ngsi-ld:AirQualityObserved:000001"


async def test_trailing_slash_on_collections_and_items(client: httpx.AsyncClient) -> None:
    r = await client.post(f"{V1}/entities/", json=air(1), headers=JSON)
    assert r.status_code == 201, r.text  # answered in place: no redirect that some clients replay without the body
    r = await client.get(f"{V1}/entities/", params={"type": "AirQualityObserved"})
    assert r.status_code == 200 and [e["id"] for e in r.json()] == [AIR1]
    assert (await client.get(f"{V1}/entities/{AIR1}/")).json()["id"] == AIR1
    r = await client.patch(f"{V1}/entities/{AIR1}/attrs/", json={"pm25": {"type": "Property", "value": 3}},
                           headers=JSON)
    assert r.status_code == 204, r.text
    assert (await client.get(f"{V1}/temporal/entities/{AIR1}/")).status_code == 200
    assert (await client.get(f"{V1}/subscriptions/")).status_code == 200
    assert (await client.get(f"{V1}/types/")).status_code == 200
    assert (await client.delete(f"{V1}/entities/{AIR1}/")).status_code == 204
    assert (await client.get(f"{V1}/entities/{AIR1}")).status_code == 404


async def test_put_or_patch_without_entity_id_is_bad_request(client: httpx.AsyncClient) -> None:
    for method in ("PUT", "PATCH"):
        r = await client.request(method, f"{V1}/entities/", json={"type": "X"}, headers=JSON)
        assert r.status_code == 400, (method, r.text)
        problem = r.json()
        assert problem["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
        assert problem["status"] == 400 and problem["title"]


async def test_missing_ids_on_other_collections_are_method_not_allowed(client: httpx.AsyncClient) -> None:
    # The collection exists but does not offer the method (the suite's 029_01, 032_01, 009_02, 013_02).
    assert (await client.delete(f"{V1}/subscriptions/")).status_code == 405
    assert (await client.delete(f"{V1}/temporal/entities/")).status_code == 405
    r = await client.delete(f"{V1}/entities/{AIR1}/attrs/")
    assert r.status_code == 405
    assert r.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")



async def test_unknown_path_is_problem_details(client: httpx.AsyncClient) -> None:
    for method in ("GET", "POST", "DELETE"):
        r = await client.request(method, f"{V1}/nowhere/at/all")
        assert r.status_code == 404, (method, r.text)
        body = r.json()
        assert body.pop("requestId") == r.headers["x-request-id"]  # the answer names its request
        assert body == {"type": "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound",
                        "title": "Resource not found", "status": 404,
                        "detail": f"no NGSI-LD resource at {V1}/nowhere/at/all"}


async def test_known_path_with_other_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    r = await client.put(f"{V1}/subscriptions", json={}, headers=JSON)
    assert r.status_code == 405
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert r.json()["status"] == 405 and r.json()["type"].startswith("https://uri.etsi.org/ngsi-ld/errors/")


async def test_empty_segment_in_path_is_bad_request(client: httpx.AsyncClient) -> None:
    for method, path in (("POST", "/entities//attrs"), ("PATCH", "/entities//attrs/speed"),
                         ("DELETE", "/entities//attrs/speed"), ("DELETE", "/temporal/entities//attrs/speed")):
        r = await client.request(method, V1 + path, json={"speed": 1}, headers=JSON)
        assert r.status_code == 400, (method, path, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


async def test_unknown_query_parameter_is_invalid_request(client: httpx.AsyncClient) -> None:
    # §6.3.20: checked before the body, so even a create with a bad body answers InvalidRequest.
    cases = (("GET", f"{V1}/entities?invalidParams=x&type=Building"), ("POST", f"{V1}/entities?invalidParams=x"),
             ("GET", f"{V1}/temporal/entities?invalidParams=x&type=Building"), ("GET", f"{V1}/types?bogus=1"),
             ("GET", f"{V1}/subscriptions?invalidParams=x"), ("DELETE", f"{V1}/entities?invalidParams=x"),
             ("GET", f"{V1}/entities/{AIR1}?bogus=1"))
    for method, url in cases:
        r = await client.request(method, url, content=b'"not an entity"', headers=JSON)
        assert r.status_code == 400, (method, url, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest", (method, url)
    assert (await client.post(f"{V1}/entities", json=air(1), headers=JSON)).status_code == 201


async def test_defined_parameters_pass(client: httpx.AsyncClient) -> None:
    await client.post(f"{V1}/entities", json=air(1), headers=JSON)
    r = await client.get(f"{V1}/entities", params={"type": "AirQualityObserved", "limit": "5", "offset": "0",
                                                   "count": "true", "options": "keyValues", "pick": "id"})
    assert r.status_code == 200, r.text
    r = await client.get(f"{V1}/temporal/entities/{AIR1}", params={"timerel": "after", "timeAt": "2020-01-01T00:00:00Z",
                                                                   "lastN": "2"})
    assert r.status_code == 200, r.text
