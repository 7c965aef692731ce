"""Linked entities (ETSI GS CIM 009 v1.8.1 §4.5.23): join=inline|flat with joinLevel, on retrieval,
query and POST /entityOperations/query, with nested pick/omit projections (§4.21)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
B, C, K = "urn:ngsi-ld:Building:b1", "urn:ngsi-ld:City:paris", "urn:ngsi-ld:Country:fr"


@pytest.fixture(name="linked")
async def linked_fixture(client: httpx.AsyncClient) -> None:
    for entity in (
        {"id": B, "type": "Building", "name": {"type": "Property", "value": "Eiffel"},
         "locatedAt": {"type": "Relationship", "object": C}},
        {"id": C, "type": "City", "name": {"type": "Property", "value": "Paris"},
         "inCountry": {"type": "Relationship", "object": K}},
        {"id": K, "type": "Country", "name": {"type": "Property", "value": "France"}},
    ):
        assert (await client.post(E, json=entity, headers=JSON)).status_code == 201


async def _get(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.usefixtures("linked")
async def test_inline_one_and_two_levels(client: httpx.AsyncClient) -> None:
    got = await _get(client, f"{E}/{B}", join="inline")
    city = got["locatedAt"]["entity"]
    assert got["locatedAt"]["object"] == C and city["id"] == C and city["name"]["value"] == "Paris"
    assert "entity" not in city["inCountry"]  # joinLevel defaults to 1
    got = await _get(client, f"{E}/{B}", join="inline", joinLevel="2")
    assert got["locatedAt"]["entity"]["inCountry"]["entity"]["name"]["value"] == "France"
    simplified = await _get(client, f"{E}/{B}", join="inline", options="keyValues")
    assert simplified["locatedAt"] == {"id": C, "type": "City", "name": "Paris", "inCountry": K}


@pytest.mark.usefixtures("linked")
async def test_flat_lists_each_linked_entity_once(client: httpx.AsyncClient) -> None:
    got = await _get(client, f"{E}/{B}", join="flat", joinLevel="2")
    assert [e["id"] for e in got] == [B, C, K]
    assert "entity" not in got[0]["locatedAt"]
    listed = await _get(client, E, type="Building,City", join="flat", joinLevel="2")
    assert sorted(e["id"] for e in listed) == sorted([B, C, K])  # the City is not repeated


@pytest.mark.usefixtures("linked")
async def test_nested_pick_and_omit(client: httpx.AsyncClient) -> None:
    got = await _get(client, f"{E}/{B}", join="inline", joinLevel="2", pick="id,locatedAt{id,inCountry{name}}")
    assert set(got) == {"id", "locatedAt"}
    city = got["locatedAt"]["entity"]
    assert set(city) == {"id", "inCountry"} and set(city["inCountry"]["entity"]) == {"name"}
    got = await _get(client, f"{E}/{B}", join="flat", omit="type,locatedAt{name}")
    assert set(got[0]) == {"id", "name", "locatedAt"} and got[1] == {
        "id": C, "type": "City", "inCountry": {"type": "Relationship", "object": K}}


@pytest.mark.usefixtures("linked")
async def test_post_query_with_join(client: httpx.AsyncClient) -> None:
    r = await client.post("/ngsi-ld/v1/entityOperations/query", headers=JSON,
                          json={"type": "Query", "entities": [{"type": "Building"}], "join": "flat"})
    assert r.status_code == 200 and [e["id"] for e in r.json()] == [B, C]


@pytest.mark.usefixtures("linked")
async def test_missing_linked_entity_and_bad_join(client: httpx.AsyncClient) -> None:
    assert (await client.delete(f"{E}/{C}")).status_code == 204
    got = await _get(client, f"{E}/{B}", join="inline")
    assert got["locatedAt"] == {"type": "Relationship", "object": C}
    assert [e["id"] for e in await _get(client, f"{E}/{B}", join="flat")] == [B]  # always an array
    for params in ({"join": "sideways"}, {"join": "inline", "joinLevel": "0"}, {"join": "inline", "joinLevel": "x"},
                   {"join": "inline", "pick": "id,locatedAt{id"}, {"join": "inline", "pick": "id,locatedAt{}"},
                   {"join": "flat", "omit": "locatedAt{,name}"}):
        r = await client.get(f"{E}/{B}", params=params)
        assert r.status_code == 400, params
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
