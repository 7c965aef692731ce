"""Temporal retrieval and query with pick/omit (ETSI GS CIM 009 v1.8.1 §4.21, §5.7.3, §5.7.4) and
the representation parameters (§6.3.7: `format` decides over `options`; unknown values are
InvalidRequest)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.helpers import JSON
from hub.temporal.temporal_helpers import at, post_series, sensor, values_of

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
    # The overruled aggregation brings its aggrMethods along; they are not an error then.
    r = await fleet.get(f"{T}/{CAR}", params={"format": "temporalValues", "options": "aggregatedValues",
                                              "aggrMethods": "sum"})
    assert r.status_code == 200 and "values" in r.json()["speed"]
    r = await fleet.get(f"{T}/{CAR}", params={"format": "temporalValues", "aggrMethods": "sum"})
    assert r.status_code == 400 and r.json()["type"] == PROBLEM + "BadRequestData"


@pytest.mark.parametrize("params", [{"format": "bogus"}, {"options": "bogus"}, {"options": "sysAttrs,bogus"}])
async def test_unknown_representation_is_invalid_request(fleet: httpx.AsyncClient, params: dict[str, str]) -> None:
    for url, extra in ((f"{T}/{CAR}", {}), (T, {"type": "Vehicle"})):
        r = await fleet.get(url, params={**extra, **params})
        assert r.status_code == 400, r.text
        assert r.json()["type"] == PROBLEM + "InvalidRequest"


async def test_paged_answer_keeps_an_attribute_with_no_instance_in_the_interval(
        client: httpx.AsyncClient, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """§6.3.10: a 206 answer covers one interval for every attribute; an attribute whose instances
    all lie outside it is still listed, with none (not dropped from the entity)."""
    monkeypatch.setattr(app.state.temporal, "max_instances", 5)
    await post_series(client, sensor(7), [(i, at(i)) for i in range(10)])
    await post_series(client, sensor(7), [(i, at(100 + i)) for i in range(3)], attr="humidity")
    r = await client.get(f"{T}/{sensor(7)}")
    assert r.status_code == 206 and r.headers["Content-Range"] == f"date-time {at(0)}-{at(4)}/*"
    body = r.json()
    assert values_of(body) == [0, 1, 2, 3, 4] and body["humidity"] == []
    r = await client.get(f"{T}/{sensor(7)}", params={"options": "temporalValues"})
    assert r.status_code == 206 and r.json()["humidity"] == {"type": "Property", "values": []}


async def test_timeproperty_deleted_at_gives_the_deletions(client: httpx.AsyncClient) -> None:
    """§5.7.3: timeproperty=deletedAt: the evolution of the deletions, each as NGSI-LD Null with deletedAt."""
    car = "urn:ngsi-ld:Vehicle:del1"
    entity = {"id": car, "type": "Vehicle", "speed": {"type": "Property", "value": 5},
              "fuelLevel": {"type": "Property", "value": 40}}
    assert (await client.post("/ngsi-ld/v1/entities", json=entity, headers=JSON)).status_code == 201
    assert (await client.delete(f"/ngsi-ld/v1/entities/{car}/attrs/fuelLevel")).status_code == 204
    r = await client.get(f"{T}/{car}", params={"timeproperty": "deletedAt"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "speed" not in body
    [deleted] = body["fuelLevel"]
    assert deleted["value"] == "urn:ngsi-ld:null" and deleted["deletedAt"].endswith("Z")
    r = await client.get(f"{T}/{car}", params={"timeproperty": "deletedAt", "options": "aggregatedValues",
                                               "aggrMethods": "sum"})
    assert r.status_code == 400 and r.json()["type"] == PROBLEM + "BadRequestData"


async def test_retrieve_with_unknown_attrs_is_404(fleet: httpx.AsyncClient) -> None:
    """§5.7.3 (as §5.7.1): none of the attributes asked for exists: 404; one of them does: 200."""
    r = await fleet.get(f"{T}/{CAR}", params={"attrs": "unknownAttribute"})
    assert r.status_code == 404 and r.json()["type"] == PROBLEM + "ResourceNotFound"
    r = await fleet.get(f"{T}/{CAR}", params={"attrs": "unknownAttribute,speed"})
    assert r.status_code == 200 and list(r.json()) == ["id", "type", "speed"]


async def test_simplified_temporal_values_of_wrapped_kinds(client: httpx.AsyncClient) -> None:
    """§4.5.9 with §4.5.3: in temporalValues a LanguageProperty, JsonProperty or VocabProperty value
    keeps its member name, as in the simplified entity ({"languageMap": ...}, {"json": ...}, {"vocab": ...})."""
    car = "urn:ngsi-ld:Vehicle:wrap1"
    body = {"id": car, "type": "Vehicle",
            "street": [{"type": "LanguageProperty", "languageMap": {"fr": "Grand Place"},
                        "observedAt": "2020-08-01T12:03:00Z"}],
            "spec": [{"type": "JsonProperty", "json": {"value": 120}, "observedAt": "2020-08-01T12:03:00Z"}],
            "kind": [{"type": "VocabProperty", "vocab": "monument", "observedAt": "2020-08-01T12:03:00Z"}]}
    assert (await client.post(T, json=body, headers=JSON)).status_code == 201
    got = (await client.get(f"{T}/{car}", params={"options": "temporalValues"})).json()
    assert got["street"]["languageMaps"] == [[{"languageMap": {"fr": "Grand Place"}}, "2020-08-01T12:03:00Z"]]
    assert got["spec"]["jsons"] == [[{"json": {"value": 120}}, "2020-08-01T12:03:00Z"]]
    assert got["kind"]["vocabs"] == [[{"vocab": "monument"}, "2020-08-01T12:03:00Z"]]


async def test_query_with_timerel_leaves_out_entities_without_instances_in_it(fleet: httpx.AsyncClient) -> None:
    """§5.7.4: a temporal query with timerel matches the entities having instances in its interval."""
    late = {"id": "urn:ngsi-ld:Vehicle:tp3", "type": "Vehicle",
            "speed": [{"type": "Property", "value": 10, "observedAt": "2020-09-01T12:00:00Z"}]}
    assert (await fleet.post(T, json=late, headers=JSON)).status_code == 201
    r = await fleet.get(T, params={"type": "Vehicle", "timerel": "after", "timeAt": "2020-08-15T00:00:00Z"})
    assert r.status_code == 200 and [e["id"] for e in r.json()] == ["urn:ngsi-ld:Vehicle:tp3"]
    r = await fleet.get(T, params={"type": "Vehicle", "timerel": "before", "timeAt": "2020-08-15T00:00:00Z"})
    assert [e["id"] for e in r.json()] == [CAR]
    assert len((await fleet.get(T, params={"type": "Vehicle"})).json()) == 2  # no timerel: all of them


async def test_instance_id_of_another_form_is_404(client: httpx.AsyncClient) -> None:
    """§5.6.8/§5.6.10: an instanceId is a URI; one that names no instance is ResourceNotFound, not a bad request."""
    body = {"id": "urn:ngsi-ld:Vehicle:inst1", "type": "Vehicle",
            "speed": [{"type": "Property", "value": 1, "observedAt": "2026-11-20T08:00:00Z"}]}
    assert (await client.post(T, json=body, headers=JSON)).status_code == 201
    foreign = "urn:ngsi-ld:01234567890123456789"
    for method, kwargs in (("PATCH", {"json": {"value": 2}, "headers": JSON}), ("DELETE", {})):
        r = await client.request(method, f"{T}/urn:ngsi-ld:Vehicle:inst1/attrs/speed/{foreign}", **kwargs)
        assert r.status_code == 404, (method, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    for method, kwargs in (("PATCH", {"json": {"value": 2}, "headers": JSON}), ("DELETE", {})):
        r = await client.request(method, f"{T}/urn:ngsi-ld:Vehicle:inst1/attrs/speed/not%20a%20uri", **kwargs)
        assert r.status_code == 400, (method, r.text)
    assert [i["value"] for i in (await client.get(f"{T}/urn:ngsi-ld:Vehicle:inst1")).json()["speed"]] == [1]


async def test_instance_id_that_is_not_a_uri_is_400(client: httpx.AsyncClient) -> None:
    body = {"id": "urn:ngsi-ld:Vehicle:inst2", "type": "Vehicle",
            "speed": [{"type": "Property", "value": 1, "observedAt": "2026-11-20T08:00:00Z"}]}
    assert (await client.post(T, json=body, headers=JSON)).status_code == 201
    instance = (await client.get(f"{T}/urn:ngsi-ld:Vehicle:inst2")).json()["speed"][0]["instanceId"]
    bare = instance.rsplit(":", 1)[1]  # our key without its URI prefix is not an instanceId
    for method, kwargs in (("PATCH", {"json": {"value": 2}, "headers": JSON}), ("DELETE", {})):
        r = await client.request(method, f"{T}/urn:ngsi-ld:Vehicle:inst2/attrs/speed/{bare}", **kwargs)
        assert r.status_code == 400, (method, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


async def test_aggregation_periods_start_at_the_earliest_instance_without_time_at(client: httpx.AsyncClient) -> None:
    """§4.5.19: with no timeAt, the periods start at the first instance; bounds written as the instances' times."""
    body = {"id": "urn:ngsi-ld:Vehicle:aggr1", "type": "Vehicle",
            "fuelLevel": [{"type": "Property", "value": v, "observedAt": t} for v, t in (
                (67, "2020-08-01T12:03:00Z"), (53, "2020-08-01T13:05:00Z"), (40, "2020-08-01T14:07:00Z"))]}
    assert (await client.post(T, json=body, headers=JSON)).status_code == 201
    r = await client.get(f"{T}/urn:ngsi-ld:Vehicle:aggr1", params={
        "options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "PT1H"})
    assert r.status_code == 200, r.text
    assert r.json()["fuelLevel"]["avg"] == [[67.0, "2020-08-01T12:03:00Z", "2020-08-01T13:03:00Z"],
                                            [53.0, "2020-08-01T13:03:00Z", "2020-08-01T14:03:00Z"],
                                            [40.0, "2020-08-01T14:03:00Z", "2020-08-01T15:03:00Z"]]
    r = await client.get(T, params={"type": "Vehicle", "options": "aggregatedValues", "aggrMethods": "max",
                                    "aggrPeriodDuration": "P1D"})
    assert r.json()[0]["fuelLevel"]["max"] == [[67.0, "2020-08-01T12:03:00Z", "2020-08-02T12:03:00Z"]]
