"""Every bad temporal request answers a ProblemDetails and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hub.temporal.temporal_helpers import JSON, T, at, history_count, post_series, reading, sensor, values_of

BAD = "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
AGG = {"options": "aggregatedValues", "aggrMethods": "avg"}

BAD_QUERIES: list[dict[str, str]] = [
    {"timerel": "before"},
    {"timerel": "between", "timeAt": at(0)},
    {"timerel": "between", "timeAt": at(10), "endTimeAt": at(5)},
    {"timerel": "between", "timeAt": at(10), "endTimeAt": at(10)},
    {"timerel": "after", "timeAt": at(0), "endTimeAt": at(5)},
    {"timerel": "during", "timeAt": at(0)},
    {"timeAt": at(0)},
    {"timerel": "after", "timeAt": "yesterday"},
    {"timerel": "after", "timeAt": "2026-13-01T00:00:00Z"},
    {"timerel": "between", "timeAt": at(0), "endTimeAt": "2026-11-20T25:00:00Z"},
    {"lastN": "0"},
    {"lastN": "-3"},
    {"lastN": "ten"},
    {"lastN": "1.5"},
    {"timeproperty": "deletedAtSomeTime"},
    {"options": "aggregatedValues"},
    {**AGG, "aggrMethods": "avg,median"},
    {**AGG, "aggrPeriodDuration": "PT0S"},
    {**AGG, "aggrPeriodDuration": "P0D"},
    {**AGG, "aggrPeriodDuration": "-PT1H"},
    {**AGG, "aggrPeriodDuration": "one hour"},
    {**AGG, "aggrPeriodDuration": "P1M"},
    {**AGG, "aggrPeriodDuration": "PT0.5S"},
    {"aggrMethods": "avg"},
    {"options": "temporalValues,aggregatedValues", "aggrMethods": "avg"},
    # {"options": "fancy"} is InvalidRequest (§6.3.7): tests/hub/test_conformance_temporal.py
    {"attrs": "bad name"},
]


@pytest.mark.parametrize("params", BAD_QUERIES, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
async def test_bad_queries_are_400(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    await post_series(client, sensor(1), [(1, at(1))])
    for url, extra in ((f"{T}/{sensor(1)}", {}), (T, {"type": "Sensor"})):
        r = await client.get(url, params={**extra, **params})
        assert r.status_code == 400, (url, r.text)
        assert r.json()["type"] == BAD
        assert r.json()["detail"]


async def test_unknown_entity_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"{T}/{sensor(404)}")
    assert r.status_code == 404
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    assert (await client.get(f"{T}/not a uri")).status_code == 400


async def _unchanged(client: httpx.AsyncClient, app: Any, count: int) -> None:
    assert await history_count(app) == count
    assert values_of((await client.get(f"{T}/{sensor(1)}")).json()) == [1, 2]


BAD_WRITES: list[tuple[str, str, Any, dict[str, str]]] = [
    # a new temporal entity needs a type
    ("post", T, {"id": sensor(2), "temperature": [reading(1, at(1))]}, {}),
    ("post", T, {"id": "no uri", "type": "Sensor", "temperature": [reading(1, at(1))]}, {}),
    ("post", T, [{"id": sensor(1)}], {}),
    # one bad instance rejects the whole body
    ("post", T, {"id": sensor(1), "type": "Sensor", "temperature": [reading(3, at(3)), reading(4, "noon")]}, {}),
    ("post", T, {"id": sensor(1), "type": "Sensor", "temperature": [reading(3, at(3)), 4]}, {}),
    ("post", T, {"id": sensor(1), "type": "Sensor", "temperature": []}, {}),
    ("post", T, {"id": sensor(1), "type": "Sensor", "temperature": [{"type": "Property"}]}, {}),
    ("post", T, {"id": sensor(1), "type": "Sensor", "bad name": [reading(3, at(3))]}, {}),
    ("post", f"{T}/{sensor(1)}/attrs", {}, {}),
    ("post", f"{T}/{sensor(1)}/attrs", {"temperature": [reading(3, at(3)), {"value": None}]}, {}),
    ("post", f"{T}/{sensor(1)}/attrs", {"temperature": reading(3, at(3), datasetId="not a uri")}, {}),
    ("delete", f"{T}/{sensor(1)}/attrs/temperature", None, {"datasetId": "not a uri"}),
    ("delete", f"{T}/{sensor(1)}/attrs/temperature", None, {"deleteAll": "yes"}),
    ("delete", f"{T}/{sensor(1)}/attrs/temperature/urn:ngsi-ld:attribute:instance:not-hex!", None, {}),
    ("patch", f"{T}/{sensor(1)}/attrs/temperature/urn:ngsi-ld:attribute:instance:zz--", {"value": 1}, {}),
]


@pytest.mark.parametrize("method,url,body,params", BAD_WRITES, ids=[f"{m}-{i}" for i, (m, *_rest) in
                                                                     enumerate(BAD_WRITES)])
async def test_bad_writes_are_400_and_change_nothing(client: httpx.AsyncClient, app: Any, method: str, url: str,
                                                      body: Any, params: dict[str, str]) -> None:
    await post_series(client, sensor(1), [(1, at(1)), (2, at(2))])
    kwargs: dict[str, Any] = {"params": params}
    if body is not None:
        kwargs.update(json=body, headers=JSON)
    r = await client.request(method.upper(), url, **kwargs)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == BAD
    await _unchanged(client, app, 2)
    assert (await client.get(f"{T}/{sensor(2)}")).status_code == 404


async def test_writes_to_missing_things_are_404_and_change_nothing(client: httpx.AsyncClient, app: Any) -> None:
    await post_series(client, sensor(1), [(1, at(1)), (2, at(2))])
    instance = (await client.get(f"{T}/{sensor(1)}")).json()["temperature"][0]["instanceId"]
    missing = "urn:ngsi-ld:attribute:instance:0123456789abcdef0123456789abcdef"
    attempts = [
        ("POST", f"{T}/{sensor(2)}/attrs", {"temperature": reading(3, at(3))}),
        ("DELETE", f"{T}/{sensor(2)}", None),
        ("DELETE", f"{T}/{sensor(1)}/attrs/humidity", None),
        ("DELETE", f"{T}/{sensor(2)}/attrs/temperature/{instance}", None),
        ("DELETE", f"{T}/{sensor(1)}/attrs/humidity/{instance}", None),
        ("DELETE", f"{T}/{sensor(1)}/attrs/temperature/{missing}", None),
        ("PATCH", f"{T}/{sensor(1)}/attrs/temperature/{missing}", {"value": 9}),
    ]
    for method, url, body in attempts:
        r = await client.request(method, url, json=body, headers=JSON if body is not None else None)
        assert r.status_code == 404, (method, url, r.text)
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    r = await client.delete(f"{T}/{sensor(1)}/attrs/temperature", params={"datasetId": "urn:ngsi-ld:ds:none"})
    assert r.status_code == 404
    r = await client.delete(f"{T}/{sensor(1)}", headers={"NGSILD-Tenant": "nowhere"})
    assert r.status_code == 404
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant"
    await _unchanged(client, app, 2)


async def test_a_deletion_record_cannot_be_modified(client: httpx.AsyncClient, app: Any) -> None:
    entity = {"id": sensor(3), "type": "Sensor", "temperature": reading(1, at(1))}
    assert (await client.post("/ngsi-ld/v1/entities", json=entity, headers=JSON)).status_code == 201
    assert (await client.delete(f"/ngsi-ld/v1/entities/{sensor(3)}/attrs/temperature")).status_code == 204
    deletion = (await client.get(f"{T}/{sensor(3)}")).json()["temperature"][-1]
    r = await client.patch(f"{T}/{sensor(3)}/attrs/temperature/{deletion['instanceId']}", json={"value": 2},
                           headers=JSON)
    assert r.status_code == 400
    assert (await client.get(f"{T}/{sensor(3)}")).json()["temperature"][-1] == deletion
