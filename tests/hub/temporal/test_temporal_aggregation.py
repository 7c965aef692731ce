"""options=aggregatedValues: every method computed in the database, checked against Python."""

from __future__ import annotations

import math
import statistics
from typing import Any

import httpx
import pytest

from hub.temporal.temporal_helpers import JSON, E, T, at, post_series, reading, sensor

METHODS = ["totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq"]


def series(n: int, minutes: int = 180) -> list[tuple[Any, str]]:
    """A minute series with repeats, integers, floats and a few non-numeric readings."""
    out: list[tuple[Any, str]] = []
    for i in range(minutes):
        if i % 17 == 5:
            value: Any = "sensor-error"
        elif i % 4 == 0:
            value = (n * 7 + i) % 9  # an integer, often repeated
        else:
            value = round(((n * 37 + i * 13) % 101) / 3 - 10, 3)
        out.append((value, at(i)))
    return out


def expected(values: list[Any]) -> dict[str, Any]:
    numbers = [v for v in values if isinstance(v, int | float)]
    return {
        "totalCount": len(values),
        "distinctCount": len(set(values)),
        "sum": sum(numbers),
        "avg": statistics.fmean(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "stddev": statistics.pstdev(numbers),
        "sumsq": sum(v * v for v in numbers),
    }


def bound(moment: str) -> str:
    """A bucket bound in whole seconds is written without milliseconds (like the timeAt it comes from)."""
    return moment.replace(".000Z", "Z")


def check(attribute: dict[str, Any], buckets: list[tuple[str, str, list[Any]]]) -> None:
    assert attribute["type"] == "Property"
    for method in METHODS:
        got = attribute[method]
        assert [(start, end) for _, start, end in got] == [(bound(s), bound(e)) for s, e, _ in buckets], method
        for (value, _, _), (_, _, values) in zip(got, buckets, strict=True):
            assert value == pytest.approx(expected(values)[method], rel=1e-9, abs=1e-9), method


async def test_hourly_buckets_over_several_entities(client: httpx.AsyncClient) -> None:
    data = {n: series(n) for n in (1, 2, 3)}
    for n, values in data.items():
        await post_series(client, sensor(n), values)
    r = await client.get(T, params={
        "type": "Sensor", "timerel": "between", "timeAt": at(0), "endTimeAt": at(180),
        "options": "aggregatedValues", "aggrMethods": ",".join(METHODS), "aggrPeriodDuration": "PT1H"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["id"] for e in body] == [sensor(1), sensor(2), sensor(3)]
    for entity in body:
        values = [v for v, _ in data[int(entity["id"][-3:])]]
        check(entity["temperature"], [(at(60 * k), at(60 * (k + 1)), values[60 * k:60 * (k + 1)]) for k in range(3)])


async def test_buckets_start_at_time_at_and_the_last_one_is_partial(client: httpx.AsyncClient) -> None:
    values = series(4)
    await post_series(client, sensor(4), values)
    r = await client.get(f"{T}/{sensor(4)}", params={
        "timerel": "after", "timeAt": at(30), "options": "aggregatedValues", "aggrMethods": ",".join(METHODS),
        "aggrPeriodDuration": "PT1H"})
    assert r.status_code == 200, r.text
    raw = [v for v, _ in values]
    check(r.json()["temperature"], [(at(30), at(90), raw[30:90]), (at(90), at(150), raw[90:150]),
                                    (at(150), at(210), raw[150:180])])


async def test_whole_window_and_daily_buckets(client: httpx.AsyncClient) -> None:
    values = series(5)
    await post_series(client, sensor(5), values)
    raw = [v for v, _ in values]
    # Without aggrPeriodDuration, one bucket spans the window.
    r = await client.get(f"{T}/{sensor(5)}", params={
        "timerel": "between", "timeAt": at(10), "endTimeAt": at(100), "options": "aggregatedValues",
        "aggrMethods": ",".join(METHODS)})
    check(r.json()["temperature"], [(at(10), at(100), raw[10:100])])
    # Without a window start, buckets are aligned on the Unix epoch: P1D buckets start at midnight UTC.
    r = await client.get(f"{T}/{sensor(5)}", params={
        "timerel": "before", "timeAt": at(24 * 60), "options": "aggregatedValues", "aggrMethods": ",".join(METHODS),
        "aggrPeriodDuration": "P1D"})
    check(r.json()["temperature"], [(at(0), at(24 * 60), raw)])
    r = await client.get(f"{T}/{sensor(5)}", params={
        "options": "aggregatedValues", "aggrMethods": "totalCount,avg", "aggrPeriodDuration": "PT45M"})
    assert [c for c, _, _ in r.json()["temperature"]["totalCount"]] == [45, 45, 45, 45]


async def test_datasets_non_numbers_and_deletions(client: httpx.AsyncClient) -> None:
    body = {"id": sensor(6), "type": "Sensor",
            "temperature": [reading(1, at(1), datasetId="urn:ngsi-ld:ds:a"),
                            reading(3, at(2), datasetId="urn:ngsi-ld:ds:a"), reading(10, at(1)), reading(20, at(2))],
            "status": [reading("ok", at(1)), reading("ok", at(2)), reading("bad", at(3))]}
    assert (await client.post(T, json=body, headers=JSON)).status_code == 201
    r = await client.get(f"{T}/{sensor(6)}", params={
        "options": "aggregatedValues", "aggrMethods": "totalCount,distinctCount,avg,max", "aggrPeriodDuration": "PT1H"})
    out = r.json()
    by_dataset = {part.get("datasetId"): part for part in out["temperature"]}
    # no timeAt: the hours start at the earliest instance asked for (minute 1, §4.5.19)
    first, end = bound(at(1)), bound(at(61))
    assert by_dataset[None]["avg"] == [[15, first, end]]
    assert by_dataset["urn:ngsi-ld:ds:a"]["avg"] == [[2, first, end]]
    assert by_dataset["urn:ngsi-ld:ds:a"]["max"] == [[3, first, end]]
    assert out["status"] == {"type": "Property", "totalCount": [[3, first, end]],
                             "distinctCount": [[2, first, end]], "avg": [[None, first, end]],
                             "max": [[None, first, end]]}

    # A deletion recorded by the entity API is not a value.
    entity = {"id": sensor(7), "type": "Sensor", "temperature": reading(5, at(1))}
    assert (await client.post(E, json=entity, headers=JSON)).status_code == 201
    assert (await client.delete(f"{E}/{sensor(7)}/attrs/temperature")).status_code == 204
    r = await client.get(f"{T}/{sensor(7)}", params={"options": "aggregatedValues", "aggrMethods": "totalCount,sum"})
    [[count, _, _]] = r.json()["temperature"]["totalCount"]
    assert count == 1
    assert math.isclose(r.json()["temperature"]["sum"][0][0], 5)
