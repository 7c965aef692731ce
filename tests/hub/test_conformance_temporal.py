"""Temporal retrieval and query with pick/omit (ETSI GS CIM 009 v1.8.1 §4.21, §5.7.3, §5.7.4) and
the representation parameters (§6.3.7: `format` decides over `options`; unknown values are
InvalidRequest)."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON

T = "/ngsi-ld/v1/temporal/entities"
CAR = "urn:ngsi-ld:Vehicle:tp1"
BUS = "urn:ngsi-ld:Bus:tp2"
PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"


def series(entity_id: str, entity_type: str) -> dict[str, object]:
    return {"id": entity_id, "type": entity_type,
            "speed": [{"type": "Property", "value": 120, "observedAt": "2020-08-01T12:03:00Z"},
                      {"type": "Property", "value": 80, "observedAt": "2020-08-01T12:05:00Z"}],
            "fuelLevel": [{"type": "Property", "value": 67, "observedAt": "2020-08-01T12:03:00Z"}]}


@pytest.fixture
async def fleet(client: httpx.AsyncClient) -> httpx.AsyncClient:
    for entity_id, entity_type in ((CAR, "Vehicle"), (BUS, "Bus")):
        r = await client.post(T, json=series(entity_id, entity_type), headers=JSON)
        assert r.status_code in (201, 204), r.text
    return client


async def test_retrieve_with_pick_and_omit(fleet: httpx.AsyncClient) -> None:
    picked = (await fleet.get(f"{T}/{CAR}", params={"pick": "speed"})).json()
    assert set(picked) == {"speed"} and len(picked["speed"]) == 2
    picked = (await fleet.get(f"{T}/{CAR}", params={"pick": "id,fuelLevel"})).json()
    assert set(picked) == {"id", "fuelLevel"}
    omitted = (await fleet.get(f"{T}/{CAR}", params={"omit": "type,speed"})).json()
    assert set(omitted) == {"id", "fuelLevel"}


async def test_query_with_pick_drops_empty_entities(fleet: httpx.AsyncClient) -> None:
    r = await fleet.get(T, params={"type": "Vehicle,Bus", "pick": "id"})
    assert r.status_code == 200, r.text
    assert sorted(r.json(), key=lambda e: e["id"]) == [{"id": BUS}, {"id": CAR}]
    r = await fleet.get(T, params={"type": "Vehicle,Bus", "omit": "id,type,speed,fuelLevel"})
    assert r.json() == []


@pytest.mark.parametrize("params", [{"pick": "speed", "omit": "speed"}, {"pick": "speed", "attrs": "speed"},
                                    {"omit": "speed", "attrs": "speed"}])
async def test_invalid_projection_is_400(fleet: httpx.AsyncClient, params: dict[str, str]) -> None:
    for url, extra in ((f"{T}/{CAR}", {}), (T, {"type": "Vehicle"})):
        r = await fleet.get(url, params={**extra, **params})
        assert r.status_code == 400, (url, r.text)
        assert r.json()["type"] == PROBLEM + "BadRequestData"


@pytest.mark.parametrize("params", [{"pick": "unknown"}, {"omit": "id,type,speed,fuelLevel"}])
async def test_nothing_left_on_retrieve_is_404(fleet: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await fleet.get(f"{T}/{CAR}", params=params)
    assert r.status_code == 404 and r.json()["type"] == PROBLEM + "ResourceNotFound"


async def test_format_decides_over_options(fleet: httpx.AsyncClient) -> None:
    r = await fleet.get(f"{T}/{CAR}", params={"format": "temporalValues", "options": "aggregatedValues"})
    assert r.status_code == 200, r.text
    assert r.json()["speed"]["values"] == [[120, "2020-08-01T12:03:00Z"], [80, "2020-08-01T12:05:00Z"]]


@pytest.mark.parametrize("params", [{"format": "bogus"}, {"options": "bogus"}, {"options": "sysAttrs,bogus"}])
async def test_unknown_representation_is_invalid_request(fleet: httpx.AsyncClient, params: dict[str, str]) -> None:
    for url, extra in ((f"{T}/{CAR}", {}), (T, {"type": "Vehicle"})):
        r = await fleet.get(url, params={**extra, **params})
        assert r.status_code == 400, r.text
        assert r.json()["type"] == PROBLEM + "InvalidRequest"
