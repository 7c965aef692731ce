"""Query Entities (ETSI GS CIM 009 v1.8.1 §5.7.2.4, §6.4.3.2) and Query Temporal Evolution of Entities
(§5.7.4.4, §6.18.3.2) need an entity type, attribute list, NGSI-LD query or geo-query; without any
of them only `local=true` asks for every local entity. Anything else is BadRequestData."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
BAD = "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
A, B = "urn:ngsi-ld:Building:sel-a", "urn:ngsi-ld:Vehicle:sel-b"


async def setup(client: httpx.AsyncClient) -> None:
    for eid, kind in ((A, "Building"), (B, "Vehicle")):
        body = {"id": eid, "type": kind, "location": {"type": "GeoProperty",
                                                      "value": {"type": "Point", "coordinates": [2.35, 48.85]}},
                "speed": {"type": "Property", "value": 3, "observedAt": "2024-01-01T00:00:00Z"}}
        assert (await client.post(E, json=body, headers=JSON)).status_code == 201


@pytest.mark.parametrize("path", [E, T])
@pytest.mark.parametrize("params", [
    {},
    {"id": f"{A},{B}"},
    {"idPattern": ".*"},
    {"limit": "5"},
    {"local": "false"},
    {"type": ""},
])
async def test_no_selector_is_400(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
    await setup(client)
    r = await client.get(path, params=params)
    assert r.status_code == 400, (path, params, r.text)
    assert r.json()["type"] == BAD


@pytest.mark.parametrize("path", [E, T])
@pytest.mark.parametrize(("params", "expected"), [
    ({"type": "Building"}, {A}),
    ({"attrs": "speed"}, {A, B}),
    ({"q": "speed==3"}, {A, B}),
    ({"georel": "near;maxDistance==100", "geometry": "Point", "coordinates": "[2.35,48.85]"}, {A, B}),
    ({"local": "true"}, {A, B}),
    ({"local": "true", "id": B}, {B}),
])
async def test_any_selector_or_local_is_answered(client: httpx.AsyncClient, path: str, params: dict[str, str],
                                                 expected: set[str]) -> None:
    await setup(client)
    r = await client.get(path, params=params)
    assert r.status_code == 200, (path, params, r.text)
    assert {e["id"] for e in r.json()} == expected


async def test_temporal_interval_alone_is_400(client: httpx.AsyncClient) -> None:
    await setup(client)
    r = await client.get(T, params={"timerel": "after", "timeAt": "2020-07-01T12:05:00Z"})
    assert r.status_code == 400
    assert r.json()["type"] == BAD
    r = await client.get(T, params={"timerel": "after", "timeAt": "2020-07-01T12:05:00Z", "type": "Vehicle"})
    assert r.status_code == 200 and [e["id"] for e in r.json()] == [B]


async def test_bad_local_value_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get(E, params={"local": "maybe"})
    assert r.status_code == 400
    assert r.json()["type"] == BAD


async def test_retrieve_by_id_needs_no_selector(client: httpx.AsyncClient) -> None:
    """Retrieve Entity (§5.7.1) is not a query: the id in the path is enough."""
    await setup(client)
    assert (await client.get(f"{E}/{A}")).status_code == 200
    assert (await client.get(f"{T}/{A}")).status_code == 200
