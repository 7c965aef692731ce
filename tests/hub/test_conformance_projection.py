"""`pick` and `omit` (ETSI GS CIM 009 v1.8.1 §4.21, §6.3.20): select among id, type and attributes."""

from __future__ import annotations

import httpx
import pytest

from hub.helpers import JSON, air

E = "/ngsi-ld/v1/entities"
AIR1 = "urn:ngsi-ld:AirQualityObserved:000001"


@pytest.fixture
async def two(client: httpx.AsyncClient) -> httpx.AsyncClient:
    assert (await client.post(E, json=air(1), headers=JSON)).status_code == 201
    parked = {"id": "urn:ngsi-ld:Vehicle:1", "type": "Vehicle", "brand": {"type": "Property", "value": "X"}}
    assert (await client.post(E, json=parked, headers=JSON)).status_code == 201
    return client


async def test_pick_on_retrieve(two: httpx.AsyncClient) -> None:
    assert (await two.get(f"{E}/{AIR1}", params={"pick": "pm25"})).json() == {
        "pm25": {"type": "Property", "value": 10.0, "unitCode": "GQ", "observedAt": "2026-11-20T08:00:00Z"}}
    assert (await two.get(f"{E}/{AIR1}", params={"pick": "id"})).json() == {"id": AIR1}
    body = (await two.get(f"{E}/{AIR1}", params={"pick": "id,type,location", "options": "keyValues"})).json()
    assert body == {"id": AIR1, "type": "AirQualityObserved",
                    "location": {"type": "Point", "coordinates": [116.4, 39.9]}}


async def test_omit_on_retrieve(two: httpx.AsyncClient) -> None:
    body = (await two.get(f"{E}/{AIR1}", params={"omit": "id,pm25", "options": "keyValues"})).json()
    assert body == {"type": "AirQualityObserved", "location": {"type": "Point", "coordinates": [116.4, 39.9]}}


async def test_query_drops_entities_left_empty(two: httpx.AsyncClient) -> None:
    r = await two.get(E, params={"type": "AirQualityObserved,Vehicle", "pick": "pm25", "options": "keyValues"})
    assert r.status_code == 200 and r.json() == [{"pm25": 10.0}]
    r = await two.get(E, params={"type": "AirQualityObserved,Vehicle", "omit": "type,pm25,location",
                                 "options": "keyValues"})
    assert sorted(r.json(), key=lambda e: e["id"]) == [{"id": AIR1}, {"id": "urn:ngsi-ld:Vehicle:1", "brand": "X"}]


async def test_nothing_left_on_retrieve_is_404(two: httpx.AsyncClient) -> None:
    for params in ({"pick": "unknown"}, {"omit": "id,type,pm25,location"}):
        r = await two.get(f"{E}/{AIR1}", params=params)
        assert r.status_code == 404, params
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"


@pytest.mark.parametrize("params", [{"pick": "id", "omit": "type"}, {"pick": "pm25", "attrs": "pm25"},
                                    {"omit": "pm25", "attrs": "location"},
                                    {"pick": "a{b"}, {"omit": "a,,b"}, {"pick": "bad name"}])
async def test_invalid_projection_is_400(two: httpx.AsyncClient, params: dict[str, str]) -> None:
    for url in (E, f"{E}/{AIR1}"):
        r = await two.get(url, params={"type": "Vehicle", **params} if url == E else params)
        assert r.status_code == 400, (url, params, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    # nothing was changed by the refused reads
    assert (await two.get(f"{E}/{AIR1}")).json()["pm25"]["value"] == 10.0


@pytest.mark.parametrize("params", [{"options": "bogus"}, {"format": "bogus"}, {"options": "keyValues,bogus"}])
async def test_unknown_format_or_option_is_invalid_request(two: httpx.AsyncClient, params: dict[str, str]) -> None:
    for url in (E, f"{E}/{AIR1}"):
        r = await two.get(url, params={"type": "Vehicle", **params} if url == E else params)
        assert r.status_code == 400, (url, params, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/InvalidRequest"


async def test_nested_projection_is_accepted_at_top_level(two: httpx.AsyncClient) -> None:
    r = await two.get(f"{E}/{AIR1}", params={"pick": "id,location{id,name}"})
    assert r.status_code == 200 and set(r.json()) == {"id", "location"}


async def test_retrieve_with_only_unknown_attrs_is_404(two: httpx.AsyncClient) -> None:
    r = await two.get(f"{E}/{AIR1}", params={"attrs": "unknownAttr"})
    assert r.status_code == 404 and r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    r = await two.get(f"{E}/{AIR1}", params={"attrs": "unknownAttr,pm25", "options": "keyValues"})
    assert r.status_code == 200 and r.json() == {"id": AIR1, "type": "AirQualityObserved", "pm25": 10.0}
