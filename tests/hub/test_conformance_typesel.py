"""The entity type selection language in queries (ETSI GS CIM 009 v1.8.1 §4.17): `,` and `|` for or,
`;` for and (an entity with several types), parentheses to group."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"


@pytest.fixture
async def three(client: httpx.AsyncClient) -> httpx.AsyncClient:
    for n, types in ((1, "Building"), (2, "Parking"), (3, ["Building", "Tower"])):
        body = {"id": f"urn:ngsi-ld:Thing:{n}", "type": types, "name": {"type": "Property", "value": f"n{n}"}}
        assert (await client.post(E, json=body, headers=JSON)).status_code == 201
    return client


@pytest.mark.parametrize(("selection", "expected"), [
    ("Building", {1, 3}), ("Building,Parking", {1, 2, 3}), ("Building|Parking", {1, 2, 3}),
    ("(Building;Tower)", {3}), ("Building;Tower", {3}), ("Tower;Building", {3}), ("Building;Parking", set()),
    ("(Building;Parking),Tower", {3}), ("(Building;Tower)|Parking", {2, 3}), ("Parking,(Tower;Building)", {2, 3}),
])
async def test_type_selection(three: httpx.AsyncClient, selection: str, expected: set[int]) -> None:
    r = await three.get(E, params={"type": selection})
    assert r.status_code == 200, r.text
    assert {int(e["id"].rsplit(":", 1)[1]) for e in r.json()} == expected
    r = await three.get(E, params={"type": selection, "count": "true", "limit": "0"})
    assert r.headers["NGSILD-Results-Count"] == str(len(expected))


@pytest.mark.parametrize("selection", ["(Building", "Building)", "Building;", ";Tower", "()", "Building;(,Tower)",
                                       "Bad name"])
async def test_bad_type_selection_is_400(three: httpx.AsyncClient, selection: str) -> None:
    r = await three.get(E, params={"type": selection})
    assert r.status_code == 400, (selection, r.text)
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
