"""SQL over `hub_attribute_history` for temporal reads, one function per question.

Both questions run in the database:

- instances: per (entity, attribute) an ``ORDER BY time LIMIT n`` read of the
  (tenant, entity_id, attr, ts) index. On PostgreSQL all pairs go in one statement through
  ``unnest(...) JOIN LATERAL``; SQLite has no LATERAL, so the pairs go as a UNION ALL of limited
  sub-selects, a few hundred per statement.
- aggregates: one GROUP BY over (entity, attribute, datasetId, bucket). PostgreSQL buckets with
  ``date_bin`` and aggregates the generated column ``num`` (the numeric value, migration 0002),
  which the (tenant, entity_id, attr, ts) index carries, so the scan never leaves the index;
  SQLite buckets by integer milliseconds since the origin, reads the value from the JSON and
  derives the standard deviation from the sum and the sum of squares.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    String,
    bindparam,
    cast,
    func,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, INTERVAL
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cityos.core import clock
from cityos.hub.models import Timestamp
from cityos.hub.models import attribute_history as h
from cityos.hub.temporal import rollups
from cityos.hub.temporal.params import TemporalQuery

SQLITE_PAIRS_PER_STATEMENT = 200  # SQLite allows 500 terms in a compound SELECT
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class InstanceRow:
    entity_id: str
    attr: str
    instance_id: str
    dataset_id: str | None
    time: datetime
    deleted: bool
    instance: dict[str, Any]


class Bound:
    """A bucket's start and end, and the two as DateTimes, formatted once for every series that has it;
    `json_tail` is what follows the value in the bucket's JSON triple: `,"<start>","<end>"`."""

    __slots__ = ("end", "end_text", "json_tail", "start", "start_text")

    def __init__(self, start: datetime, end: datetime) -> None:
        self.start, self.end = start, end
        self.start_text, self.end_text = bucket_time(start), bucket_time(end)
        self.json_tail = b"," + orjson.dumps([self.start_text, self.end_text])[1:-1]


@dataclass(slots=True)
class BucketSeries:
    """The buckets of one (entity, attribute, datasetId), in time order, as columns: `bounds[i]` and
    `values[method][i]` are bucket i. No object per bucket: an aggregation of 1,000 entities has 24,000."""

    entity_id: str
    attr: str
    dataset_id: str | None
    bounds: list[Bound]
    values: dict[str, list[Any]]

    def rows(self) -> list[BucketRow]:
        return [BucketRow(self.entity_id, self.attr, self.dataset_id, b.start, b.end,
                          {m: column[i] for m, column in self.values.items()})
                for i, b in enumerate(self.bounds)]


@functools.lru_cache(maxsize=4096)
def bucket_time(moment: datetime) -> str:
    """A bucket bound as a DateTime. The bounds come from timeAt or an instance's time, written by a client,
    usually in whole seconds: those are given as written ("…T14:03:00Z", §4.5.19), others with milliseconds."""
    if moment.microsecond == 0:
        return moment.astimezone(UTC).isoformat(timespec="seconds")[:-6] + "Z"
    return clock.iso(moment)


@dataclass
class BucketRow:
    entity_id: str
    attr: str
    dataset_id: str | None
    start: datetime
    end: datetime
    values: dict[str, Any]


