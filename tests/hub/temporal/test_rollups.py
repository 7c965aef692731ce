"""Temporal rollups (issue #13, "Speed"): aggregations answered from the hourly and daily rollups equal
the raw computation, whatever order instances arrive in and whatever is later deleted or edited.

The oracle is the raw aggregation (`sql.aggregate` without a grain) over the same rows in the same
database; hypothesis generates the instances, their arrival batches, deletions and edits.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text, update
from temporal_helpers import T, at, post_series, sensor

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.hub.models import attribute_history
from cityos.hub.store import HistoryRow
from cityos.hub.temporal import rollups, sql
from cityos.hub.temporal.params import TemporalQuery

BASE = datetime(2026, 11, 20, tzinfo=UTC)
SPAN_MINUTES = 3 * 24 * 60
ATTRS = ["https://example.org/pm25", "https://example.org/label"]
METHODS = ["totalCount", "sum", "avg", "min", "max", "stddev", "sumsq"]

# Readings' magnitudes: PostgreSQL's raw sum of squares itself fails on float8 underflow (1e-200²); extreme
# values are tested apart (test_extreme_values_never_fail_a_write).
readings = st.floats(-1000, 1000, allow_nan=False, allow_infinity=False).filter(lambda x: x == 0 or abs(x) > 1e-100)
values = st.one_of(st.integers(-1000, 1000), readings,
                   st.sampled_from(["text", True, None]))
instance = st.tuples(st.integers(0, 2), st.sampled_from(ATTRS), st.integers(0, SPAN_MINUTES - 1), values,
                     st.sampled_from([None, "urn:ngsi-ld:Dataset:b"]), st.booleans())


def _row(entity: int, attr: str, minute: int, value: Any, dataset: str | None, deleted: bool) -> HistoryRow:
    ts = BASE + timedelta(minutes=minute)
    inst: dict[str, Any] = {"type": "Property", "value": value, "observedAt": clock.iso(ts)}
    if dataset is not None:
        inst["datasetId"] = dataset
    # An attribute deletion is recorded as a deleted instance: aggregations skip it.
    return HistoryRow(f"urn:ngsi-ld:Probe:{entity}", "https://example.org/Probe", attr, inst, ts,
                      deleted=deleted and minute % 7 == 0, ts=ts)


def queries() -> list[TemporalQuery]:
    found = []
    for period in (timedelta(hours=1), timedelta(hours=2), timedelta(days=1), timedelta(hours=3), None):
        found.append(TemporalQuery(timerel="between", time_at=BASE, end_time_at=BASE + timedelta(days=3),
                                   aggr_methods=METHODS, aggr_period=period, representation="aggregatedValues"))
    found.append(TemporalQuery(timerel="after", time_at=BASE + timedelta(hours=5), aggr_methods=METHODS,
                               aggr_period=timedelta(hours=1), representation="aggregatedValues"))
    found.append(TemporalQuery(aggr_methods=METHODS, aggr_period=timedelta(days=1), representation="aggregatedValues"))
    found.append(TemporalQuery(aggr_methods=METHODS, representation="aggregatedValues"))
    return found


def same(raw: list[sql.BucketRow], rolled: list[sql.BucketRow]) -> None:
    assert [(b.entity_id, b.attr, b.dataset_id, b.start, b.end) for b in rolled] == \
           [(b.entity_id, b.attr, b.dataset_id, b.start, b.end) for b in raw]
    for a, b in zip(raw, rolled, strict=True):
        for method in METHODS:
            x, y = a.values[method], b.values[method]
            if x is None or y is None:
                assert x is None and y is None, (method, x, y)
            elif isinstance(x, int) and not isinstance(x, bool) and method in ("totalCount", "min", "max"):
                assert x == y, (method, x, y)
            elif method == "stddev":
                # sqrt(E[x²] − E[x]²) against PostgreSQL's stddev_pop: equal up to cancellation near 0.
                assert math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-3), (method, x, y)
            else:
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6), (method, x, y)


async def compare(conn: Any, tenant: str, ids: list[str]) -> int:
    used = 0
    for tq in queries():
        raw = await sql.aggregate(conn, tenant, ids, tq)
        grain = sql.rollup_grain(tq)
        if grain is None:
            continue
        used += 1
        same(raw, await sql.aggregate(conn, tenant, ids, tq, grain))
    return used


# Shrinking is off: each example is several transactions, and a failure's case is printed as generated.
@settings(max_examples=25, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(first=st.lists(instance, min_size=1, max_size=40), late=st.lists(instance, max_size=15),
       deletions=st.lists(st.integers(0, 60), max_size=4), edits=st.lists(st.tuples(st.integers(0, 60), values,
                                                                                  st.integers(0, SPAN_MINUTES - 1)),
                                                                        max_size=3))
async def test_rollups_answer_as_the_raw_rows_do(app: Any, first: list[Any], late: list[Any], deletions: list[int],
                                                 edits: list[tuple[int, Any, int]]) -> None:
    engine, store = app.state.engine, app.state.hub.service.store
    tenant = f"rollup{uuid.uuid4().hex[:12]}"
    ids = [f"urn:ngsi-ld:Probe:{n}" for n in range(3)]
    async with write_transaction(engine, store.write_lock) as conn:
        await store.write_history(conn, tenant, [_row(*i) for i in first])
    # Late and out-of-order instances, in a later transaction.
    if late:
        async with write_transaction(engine, store.write_lock) as conn:
            await store.write_history(conn, tenant, [_row(*i) for i in late])
    async with write_transaction(engine, store.write_lock) as conn:
        picked = [r[0] for r in await conn.execute(text(
            "SELECT instance_id FROM hub_attribute_history WHERE tenant = :t "
            "ORDER BY ts, entity_id, attr, instance_id"),
            {"t": tenant})]
        for k in deletions:
            if picked:
                await conn.execute(text("DELETE FROM hub_attribute_history WHERE tenant = :t AND instance_id = :i"),
                                   {"t": tenant, "i": picked[k % len(picked)]})
        for k, value, minute in edits:
            if picked:
                moved = BASE + timedelta(minutes=minute)
                doc = {"type": "Property", "value": value, "observedAt": clock.iso(moved)}
                # An instance edit, as the temporal API's PATCH of an instance does it.
                await conn.execute(update(attribute_history).where(
                    attribute_history.c.tenant == tenant, attribute_history.c.instance_id == picked[k % len(picked)])
                    .values(ts=moved, instance=doc))
    async with write_transaction(engine, store.write_lock) as conn:
        await rollups.refresh(conn, tenant)
    async with store.read() as conn:
        assert not await rollups.has_dirty(conn, tenant)
        assert await compare(conn, tenant, ids) >= 6


# ---------------------------------------------------------------------- which queries use the rollups


@pytest.mark.parametrize(("period", "lower", "upper", "prop", "methods", "grain"), [
    (timedelta(hours=1), BASE, BASE + timedelta(days=1), "observedAt", ["avg"], "h"),
    (timedelta(days=1), BASE, BASE + timedelta(days=2), "observedAt", ["avg", "max"], "d"),
    (timedelta(hours=48), BASE, None, "observedAt", ["sum"], "d"),
    (timedelta(hours=6), BASE, None, "observedAt", ["sum"], "h"),
    (None, BASE, BASE + timedelta(days=1), "observedAt", ["min"], "d"),
    (None, BASE + timedelta(hours=3), None, "observedAt", ["min"], "h"),
    (None, None, None, "observedAt", ["totalCount"], "d"),
    (timedelta(minutes=30), BASE, None, "observedAt", ["avg"], None),  # finer than an hour
    (timedelta(minutes=90), BASE, None, "observedAt", ["avg"], None),  # not a multiple of an hour
    (timedelta(hours=1), BASE + timedelta(minutes=5), None, "observedAt", ["avg"], None),  # window off the hour
    (timedelta(hours=1), BASE, BASE + timedelta(minutes=90), "observedAt", ["avg"], None),
    (timedelta(hours=1), BASE, None, "modifiedAt", ["avg"], None),  # rollups are by observedAt
    (timedelta(hours=1), BASE, None, "observedAt", ["avg", "distinctCount"], None),  # needs the values
])
def test_grain_choice(period: timedelta | None, lower: datetime | None, upper: datetime | None, prop: str,
                      methods: list[str], grain: str | None) -> None:
    assert rollups.grain_for(period, lower or rollups.EPOCH, lower, upper, prop, methods) == grain


def test_rollups_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    tq = TemporalQuery(timerel="between", time_at=BASE, end_time_at=BASE + timedelta(days=1), aggr_methods=["avg"],
                       aggr_period=timedelta(hours=1))
    assert sql.rollup_grain(tq) == "h"
    monkeypatch.setenv("CITYOS_TEMPORAL_ROLLUPS", "0")
    assert sql.rollup_grain(tq) is None


# ---------------------------------------------------------------------- through the API


def bound(minutes: float) -> str:
    """A bucket bound in whole seconds is written without milliseconds (like the timeAt it comes from)."""
    return at(minutes).replace(".000Z", "Z")


async def test_api_aggregation_after_late_instances_and_an_instance_deletion(client: httpx.AsyncClient,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporal API's hourly averages, from the rollups, match the raw computation after instances
    arrive out of order and one is deleted through the API (which marks its buckets for recomputation)."""
    await post_series(client, sensor(1), [(10, at(5)), (20, at(65)), (30, at(70))])
    await post_series(client, sensor(1), [(40, at(10)), (50, at(130))])  # late, out of order
    instances = (await client.get(f"{T}/{sensor(1)}", params={"attrs": "temperature"})).json()["temperature"]
    doomed = next(i for i in instances if i["value"] == 30)
    r = await client.delete(f"{T}/{sensor(1)}/attrs/temperature/{doomed['instanceId']}")
    assert r.status_code == 204, r.text
    params = {"attrs": "temperature", "options": "aggregatedValues", "aggrMethods": "avg,max,totalCount",
              "aggrPeriodDuration": "PT1H", "timerel": "between", "timeAt": at(0), "endTimeAt": at(180)}
    rolled = await client.get(f"{T}/{sensor(1)}", params=params)
    assert rolled.status_code == 200, rolled.text
    monkeypatch.setenv("CITYOS_TEMPORAL_ROLLUPS", "0")
    raw = await client.get(f"{T}/{sensor(1)}", params=params)
    assert rolled.json() == raw.json()
    hourly = rolled.json()["temperature"]
    assert hourly["avg"] == [[25.0, bound(0), bound(60)], [20.0, bound(60), bound(120)], [50.0, bound(120), bound(180)]]
    assert hourly["totalCount"][1][0] == 1  # the deleted 30 is gone from its hour


