"""Aggregated buckets as series (issue #13, "Speed"): one row per (entity, attribute, datasetId) from
PostgreSQL, its arrays in time order whatever order the database folded them in; the flat `BucketRow`
view equals the series; the buckets written as JSON text are the [value, start, end] triples byte for
byte. Pure functions over rows as the driver returns them: no database needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from cityos.hub.temporal import sql
from cityos.hub.temporal.params import TemporalQuery
from cityos.hub.temporal.render import _buckets_json

START = datetime(2026, 11, 20, tzinfo=UTC)
HOUR = timedelta(hours=1)


def micros(moment: datetime) -> int:
    return (moment - sql.EPOCH) // timedelta(microseconds=1)


def hourly(methods: list[str]) -> TemporalQuery:
    return TemporalQuery(timerel="between", time_at=START, end_time_at=START + 3 * HOUR, aggr_methods=methods,
                         aggr_period=HOUR, representation="aggregatedValues")


def test_a_series_folded_out_of_time_order_is_put_back_in_order() -> None:
    tq = hourly(["totalCount", "avg"])
    keys = [micros(START + 2 * HOUR), micros(START), micros(START + HOUR)]
    row = ("urn:ngsi-ld:Probe:1", "https://example.org/pm25", None, keys, [3, 1, 2], [30.0, 10.0, 20.0])
    series = sql._pg_series(row, tq, {})
    assert [b.start for b in series.bounds] == [START, START + HOUR, START + 2 * HOUR]
    assert [b.end for b in series.bounds] == [START + HOUR, START + 2 * HOUR, START + 3 * HOUR]
    assert series.values == {"totalCount": [1, 2, 3], "avg": [10.0, 20.0, 30.0]}
    assert [b.start_text for b in series.bounds] == ["2026-11-20T00:00:00Z", "2026-11-20T01:00:00Z",
                                                     "2026-11-20T02:00:00Z"]


def test_bounds_are_shared_between_series_and_exact_to_the_microsecond() -> None:
    tq = hourly(["max"])
    odd = START + timedelta(microseconds=123456)
    bounds: dict[object, object] = {}
    a = sql._pg_series(("urn:a", "urn:x", None, [micros(odd)], [1.5]), tq, bounds)
    b = sql._pg_series(("urn:b", "urn:x", "urn:ds", [micros(odd)], [None]), tq, bounds)
    assert a.bounds[0] is b.bounds[0]
    assert a.bounds[0].start == odd and a.bounds[0].start_text == "2026-11-20T00:00:00.123Z"
    assert b.values == {"max": [None]}


def test_series_with_the_same_buckets_share_one_list_of_bounds() -> None:
    """The sensors of a page mostly have the same buckets: one list for all of them; a series with other
    buckets (a gap, or folded out of order and put back) gets its own list, built from the same bounds."""
    tq = hourly(["avg"])
    hours = [micros(START + k * HOUR) for k in range(3)]
    bounds: dict[object, object] = {}
    a = sql._pg_series(("urn:a", "urn:x", None, hours, [1.0, 2.0, 3.0]), tq, bounds)
    b = sql._pg_series(("urn:b", "urn:x", None, list(hours), [4.0, 5.0, 6.0]), tq, bounds)
    gap = sql._pg_series(("urn:c", "urn:x", None, [hours[0], hours[2]], [7.0, 9.0]), tq, bounds)
    late = sql._pg_series(("urn:d", "urn:x", None, [hours[2], hours[0], hours[1]], [3.0, 1.0, 2.0]), tq, bounds)
    assert a.bounds is b.bounds and late.bounds is a.bounds
    assert gap.bounds is not a.bounds and [x.start for x in gap.bounds] == [START, START + 2 * HOUR]
    assert gap.bounds[1] is a.bounds[2]
    assert (b.values, gap.values, late.values) == ({"avg": [4.0, 5.0, 6.0]}, {"avg": [7.0, 9.0]},
                                                   {"avg": [1.0, 2.0, 3.0]})


def test_decimals_from_a_numeric_aggregate_become_floats() -> None:
    from decimal import Decimal

    series = sql._pg_series(("urn:a", "urn:x", None, [micros(START)], [Decimal("2.5")]), hourly(["sum"]), {})
    assert series.values["sum"] == [2.5] and isinstance(series.values["sum"][0], float)


def test_without_a_period_the_bucket_spans_the_window_or_the_instances() -> None:
    tq = TemporalQuery(timerel="after", time_at=START, aggr_methods=["totalCount"],
                       representation="aggregatedValues")
    last = START + 5 * HOUR
    series = sql._pg_series(("urn:a", "urn:x", None, [0], [4], [START + HOUR], [last]), tq, {})
    assert (series.bounds[0].start, series.bounds[0].end) == (START, last)


def test_the_flat_rows_are_the_series() -> None:
    tq = hourly(["min", "max"])
    series = sql._pg_series(("urn:a", "urn:x", "urn:ds", [micros(START), micros(START + HOUR)], [1.0, 2.0],
                             [3.0, 4.0]), tq, {})
    rows = series.rows()
    assert [(r.entity_id, r.attr, r.dataset_id, r.start, r.end, r.values) for r in rows] == [
        ("urn:a", "urn:x", "urn:ds", START, START + HOUR, {"min": 1.0, "max": 3.0}),
        ("urn:a", "urn:x", "urn:ds", START + HOUR, START + 2 * HOUR, {"min": 2.0, "max": 4.0}),
    ]


def triples_json(values: list[object], bounds: list[sql.Bound]) -> bytes:
    """What the renderer gave before it wrote the JSON text itself: one [value, start, end] list per bucket."""
    return orjson.dumps([[v, b.start_text, b.end_text] for v, b in zip(values, bounds, strict=True)])


def test_buckets_as_json_text_are_the_triples_byte_for_byte() -> None:
    bounds = [sql.Bound(START + i * HOUR, START + (i + 1) * HOUR) for i in range(9)]
    bounds[8] = sql.Bound(START + timedelta(microseconds=5), START + HOUR)  # a bound given with its fraction
    values: list[object] = [15.0, None, -0.0, 1e16, 1.5e-7, 123456789012345.67, float("nan"), 7, 20.35]
    rendered = _buckets_json(values, bounds)
    assert isinstance(rendered, orjson.Fragment)
    assert orjson.dumps({"avg": rendered}) == b'{"avg":' + triples_json(values, bounds) + b"}"
    assert orjson.loads(orjson.dumps(rendered))[8] == [20.35, "2026-11-20T00:00:00.000Z", "2026-11-20T01:00:00Z"]


def test_a_series_without_buckets_is_an_empty_array() -> None:
    assert orjson.dumps(_buckets_json([], [])) == b"[]"


def test_values_and_bounds_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 values for 1 buckets"):
        _buckets_json([1.0, 2.0], [sql.Bound(START, START + HOUR)])


def test_a_value_whose_json_holds_a_comma_is_rendered_as_triples() -> None:
    # Aggregates are numbers or null; should another value ever come, the text is still right.
    bounds = [sql.Bound(START, START + HOUR), sql.Bound(START + HOUR, START + 2 * HOUR)]
    values: list[object] = [[1, 2], "a,b"]
    assert orjson.dumps(_buckets_json(values, bounds)) == triples_json(values, bounds)
