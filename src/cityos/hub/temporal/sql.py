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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
from cityos.hub.temporal.params import TemporalQuery

SQLITE_PAIRS_PER_STATEMENT = 200  # SQLite allows 500 terms in a compound SELECT


@dataclass
class InstanceRow:
    entity_id: str
    attr: str
    instance_id: str
    dataset_id: str | None
    time: datetime
    deleted: bool
    instance: dict[str, Any]


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
    """observedAt is `ts` (observedAt, else modifiedAt, as recorded); createdAt is read from the instance."""
    if prop == "observedAt":
        return h.c.ts
    if prop == "modifiedAt":
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
             "entity_id = ANY(CAST(:ids AS varchar[]))" if pg else "entity_id IN :ids"]
    binds.append(bindparam("ids", expanding=not pg))
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
           "GROUP BY entity_id, attr, dataset_id, bucket ORDER BY entity_id, attr, dataset_id, bucket")
    return sql, binds


async def aggregate(conn: AsyncConnection, tenant: str, entity_ids: Sequence[str],
                    tq: TemporalQuery) -> list[BucketRow]:
    if not entity_ids:
        return []
    dialect = conn.dialect.name
    sql, binds = _aggregate_sql(tq, dialect, bool(tq.attrs))
    params: dict[str, Any] = {"tenant": tenant, "ids": list(entity_ids)}
    if tq.attrs:
        params["attrs"] = list(tq.attrs)
    if tq.lower is not None:
        params["lower"] = _bound(tq.timeproperty, dialect, tq.lower)
    if tq.upper is not None:
        params["upper"] = _bound(tq.timeproperty, dialect, tq.upper)
    period = tq.aggr_period
    if period is not None:
        if dialect == "postgresql":
            params.update(period=period, origin=tq.origin)
        else:
            params.update(period_ms=int(period.total_seconds()) * 1000,
                          origin_ms=round((tq.origin - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000))
    if dialect == "postgresql":
        # The default 4 MB makes a day of 1,000 sensors spill its group-by to disk.
        await conn.execute(text("SET LOCAL work_mem = '64MB'"))
    rows = await conn.execute(text(sql).bindparams(*binds), params)
    return [_bucket(row, tq, dialect) for row in rows]


def _bucket(row: Any, tq: TemporalQuery, dialect: str) -> BucketRow:
    period = tq.aggr_period
    if period is None:
        start = tq.lower or utc(row.t_min)
        end = tq.upper or utc(row.t_max)
    else:
        start = utc(row.bucket) if dialect == "postgresql" else tq.origin + period * row.bucket
        end = start + period
    values = {m: _number(row._mapping[m]) for m in tq.aggr_methods}
    if dialect != "postgresql" and values.get("stddev") is not None:
        values["stddev"] = math.sqrt(max(values["stddev"], 0.0))  # rounding can leave -1e-17
    return BucketRow(row.entity_id, row.attr, row.dataset_id, start, end, values)


def _number(value: Any) -> Any:
    if value is None or isinstance(value, int | float):
        return value
    return float(value)  # Decimal from a numeric aggregate