async def test_bad_aggregation_requests_still_refused(client: httpx.AsyncClient) -> None:
    await post_series(client, sensor(2), [(1, at(1))])
    for params in ({"options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "PT1X"},
                   {"options": "aggregatedValues", "aggrMethods": "median", "aggrPeriodDuration": "PT1H"},
                   {"options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "PT1H",
                    "timerel": "between", "timeAt": "yesterday"}):
        r = await client.get(f"{T}/{sensor(2)}", params=params)
        assert r.status_code == 400, (params, r.text)


async def test_extreme_values_never_fail_a_write(client: httpx.AsyncClient) -> None:
    """Squares beyond float8 (1e-300², 1e300²) and sums beyond it (1.7e308 + 1.7e308) are written; the
    aggregation answers (from the rollups or, where they cannot hold the sum, from the raw rows)."""
    await post_series(client, sensor(3), [(1e-300, at(1)), (1e300, at(2)), (1.7e308, at(3)), (1.7e308, at(4))])
    await post_series(client, sensor(3), [(1.7e308, at(5))])
    r = await client.get(f"{T}/{sensor(3)}", params={
        "attrs": "temperature", "options": "aggregatedValues", "aggrMethods": "max,min,totalCount",
        "aggrPeriodDuration": "PT1H", "timerel": "between", "timeAt": at(0), "endTimeAt": at(60)})
    assert r.status_code == 200, r.text
    body = r.json()["temperature"]
    assert body["max"][0][0] == 1.7e308 and body["min"][0][0] == 1e-300 and body["totalCount"][0][0] == 5
