"""Distributed writes (ETSI GS CIM 009 v1.8.1 §4.3.6, §5.6) between real CityOS brokers on loopback.

The city is the test's app; each district is a `cityos serve` process with a database of its own.
A write reaches the registered district by the registration's mode: inclusive (here and there),
exclusive (the registered attributes there only), redirect (there; here only if held here too),
auxiliary (never). A district that fails makes the answer 207 naming the registration.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_tokens import Auth, server_headers
from hub.helpers import JSON
from hub.test_csource_federation import Broker, broker_pool, building
from own_services import free_port

R = "/ngsi-ld/v1/csourceRegistrations"
E = "/ngsi-ld/v1/entities"
WRITE_OPS = ["createEntity", "updateAttrs", "appendAttrs", "deleteAttrs", "deleteEntity", "replaceAttrs",
             "mergeEntity", "replaceEntity", "retrieveEntity", "queryEntity"]


def reg(n: str, endpoint: str, mode: str, info: dict[str, Any] | None = None, auth: bool = True,
        operations: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{n}", "type": "ContextSourceRegistration",
        "information": [info or {"entities": [{"type": "Building"}]}], "endpoint": endpoint, "mode": mode,
        "operations": operations or WRITE_OPS}
    if auth:
        body["contextSourceInfo"] = [{"key": "Authorization", "value": server_headers()["Authorization"]}]
    return body


@pytest.fixture
async def brokers(database_url: str, tmp_path: Path,
                  broker_template: str) -> AsyncIterator[Callable[[int], Any]]:
    async with broker_pool(database_url, tmp_path, broker_template) as start:
        yield start


async def held(broker: Broker, entity_id: str) -> dict[str, Any] | None:
    async with broker.client() as d:
        r = await d.get(f"{E}/{entity_id}", params={"options": "keyValues", "local": "true"})
    assert r.status_code in (200, 404), r.text
    return r.json() if r.status_code == 200 else None


async def local(client: httpx.AsyncClient, entity_id: str) -> dict[str, Any] | None:
    r = await client.get(f"{E}/{entity_id}", params={"options": "keyValues", "local": "true"})
    assert r.status_code in (200, 404), r.text
    return r.json() if r.status_code == 200 else None


async def test_redirect_writes_go_to_the_district_only(client: httpx.AsyncClient, brokers: Any) -> None:
    (district,) = await brokers(1)
    assert (await client.post(R, json=reg("r", district.url, "redirect"), headers=JSON)).status_code == 201
    b = "urn:ngsi-ld:Building:r1"
    r = await client.post(E, json=building("r1", height=30), headers=JSON)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"{E}/{b}"
    assert await held(district, b) == {"id": b, "type": "Building", "height": 30}
    assert await local(client, b) is None  # the city holds no data of a redirected entity
    # Update, append, replace and delete one attribute, through the city.
    r = await client.patch(f"{E}/{b}/attrs", json={"height": {"type": "Property", "value": 31}}, headers=JSON)
    assert r.status_code == 204, r.text
    r = await client.post(f"{E}/{b}/attrs", json={"name": {"type": "Property", "value": "区档案馆"}}, headers=JSON)
    assert r.status_code == 204, r.text
    r = await client.put(f"{E}/{b}/attrs/height", json={"type": "Property", "value": 40}, headers=JSON)
    assert r.status_code == 204, r.text
    assert await held(district, b) == {"id": b, "type": "Building", "height": 40, "name": "区档案馆"}
    assert (await client.delete(f"{E}/{b}/attrs/name")).status_code == 204
    assert await held(district, b) == {"id": b, "type": "Building", "height": 40}
    # The retrieval through the city finds it there (the distributed read).
    assert (await client.get(f"{E}/{b}", params={"options": "keyValues"})).json()["height"] == 40
    assert (await client.delete(f"{E}/{b}")).status_code == 204
    assert await held(district, b) is None
    # Nobody holds it any more: 404, as for a local entity.
    r = await client.patch(f"{E}/{b}/attrs", json={"height": {"type": "Property", "value": 1}}, headers=JSON)
    assert r.status_code == 404, r.text
    assert (await client.delete(f"{E}/{b}")).status_code == 404
    # Another type is not redirected.
    r = await client.post(E, json={"id": "urn:ngsi-ld:Park:p", "type": "Park"}, headers=JSON)
    assert r.status_code == 201
    assert await local(client, "urn:ngsi-ld:Park:p") is not None
    assert await held(district, "urn:ngsi-ld:Park:p") is None


async def test_exclusive_attributes_live_at_the_source(client: httpx.AsyncClient, brokers: Any) -> None:
    (district,) = await brokers(1)
    info = {"entities": [{"type": "Building"}], "propertyNames": ["height"]}
    assert (await client.post(R, json=reg("x", district.url, "exclusive", info), headers=JSON)).status_code == 201
    b = "urn:ngsi-ld:Building:x1"
    r = await client.post(E, json=building("x1", height=30, name="市图书馆"), headers=JSON)
    assert r.status_code == 201, r.text
    assert await local(client, b) == {"id": b, "type": "Building", "name": "市图书馆"}
    assert await held(district, b) == {"id": b, "type": "Building", "height": 30}
    both = {"height": {"type": "Property", "value": 33}, "name": {"type": "Property", "value": "新馆"}}
    r = await client.patch(f"{E}/{b}/attrs", json=both, headers=JSON)
    assert r.status_code == 204, r.text
    assert await local(client, b) == {"id": b, "type": "Building", "name": "新馆"}
    assert await held(district, b) == {"id": b, "type": "Building", "height": 33}
    # A single registered attribute: there only; another attribute: here only.
    r = await client.patch(f"{E}/{b}/attrs/height", json={"value": 34}, headers=JSON)
    assert r.status_code == 204, r.text
    assert (await held(district, b) or {})["height"] == 34
    r = await client.patch(f"{E}/{b}/attrs/name", json={"value": "旧馆"}, headers=JSON)
    assert r.status_code == 204, r.text
    assert await local(client, b) == {"id": b, "type": "Building", "name": "旧馆"}
    assert "name" not in (await held(district, b) or {})
    # The merged read has both.
    merged = (await client.get(f"{E}/{b}", params={"options": "keyValues"})).json()
    assert merged == {"id": b, "type": "Building", "name": "旧馆", "height": 34}
    # A Building without the registered attribute is not sent to the source at all.
    assert (await client.post(E, json=building("x2", name="小馆"), headers=JSON)).status_code == 201
    assert await held(district, "urn:ngsi-ld:Building:x2") is None
    assert await local(client, "urn:ngsi-ld:Building:x2") == {"id": "urn:ngsi-ld:Building:x2", "type": "Building",
                                                               "name": "小馆"}
    # Deleting the entity deletes both parts.
    assert (await client.delete(f"{E}/{b}")).status_code == 204
    assert await held(district, b) is None and await local(client, b) is None


async def test_inclusive_writes_both_and_auxiliary_or_read_only_never(client: httpx.AsyncClient,
                                                                      brokers: Any) -> None:
    inclusive, auxiliary, readonly = await brokers(3)
    for body in (reg("i", inclusive.url, "inclusive"),
                 reg("a", auxiliary.url, "auxiliary", operations=["retrieveOps"]),
                 reg("o", readonly.url, "inclusive", operations=["federationOps"])):
        assert (await client.post(R, json=body, headers=JSON)).status_code == 201, body
    b = "urn:ngsi-ld:Building:i1"
    assert (await client.post(E, json=building("i1", height=1), headers=JSON)).status_code == 201
    assert await local(client, b) == {"id": b, "type": "Building", "height": 1}
    assert await held(inclusive, b) == {"id": b, "type": "Building", "height": 1}
    r = await client.patch(f"{E}/{b}", json={"height": {"type": "Property", "value": 2}}, headers=JSON)
    assert r.status_code == 204, r.text
    assert (await held(inclusive, b) or {})["height"] == 2 and (await local(client, b) or {})["height"] == 2
    for other in (auxiliary, readonly):
        assert await held(other, b) is None
    assert (await client.delete(f"{E}/{b}")).status_code == 204
    assert await held(inclusive, b) is None and await local(client, b) is None


async def test_a_down_silent_or_refusing_source_makes_a_207(client: httpx.AsyncClient, app: Any,
                                                            brokers: Any) -> None:
    (district,) = await brokers(1)
    down = free_port()  # nothing listens there
    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    federation = app.state.federation
    saved = federation.timeout
    federation.timeout = 0.5
    try:
        for body in (reg("down", f"http://127.0.0.1:{down}", "inclusive"),
                     reg("silent", f"http://127.0.0.1:{silent.getsockname()[1]}", "inclusive"),
                     reg("refuses", district.url, "inclusive", auth=False)):  # no token: 401 there
            assert (await client.post(R, json=body, headers=JSON)).status_code == 201
        b = "urn:ngsi-ld:Building:f1"
        r = await client.post(E, json=building("f1", height=1), headers=JSON)
        assert r.status_code == 207, r.text
        answer = r.json()
        assert answer["success"] == [b]  # written here
        failed = {e["registrationId"].rsplit(":", 1)[1]: e for e in answer["errors"]}
        assert set(failed) == {"down", "silent", "refuses"}
        assert "HTTP 401" in failed["refuses"]["error"]["detail"]
        assert "0.5 s" in failed["silent"]["error"]["detail"]
        assert all(e["entityId"] == b and e["error"]["status"] >= 400 for e in answer["errors"])
        assert await local(client, b) == {"id": b, "type": "Building", "height": 1}
        assert await held(district, b) is None
        r = await client.patch(f"{E}/{b}/attrs", json={"height": {"type": "Property", "value": 2}}, headers=JSON)
        assert r.status_code == 207, r.text
        result = r.json()
        assert result["updated"] == ["height"]  # here
        assert {n["registrationId"].rsplit(":", 1)[1] for n in result["notUpdated"]} == {"down", "silent", "refuses"}
        assert all(n["attributeName"] == "height" and n["reason"] for n in result["notUpdated"])
        assert (await local(client, b) or {})["height"] == 2
        r = await client.delete(f"{E}/{b}")
        assert r.status_code == 207 and r.json()["success"] == [b]
        assert await local(client, b) is None
    finally:
        federation.timeout = saved
        silent.close()


async def test_a_redirect_to_a_source_that_is_down_is_207_with_no_success(client: httpx.AsyncClient) -> None:
    body = reg("gone", f"http://127.0.0.1:{free_port()}", "redirect")
    assert (await client.post(R, json=body, headers=JSON)).status_code == 201
    r = await client.post(E, json=building("g1", height=1), headers=JSON)
    assert r.status_code == 207, r.text
    assert r.json()["success"] == [] and r.json()["errors"][0]["registrationId"].endswith(":gone")
    assert await local(client, "urn:ngsi-ld:Building:g1") is None


async def test_bad_writes_are_refused_before_anything_leaves(client: httpx.AsyncClient, brokers: Any,
                                                             auth: Auth) -> None:
    (district,) = await brokers(1)
    assert (await client.post(R, json=reg("i", district.url, "inclusive"), headers=JSON)).status_code == 201
    b = "urn:ngsi-ld:Building:v1"
    r = await client.post(E, content=b'{"id": "urn:ngsi-ld:Building:v1", "type": ', headers=JSON)
    assert r.status_code == 400 and r.json()["type"].endswith("InvalidRequest")
    r = await client.post(E, json={"id": b, "type": "Building", "height": {"type": "Property"}}, headers=JSON)
    assert r.status_code == 400, r.text
    r = await client.post(E, json={"id": "not a uri", "type": "Building"}, headers=JSON)
    assert r.status_code == 400, r.text
    assert await held(district, b) is None
    assert (await client.post(E, json=building("v1", height=1), headers=JSON)).status_code == 201
    r = await client.post(E, json=building("v1", height=1), headers=JSON)
    assert r.status_code == 409  # already here: refused here, nothing forwarded
    r = await client.patch(f"{E}/{b}/attrs", json={"height": {"type": "Bogus", "value": 1}}, headers=JSON)
    assert r.status_code == 400, r.text
    assert (await held(district, b) or {})["height"] == 1
    # Forwarding writes with the registration's credentials needs a tenant-wide right.
    r = await client.patch(f"{E}/{b}/attrs", json={"height": {"type": "Property", "value": 5}},
                           headers=JSON | auth.headers("dept_admin", department="d1"))
    assert r.status_code == 403, r.text
    assert (await held(district, b) or {})["height"] == 1 and (await local(client, b) or {})["height"] == 1


async def test_a_loop_of_write_registrations_ends(brokers: Any) -> None:
    city, district = await brokers(2)
    for upper, lower, n in ((city, district, "1"), (district, city, "2")):
        async with upper.client() as http:
            r = await http.post(R, json=reg(n, lower.url, "inclusive"), headers=JSON)
            assert r.status_code == 201, r.text
    async with city.client() as http:
        r = await http.post(E, json=building("loop", height=1), headers=JSON)
        # The district forwards it back to the city, which refuses it as already there (409): the
        # district reports that, but both hold the entity and nothing ran in circles.
        assert r.status_code in (201, 207), r.text
        r = await http.patch(f"{E}/urn:ngsi-ld:Building:loop/attrs", json={"height": {"type": "Property", "value": 2}},
                             headers=JSON)
        assert r.status_code == 204, r.text
    for broker in (city, district):
        assert (await held(broker, "urn:ngsi-ld:Building:loop") or {}).get("height") == 2
    # A write that already passed the district is not forwarded again.
    async with district.client() as http:
        r = await http.post(E, json=building("seen", height=1), headers=JSON | {"Via": "1.1 cityos-test-b1"})
        assert r.status_code == 201, r.text
    assert await held(city, "urn:ngsi-ld:Building:seen") is None