def utc(value: Any) -> datetime:
    """A timestamp as the drivers return it (aware, naive UTC from SQLite, or text) → aware UTC."""
    if isinstance(value, str):
        return clock.parse_iso(value.replace(" ", "T"))
    if not isinstance(value, datetime):
        raise TypeError(f"not a timestamp: {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---------------------------------------------------------------------- time window


def time_column(prop: str, dialect: str) -> ColumnElement[Any]:
    """observedAt is `ts` (observedAt, else modifiedAt, as recorded); createdAt is read from the instance;
    deletedAt is when a deletion was recorded (its modified_at; `window` keeps only deletions then)."""
    if prop == "observedAt":
        return h.c.ts
    if prop in ("modifiedAt", "deletedAt"):
        return h.c.modified_at
    if dialect == "postgresql":
        return cast(h.c.instance["createdAt"].as_string(), Timestamp)
    # Every createdAt is written by clock.iso, so the text sorts and compares as time does.
    return func.json_extract(h.c.instance, "$.createdAt")


def _bound(prop: str, dialect: str, moment: datetime) -> Any:
    return clock.iso(moment) if prop == "createdAt" and dialect == "sqlite" else moment


def window(tq: TemporalQuery, dialect: str) -> list[ColumnElement[bool]]:
    column = time_column(tq.timeproperty, dialect)
    conds: list[ColumnElement[bool]] = []
    if tq.timeproperty == "deletedAt":
        conds.append(h.c.deleted != 0)  # §5.7.3: the evolution along deletedAt is that of the deletions
    if tq.lower is not None:
        conds.append(column >= _bound(tq.timeproperty, dialect, tq.lower))
    if tq.upper is not None:
        conds.append(column < _bound(tq.timeproperty, dialect, tq.upper))
    return conds


# ---------------------------------------------------------------------- (entity, attribute) pairs

_PG_ATTRS_OF_ENTITIES = text("""
SELECT e.entity_id, a.attr FROM unnest(CAST(:ids AS varchar[])) AS e(entity_id)
CROSS JOIN LATERAL (
  WITH RECURSIVE r(attr) AS (
    SELECT min(attr) FROM hub_attribute_history WHERE tenant = :tenant AND entity_id = e.entity_id
    UNION ALL
    SELECT (SELECT min(x.attr) FROM hub_attribute_history x
            WHERE x.tenant = :tenant AND x.entity_id = e.entity_id AND x.attr > r.attr)
    FROM r WHERE r.attr IS NOT NULL
  )
  SELECT attr FROM r WHERE attr IS NOT NULL
) a
""")


async def attribute_pairs(conn: AsyncConnection, tenant: str, entity_ids: Sequence[str],
                          attrs: Sequence[str] | None) -> list[tuple[str, str]]:
    """The (entity, attribute) pairs that have history, in entity order."""
    if not entity_ids:
        return []
    if attrs:
        # A pair without history costs one index probe that finds nothing.
        return [(e, a) for e in entity_ids for a in attrs]
    if conn.dialect.name == "postgresql":
        # A loose index scan: a few index probes per attribute, however long the history.
        rows = await conn.execute(_PG_ATTRS_OF_ENTITIES, {"ids": list(entity_ids), "tenant": tenant})
    else:
        rows = await conn.execute(
            select(h.c.entity_id, h.c.attr).distinct()
            .where(h.c.tenant == tenant, h.c.entity_id.in_(list(entity_ids))))
    found = {(row[0], row[1]) for row in rows}
    order = {entity_id: i for i, entity_id in enumerate(entity_ids)}
    return sorted(found, key=lambda pair: (order[pair[0]], pair[1]))


# ---------------------------------------------------------------------- instances


def _instance_columns(tq: TemporalQuery, dialect: str) -> list[ColumnElement[Any]]:
    return [h.c.entity_id, h.c.attr, h.c.instance_id, h.c.dataset_id, h.c.deleted, h.c.instance,
            time_column(tq.timeproperty, dialect).label("moment")]


async def read_instances(conn: AsyncConnection, tenant: str, pairs: Sequence[tuple[str, str]], tq: TemporalQuery,
                         limit: int, newest_first: bool) -> list[InstanceRow]:
    """At most `limit` instances per pair, the oldest (or newest) of the window."""
    if not pairs:
        return []
    dialect = conn.dialect.name
    column = time_column(tq.timeproperty, dialect)
    order = column.desc() if newest_first else column.asc()
    conds = window(tq, dialect)
    rows: list[Any] = []
    if dialect == "postgresql":
        p = func.unnest(bindparam("pair_ids", [e for e, _ in pairs], type_=ARRAY(String)),
                        bindparam("pair_attrs", [a for _, a in pairs], type_=ARRAY(String))
                        ).table_valued("entity_id", "attr").render_derived(name="p")
        picked = (select(*_instance_columns(tq, dialect))
                  .where(h.c.tenant == tenant, h.c.entity_id == p.c.entity_id, h.c.attr == p.c.attr, *conds)
                  .order_by(order).limit(limit).lateral("x"))
        rows = list(await conn.execute(select(picked).select_from(p.join(picked, true()))))
    else:
        for start in range(0, len(pairs), SQLITE_PAIRS_PER_STATEMENT):
            parts = [
                select(select(*_instance_columns(tq, dialect))
                       .where(h.c.tenant == tenant, h.c.entity_id == entity_id, h.c.attr == attr, *conds)
                       .order_by(order).limit(limit).subquery())
                for entity_id, attr in pairs[start:start + SQLITE_PAIRS_PER_STATEMENT]
            ]
            stmt = parts[0] if len(parts) == 1 else union_all(*parts)
            rows.extend(await conn.execute(stmt))
    return [InstanceRow(r.entity_id, r.attr, r.instance_id, r.dataset_id, utc(r.moment), bool(r.deleted), r.instance)
            for r in rows]


# ---------------------------------------------------------------------- aggregates

_PG_VALUE = ("coalesce(instance->'value', instance->'object', instance->'languageMap', instance->'valueList', "
             "instance->'objectList', instance->'json', instance->'vocab')")
_SQLITE_VALUE = ("coalesce(json_extract(instance, '$.value'), json_extract(instance, '$.object'), "
                 "json_extract(instance, '$.languageMap'), json_extract(instance, '$.valueList'), "
                 "json_extract(instance, '$.objectList'), json_extract(instance, '$.json'), "
                 "json_extract(instance, '$.vocab'))")
# On PostgreSQL `num` is a stored generated column (migration 0002) kept in the covering index.
_PG_NUM = "num"
_SQLITE_NUM = ("CASE WHEN json_type(instance, '$.value') IN ('integer', 'real') "
               "THEN json_extract(instance, '$.value') END")

_PG_AGGREGATES = {
    "totalCount": "count(*)", "distinctCount": "count(DISTINCT v)", "sum": "sum(num)", "avg": "avg(num)",
    "min": "min(num)", "max": "max(num)", "stddev": "stddev_pop(num)", "sumsq": "sum(num * num)",
}
# SQLite has no stddev: the population variance comes from the sum of squares and the mean.
_SQLITE_AGGREGATES = {
    **_PG_AGGREGATES,
    "stddev": "sum(num * num) * 1.0 / count(num) - avg(num) * avg(num)",
    "sumsq": "sum(num * num) * 1.0",
}
# time_column() as SQL text, for the hand-written aggregate.
_PG_TIME = {"observedAt": "ts", "modifiedAt": "modified_at", "createdAt": "(instance->>'createdAt')::timestamptz"}
_SQLITE_TIME = {"observedAt": "ts", "modifiedAt": "modified_at", "createdAt": "json_extract(instance, '$.createdAt')"}


def _sqlite_millis(expr: str) -> str:
    """Integer milliseconds since the Unix epoch of a SQLite timestamp text: exact, unlike julianday."""
    return f"(CAST(strftime('%s', {expr}) AS INTEGER) * 1000 + CAST(substr(strftime('%f', {expr}), 4, 3) AS INTEGER))"


def _aggregate_sql(tq: TemporalQuery, dialect: str, with_attrs: bool) -> tuple[str, list[Any]]:
    pg = dialect == "postgresql"
    t = (_PG_TIME if pg else _SQLITE_TIME)[tq.timeproperty]
    aggregates = _PG_AGGREGATES if pg else _SQLITE_AGGREGATES
    binds: list[Any] = [bindparam("tenant")]
    if tq.aggr_period is None:
        bucket = "0"
    elif pg:
        bucket = f"date_bin(:period, {t}, :origin)"
        binds += [bindparam("period", type_=INTERVAL()), bindparam("origin", type_=Timestamp)]
    else:
        # Floor division that also holds before the origin (SQLite's integer division truncates).
        d = f"({_sqlite_millis(t)} - :origin_ms)"
        bucket = f"CASE WHEN {d} >= 0 THEN {d} / :period_ms ELSE -((-{d} + :period_ms - 1) / :period_ms) END"
    inner = [f"entity_id, attr, dataset_id, {bucket} AS bucket, {t} AS t, {_PG_NUM if pg else _SQLITE_NUM} AS num"]
    if "distinctCount" in tq.aggr_methods:
        inner.append(f"{_PG_VALUE if pg else _SQLITE_VALUE} AS v")
    where = ["tenant = :tenant", "deleted = 0",
             # PostgreSQL: one entity of the page at a time (`_series_sql`'s LATERAL), read in index order.
             "entity_id = p.entity_id" if pg else "entity_id IN :ids"]
    if not pg:
        binds.append(bindparam("ids", expanding=True))
    if with_attrs:
        where.append("attr = ANY(CAST(:attrs AS varchar[]))" if pg else "attr IN :attrs")
        binds.append(bindparam("attrs", expanding=not pg))
    time_type = Timestamp if pg or tq.timeproperty != "createdAt" else String()
    if tq.lower is not None:
        where.append(f"{t} >= :lower")
        binds.append(bindparam("lower", type_=time_type))
    if tq.upper is not None:
        where.append(f"{t} < :upper")
        binds.append(bindparam("upper", type_=time_type))
    outer = ", ".join(f'{aggregates[m]} AS "{m}"' for m in tq.aggr_methods)
    sql = (f"SELECT entity_id, attr, dataset_id, bucket, {outer}, min(t) AS t_min, max(t) AS t_max "
           f"FROM (SELECT {', '.join(inner)} FROM hub_attribute_history WHERE {' AND '.join(where)}) s "
           f"GROUP BY entity_id, attr, dataset_id, bucket ORDER BY {_series_order(pg, 'dataset_id')}, bucket")
    return sql, binds


def _series_order(pg: bool, dataset: str) -> str:
    """How buckets are sorted: by series, then by time. Which entity or attribute comes first does not matter
    (the answer follows the page's order and sorts attributes), so PostgreSQL compares them bytewise, not by
    the database's collation (several times cheaper: the ids share long prefixes). The datasetIds of an
    attribute keep the collation's order, the default instance (NULL) last."""
    if pg:
        return f'entity_id COLLATE "C", attr COLLATE "C", {dataset}'
    return f"entity_id, attr, {dataset}"


# What each method is over the rollup rows of a bucket (see `rollups`); SQLite's stddev is the variance,
# as in _SQLITE_AGGREGATES (the square root is taken in Python).
_PG_ROLLUP_AGGREGATES = {
    "totalCount": "CAST(sum(total) AS bigint)", "sum": "sum(sum)", "avg": "sum(sum) / CAST(sum(n) AS float8)",
    "min": "min(min)", "max": "max(max)", "sumsq": "sum(sumsq)",
    "stddev": "CASE WHEN sum(n) > 0 THEN sqrt(greatest(sum(sumsq) / CAST(sum(n) AS float8) "
              "- power(sum(sum) / CAST(sum(n) AS float8), 2), 0)) END",
}
_SQLITE_ROLLUP_AGGREGATES = {
    "totalCount": "sum(total)", "sum": "sum(sum)", "avg": "sum(sum) * 1.0 / sum(n)", "min": "min(min)",
    "max": "max(max)", "sumsq": "sum(sumsq) * 1.0",
    "stddev": "sum(sumsq) * 1.0 / sum(n) - (sum(sum) * 1.0 / sum(n)) * (sum(sum) * 1.0 / sum(n))",
}


# The same, over one rollup row (a query whose period is the grain: each bucket is one row, no grouping).
_PG_ROLLUP_ROW = {
    "totalCount": "total", "sum": "sum", "avg": "sum / CAST(n AS float8)", "min": "min", "max": "max", "sumsq": "sumsq",
    "stddev": "CASE WHEN n > 0 THEN sqrt(greatest(sumsq / CAST(n AS float8) "
              "- power(sum / CAST(n AS float8), 2), 0)) END",
}
_SQLITE_ROLLUP_ROW = {
    "totalCount": "total", "sum": "sum", "avg": "sum * 1.0 / n", "min": "min", "max": "max", "sumsq": "sumsq * 1.0",
    "stddev": "sumsq * 1.0 / n - (sum * 1.0 / n) * (sum * 1.0 / n)",
}


def rollup_grain(tq: TemporalQuery) -> str | None:
    """The rollup grain that answers `tq` exactly, or None when the raw rows must be read."""
    if not rollups.enabled():
        return None
    return rollups.grain_for(tq.aggr_period, tq.origin, tq.lower, tq.upper, tq.timeproperty, tq.aggr_methods)


def _rollup_sql(tq: TemporalQuery, dialect: str, with_attrs: bool, grain: str) -> tuple[str, list[Any]]:
    pg = dialect == "postgresql"
    binds: list[Any] = [bindparam("tenant"), bindparam("grain")]
    if tq.aggr_period is None:
        bucket = "0"
    elif pg:
        bucket = "date_bin(:period, bucket, :origin)"
        binds += [bindparam("period", type_=INTERVAL()), bindparam("origin", type_=Timestamp)]
    else:
        d = f"({_sqlite_millis('bucket')} - :origin_ms)"
        bucket = f"CASE WHEN {d} >= 0 THEN {d} / :period_ms ELSE -((-{d} + :period_ms - 1) / :period_ms) END"
    where = ["tenant = :tenant", "grain = :grain", "total > 0",
             # PostgreSQL: one entity of the page at a time (`_series_sql`'s LATERAL), read in index order.
             "entity_id = p.entity_id" if pg else "entity_id IN :ids"]
    if not pg:
        binds.append(bindparam("ids", expanding=True))
    if with_attrs:
        where.append("attr = ANY(CAST(:attrs AS varchar[]))" if pg else "attr IN :attrs")
        binds.append(bindparam("attrs", expanding=not pg))
    if tq.lower is not None:
        where.append("bucket >= :lower")
        binds.append(bindparam("lower", type_=Timestamp))
    if tq.upper is not None:
        where.append("bucket < :upper")
        binds.append(bindparam("upper", type_=Timestamp))
    # NULLIF: the raw rows' NULL datasetId (the default instance) sorts where the raw query sorts it.
    order = "ORDER BY " + _series_order(pg, "NULLIF(dataset_key, '')") + ", 4"
    if tq.aggr_period == rollups.GRAINS[grain]:
        # Each bucket is one rollup row (the origin is on a grain boundary): no grouping. On PostgreSQL
        # (one entity at a time, `_series_sql`) no sort either: the primary key's range for the entity
        # gives each (attribute, datasetId)'s rows in bucket order, which array_agg keeps (`_pg_series`
        # checks it, and sorts a series if a plan ever gave it out of order).
        aggregates = _PG_ROLLUP_ROW if pg else _SQLITE_ROLLUP_ROW
        outer = ", ".join(f'{aggregates[m]} AS "{m}"' for m in tq.aggr_methods)
        return (f"SELECT entity_id, attr, NULLIF(dataset_key, '') AS dataset_id, {bucket} AS bucket, {outer}, "
                f"t_min, t_max FROM hub_history_rollups WHERE {' AND '.join(where)}{'' if pg else ' ' + order}"), binds
    aggregates = _PG_ROLLUP_AGGREGATES if pg else _SQLITE_ROLLUP_AGGREGATES
    outer = ", ".join(f'{aggregates[m]} AS "{m}"' for m in tq.aggr_methods)
    sql = (f"SELECT entity_id, attr, NULLIF(dataset_key, '') AS dataset_id, {bucket} AS bucket, {outer}, "
           "min(t_min) AS t_min, max(t_max) AS t_max FROM hub_history_rollups "
           f"WHERE {' AND '.join(where)} GROUP BY entity_id, attr, dataset_key, 4 {order}")
    return sql, binds


async def aggregate(conn: AsyncConnection, tenant: str, entity_ids: Sequence[str],
                    tq: TemporalQuery, grain: str | None = None) -> list[BucketRow]:
    """The buckets of `tq`, one object each (see `aggregate_series`, which the API reads)."""
    return [bucket for series in await aggregate_series(conn, tenant, entity_ids, tq, grain)
            for bucket in series.rows()]


async def aggregate_series(conn: AsyncConnection, tenant: str, entity_ids: Sequence[str],
                           tq: TemporalQuery, grain: str | None = None) -> list[BucketSeries]:
    """The buckets of `tq`: from the rollups of `grain` when given (the caller refreshed them), else raw;
    one series per (entity, attribute, datasetId), in the order of the answer."""
    if not entity_ids:
        return []
    dialect = conn.dialect.name
    pg = dialect == "postgresql"
    if grain is not None:
        sql, binds = _rollup_sql(tq, dialect, bool(tq.attrs), grain)
    else:
        sql, binds = _aggregate_sql(tq, dialect, bool(tq.attrs))
    params: dict[str, Any] = {"tenant": tenant, "ids": list(entity_ids)}
    if grain is not None:
        params["grain"] = grain
    if tq.attrs:
        params["attrs"] = list(tq.attrs)
    if tq.lower is not None:
        params["lower"] = _bound(tq.timeproperty, dialect, tq.lower)
    if tq.upper is not None:
        params["upper"] = _bound(tq.timeproperty, dialect, tq.upper)
    period = tq.aggr_period
    if period is not None:
        if pg:
            params.update(period=period, origin=tq.origin)
        else:
            params.update(period_ms=int(period.total_seconds()) * 1000,
                          origin_ms=round((tq.origin - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000))
    if pg and grain is None:
        # The raw rows' group-by per entity can be large (a long window of one entity). It only takes effect
        # inside a transaction: the API's autocommit reads run with the server's setting. The rollup read
        # (per entity, at most one row per bucket) needs no more than the default, nor the round trip.
        await conn.execute(text("SET LOCAL work_mem = '64MB'"))
    methods = tq.aggr_methods
    if pg:
        binds.append(bindparam("ids"))
        # One row per series, its buckets as arrays (decoded by the driver, in C): no Python object per
        # bucket, and the entity id and attribute are sent once per series rather than once per bucket.
        sql = _series_sql(sql, methods, with_times=period is None)
    rows = await conn.execute(text(sql).bindparams(*binds), params)
    # Buckets of many entities share their bounds: each distinct one is converted and formatted once
    # (PostgreSQL: keyed by the bucket's start, and each distinct list of them by its tuple).
    bounds: dict[Any, Any] = {}
    if pg:
        return [_pg_series(row, tq, bounds) for row in rows]
    return _sqlite_series(rows, tq, bounds)


def _series_sql(per_bucket: str, methods: Sequence[str], with_times: bool) -> str:
    """The per-bucket statement of one entity (its condition `entity_id = p.entity_id`, ordered by attribute,
    datasetId, bucket) folded into one row per series, for each entity of the page in a LATERAL join.

    Entity by entity, the history (or rollup) rows of each come from one index range in index order and
    the sort before the grouping is of that entity's buckets only (none when each bucket is one rollup
    row): cheaper than sorting the buckets of the whole page by entity first (a page of 1,000 sensors
    has 24,000 hourly buckets a day)."""
    # No ORDER BY inside array_agg: on PostgreSQL 15 each one sorts its group again (one sort per method and
    # series). The sorted sub-select feeds the grouping in its order, which array_agg keeps; `_pg_series`
    # checks that each series came out in time order and sorts it if ever not.
    arrays = [f'array_agg(b."{m}") AS "{m}"' for m in methods]
    if with_times:
        arrays += ["array_agg(b.t_min) AS t_min", "array_agg(b.t_max) AS t_max"]
    # Bucket starts as integer microseconds since the epoch (exact: extract gives a numeric): the bounds are
    # looked up per bucket, and an int hashes far faster than an aware datetime.
    # Without a period there is one bucket per series (0), bounded by its instances' times.
    key = "b.bucket" if with_times else "CAST(extract(epoch FROM b.bucket) * 1000000 AS bigint)"
    # Series of an entity by attribute (bytewise: their order does not matter, attributes are sorted when
    # rendered), then datasetId in the collation's order, the default instance (NULL) last.
    return (f"SELECT x.* FROM unnest(CAST(:ids AS varchar[])) WITH ORDINALITY AS p(entity_id, position) "
            f"CROSS JOIN LATERAL (SELECT p.entity_id, b.attr, b.dataset_id, array_agg({key}) AS bucket_keys, "
            f"{', '.join(arrays)} FROM ({per_bucket}) b GROUP BY b.attr, b.dataset_id "
            f'ORDER BY b.attr COLLATE "C", b.dataset_id) x ORDER BY p.position')


def _bound_of(key: Any, tq: TemporalQuery, dialect: str, bounds: dict[Any, Any]) -> Bound:
    found = bounds.get(key)
    if found is None:
        period = tq.aggr_period
        assert period is not None
        # PostgreSQL gives the start in microseconds since the epoch, SQLite the bucket's number from the origin.
        first = EPOCH + timedelta(microseconds=key) if dialect == "postgresql" else tq.origin + period * key
        found = bounds[key] = Bound(first, first + period)
    return found


def _pg_series(row: Any, tq: TemporalQuery, bounds: dict[Any, Any]) -> BucketSeries:
    methods = tq.aggr_methods
    keys = row[3]
    if keys != sorted(keys):  # linear on a sorted list
        row = _in_time_order(row)
        keys = row[3]
    if tq.aggr_period is None:
        t_min, t_max = row[4 + len(methods)], row[5 + len(methods)]
        spans = [Bound(tq.lower or utc(a), tq.upper or utc(b)) for a, b in zip(t_min, t_max, strict=True)]
    else:
        # The sensors of a page mostly have the same buckets: one lookup per series for a list seen before
        # (shared between series, never changed after).
        span_key = tuple(keys)
        shared: list[Bound] | None = bounds.get(span_key)
        if shared is None:
            shared = bounds[span_key] = [bounds.get(key) or _bound_of(key, tq, "postgresql", bounds) for key in keys]
        spans = shared
    values = {m: _numbers(row[4 + i]) for i, m in enumerate(methods)}
    return BucketSeries(row[0], row[1], row[2], spans, values)


def _in_time_order(row: Any) -> tuple[Any, ...]:
    """A series whose arrays did not come in bucket order (array_agg follows its input): each array sorted
    by the bucket start."""
    order = sorted(range(len(row[3])), key=row[3].__getitem__)
    return (*row[:3], *([column[i] for i in order] for column in row[3:]))


def _sqlite_series(rows: Any, tq: TemporalQuery, bounds: dict[Any, Any]) -> list[BucketSeries]:
    # Columns: entity_id, attr, dataset_id, bucket, one per method, t_min, t_max; ordered by series, bucket.
    methods = tq.aggr_methods
    found: list[BucketSeries] = []
    current: BucketSeries | None = None
    for row in rows:
        if current is None or (row[0], row[1], row[2]) != (current.entity_id, current.attr, current.dataset_id):
            current = BucketSeries(row[0], row[1], row[2], [], {m: [] for m in methods})
            found.append(current)
        if tq.aggr_period is None:
            current.bounds.append(Bound(tq.lower or utc(row[-2]), tq.upper or utc(row[-1])))
        else:
            current.bounds.append(bounds.get(row[3]) or _bound_of(row[3], tq, "sqlite", bounds))
        for i, m in enumerate(methods):
            value = _number(row[4 + i])
            if m == "stddev" and value is not None:
                value = math.sqrt(max(value, 0.0))  # the variance (see _SQLITE_AGGREGATES); rounding can leave -1e-17
            current.values[m].append(value)
    return found


def _numbers(values: list[Any]) -> list[Any]:
    # The statements give float8 and bigint, which the driver returns as float and int; Decimal only from
    # a numeric aggregate. A column has one type: its first value tells.
    for first in values:  # a loop, not a generator: no object made per series
        if first is not None:
            return [_number(v) for v in values] if isinstance(first, Decimal) else values
    return values


def _number(value: Any) -> Any:
    if value is None or isinstance(value, int | float):
        return value
    return float(value)  # Decimal from a numeric aggregate


async def earliest(conn: AsyncConnection, tenant: str, entity_ids: Sequence[str], tq: TemporalQuery) -> datetime | None:
    """The earliest time (by `tq.timeproperty`) of the instances an aggregation would read: where its buckets
    start when the query gives no timeAt to start from (§4.5.19)."""
    if not entity_ids:
        return None
    pg = conn.dialect.name == "postgresql"
    t = (_PG_TIME if pg else _SQLITE_TIME)[tq.timeproperty]
    where = ["tenant = :tenant", "deleted = 0",
             "entity_id = ANY(CAST(:ids AS varchar[]))" if pg else "entity_id IN :ids"]
    binds: list[Any] = [bindparam("ids", expanding=not pg)]
    params: dict[str, Any] = {"tenant": tenant, "ids": list(entity_ids)}
    if tq.attrs:
        where.append("attr = ANY(CAST(:attrs AS varchar[]))" if pg else "attr IN :attrs")
        binds.append(bindparam("attrs", expanding=not pg))
        params["attrs"] = list(tq.attrs)
    if tq.upper is not None:
        where.append(f"{t} < :upper")
        binds.append(bindparam("upper", type_=Timestamp if pg or tq.timeproperty != "createdAt" else String()))
        params["upper"] = _bound(tq.timeproperty, conn.dialect.name, tq.upper)
    found = (await conn.execute(text(f"SELECT min({t}) FROM hub_attribute_history WHERE {' AND '.join(where)}")
                                .bindparams(*binds), params)).scalar_one_or_none()
    if found is None:
        return None
    return utc(found)
