"""Hourly and daily rollups of attribute history: what `aggregatedValues` reads instead of the raw rows.

`hub_history_rollups` holds, per (tenant, entity, attribute, datasetId, grain, bucket), the count of
instances and the count, sum, sum of squares, minimum and maximum of their numeric values, and the
first and last instance time: every aggregate the temporal API offers except `distinctCount` can be
composed from these (`sql.aggregate` falls back to the raw rows for that one).

Kept in the database, in the transaction that writes the history, whatever writes it (the hub, the
temporal API, IoT ingestion's COPY):
- inserts (PostgreSQL: one statement-level trigger per INSERT/COPY, aggregating the statement's rows
  from its transition table; SQLite: a row trigger) add into the buckets, so late and out-of-order
  instances land in their own bucket like any other;
- deletes and updates of history rows (instance edits and deletions through the temporal API,
  retention's row purges) cannot be subtracted from a minimum or maximum: their buckets are marked
  in `hub_history_rollup_dirty` (row triggers, which PostgreSQL runs for statements on a partition
  too), and recomputed from the raw rows by `refresh` before any rollup of that tenant is read;
- retention's whole-partition drops (no trigger sees them) delete the month's rollups themselves
  (`forget_range`).

Grains: 'h' (buckets of one hour from the Unix epoch, UTC) and 'd' (UTC days).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
GRAINS = {"h": HOUR, "d": DAY}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What a rollup row can answer (distinctCount needs the values themselves).
ROLLUP_METHODS = frozenset({"totalCount", "sum", "avg", "min", "max", "stddev", "sumsq"})

_KEY = "tenant, entity_id, attr, dataset_key, grain, bucket"
# num², without PostgreSQL's underflow and overflow errors (float8 raises them where SQLite gives 0 and inf).
_PG_SQUARE = ("CASE WHEN abs(num) < 1e-150 THEN 0 WHEN abs(num) > 1e150 THEN CAST('Infinity' AS float8) "
              "ELSE num * num END")
_COLUMNS = f"{_KEY}, total, n, sum, sumsq, min, max, t_min, t_max"

# ---------------------------------------------------------------------- DDL (migration 0017)

PG_DDL = [
    """CREATE TABLE hub_history_rollups (
        tenant VARCHAR(256) NOT NULL, entity_id VARCHAR(512) NOT NULL, attr VARCHAR(512) NOT NULL,
        dataset_key VARCHAR(512) NOT NULL, grain CHAR(1) NOT NULL, bucket TIMESTAMPTZ NOT NULL,
        total BIGINT NOT NULL, n BIGINT NOT NULL, sum DOUBLE PRECISION, sumsq DOUBLE PRECISION,
        min DOUBLE PRECISION, max DOUBLE PRECISION, t_min TIMESTAMPTZ, t_max TIMESTAMPTZ,
        CONSTRAINT pk_hub_history_rollups PRIMARY KEY (tenant, entity_id, attr, grain, bucket, dataset_key))""",
    """CREATE TABLE hub_history_rollup_dirty (
        tenant VARCHAR(256) NOT NULL, entity_id VARCHAR(512) NOT NULL, attr VARCHAR(512) NOT NULL,
        dataset_key VARCHAR(512) NOT NULL, grain CHAR(1) NOT NULL, bucket TIMESTAMPTZ NOT NULL,
        CONSTRAINT pk_hub_history_rollup_dirty PRIMARY KEY (tenant, entity_id, attr, grain, bucket, dataset_key))""",
    # Inserts: the statement's rows, grouped per bucket of each grain, added into the rollups in key order
    # (two writers touching the same buckets lock them in the same order).
    f"""CREATE FUNCTION hub_history_rollup_add() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO hub_history_rollups AS r ({_COLUMNS})
      SELECT tenant, entity_id, attr, coalesce(dataset_id, ''), g.grain,
             date_bin(g.step, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00'),
             count(*), count(num), sum(num), sum({_PG_SQUARE}), min(num), max(num), min(ts), max(ts)
      FROM new_rows CROSS JOIN (VALUES ('h', INTERVAL '1 hour'), ('d', INTERVAL '1 day')) AS g(grain, step)
      WHERE deleted = 0
      GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 5, 6, 4
      ON CONFLICT (tenant, entity_id, attr, grain, bucket, dataset_key) DO UPDATE SET
        total = r.total + excluded.total, n = r.n + excluded.n,
        sum = CASE WHEN r.sum IS NULL THEN excluded.sum WHEN excluded.sum IS NULL THEN r.sum
                   ELSE r.sum + excluded.sum END,
        sumsq = CASE WHEN r.sumsq IS NULL THEN excluded.sumsq WHEN excluded.sumsq IS NULL THEN r.sumsq
                     ELSE r.sumsq + excluded.sumsq END,
        min = LEAST(r.min, excluded.min), max = GREATEST(r.max, excluded.max),
        t_min = LEAST(r.t_min, excluded.t_min), t_max = GREATEST(r.t_max, excluded.t_max);
      RETURN NULL;
    EXCEPTION WHEN numeric_value_out_of_range THEN
      -- A sum beyond float8: never fail the write; the buckets are recomputed (or read raw) when asked.
      INSERT INTO hub_history_rollup_dirty (tenant, entity_id, attr, dataset_key, grain, bucket)
      SELECT DISTINCT tenant, entity_id, attr, coalesce(dataset_id, ''), g.grain,
             date_bin(g.step, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00')
      FROM new_rows CROSS JOIN (VALUES ('h', INTERVAL '1 hour'), ('d', INTERVAL '1 day')) AS g(grain, step)
      WHERE deleted = 0 ON CONFLICT DO NOTHING;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER hub_history_rollup_add AFTER INSERT ON hub_attribute_history
       REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION hub_history_rollup_add()""",
    # Deletes and updates: mark the buckets of the old (and new) row for recomputation.
    """CREATE FUNCTION hub_history_rollup_mark() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.deleted = 0 THEN
        INSERT INTO hub_history_rollup_dirty (tenant, entity_id, attr, dataset_key, grain, bucket)
        SELECT OLD.tenant, OLD.entity_id, OLD.attr, coalesce(OLD.dataset_id, ''), g.grain,
               date_bin(g.step, OLD.ts, TIMESTAMPTZ '1970-01-01 00:00:00+00')
        FROM (VALUES ('h', INTERVAL '1 hour'), ('d', INTERVAL '1 day')) AS g(grain, step)
        ON CONFLICT DO NOTHING;
      END IF;
      IF TG_OP = 'UPDATE' AND NEW.deleted = 0 THEN
        INSERT INTO hub_history_rollup_dirty (tenant, entity_id, attr, dataset_key, grain, bucket)
        SELECT NEW.tenant, NEW.entity_id, NEW.attr, coalesce(NEW.dataset_id, ''), g.grain,
               date_bin(g.step, NEW.ts, TIMESTAMPTZ '1970-01-01 00:00:00+00')
        FROM (VALUES ('h', INTERVAL '1 hour'), ('d', INTERVAL '1 day')) AS g(grain, step)
        ON CONFLICT DO NOTHING;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE TRIGGER hub_history_rollup_mark AFTER DELETE OR UPDATE ON hub_attribute_history
       FOR EACH ROW EXECUTE FUNCTION hub_history_rollup_mark()""",
]

PG_DROP = [
    "DROP TRIGGER IF EXISTS hub_history_rollup_mark ON hub_attribute_history",
    "DROP TRIGGER IF EXISTS hub_history_rollup_add ON hub_attribute_history",
    "DROP FUNCTION IF EXISTS hub_history_rollup_mark()",
    "DROP FUNCTION IF EXISTS hub_history_rollup_add()",
    "DROP TABLE IF EXISTS hub_history_rollup_dirty",
    "DROP TABLE IF EXISTS hub_history_rollups",
]

# SQLite: buckets as the text SQLAlchemy stores timestamps in ("YYYY-MM-DD HH:MM:SS.ffffff", UTC).
_SQLITE_HOUR = "'%Y-%m-%d %H:00:00.000000'"
_SQLITE_DAY = "'%Y-%m-%d 00:00:00.000000'"
_SQLITE_NUM = ("CASE WHEN json_type(NEW.instance, '$.value') IN ('integer', 'real') "
               "THEN json_extract(NEW.instance, '$.value') END")


def _sqlite_mark(row: str) -> str:
    return (f"INSERT INTO hub_history_rollup_dirty (tenant, entity_id, attr, dataset_key, grain, bucket) "
            f"SELECT {row}.tenant, {row}.entity_id, {row}.attr, coalesce({row}.dataset_id, ''), g.grain, "
            f"strftime(g.fmt, {row}.ts) FROM (SELECT 'h' AS grain, {_SQLITE_HOUR} AS fmt "
            f"UNION ALL SELECT 'd', {_SQLITE_DAY}) AS g WHERE true ON CONFLICT DO NOTHING;")


SQLITE_DDL = [
    # sum, sumsq, min and max have no type affinity: integers stay integers, as SQLite's own sum() keeps them.
    """CREATE TABLE hub_history_rollups (
        tenant VARCHAR(256) NOT NULL, entity_id VARCHAR(512) NOT NULL, attr VARCHAR(512) NOT NULL,
        dataset_key VARCHAR(512) NOT NULL, grain CHAR(1) NOT NULL, bucket DATETIME NOT NULL,
        total INTEGER NOT NULL, n INTEGER NOT NULL, sum, sumsq, min, max, t_min DATETIME, t_max DATETIME,
        CONSTRAINT pk_hub_history_rollups PRIMARY KEY (tenant, entity_id, attr, grain, bucket, dataset_key))""",
    """CREATE TABLE hub_history_rollup_dirty (
        tenant VARCHAR(256) NOT NULL, entity_id VARCHAR(512) NOT NULL, attr VARCHAR(512) NOT NULL,
        dataset_key VARCHAR(512) NOT NULL, grain CHAR(1) NOT NULL, bucket DATETIME NOT NULL,
        CONSTRAINT pk_hub_history_rollup_dirty PRIMARY KEY (tenant, entity_id, attr, grain, bucket, dataset_key))""",
    f"""CREATE TRIGGER hub_history_rollup_add AFTER INSERT ON hub_attribute_history WHEN NEW.deleted = 0
    BEGIN
      INSERT INTO hub_history_rollups ({_COLUMNS})
      SELECT NEW.tenant, NEW.entity_id, NEW.attr, coalesce(NEW.dataset_id, ''), g.grain, strftime(g.fmt, NEW.ts),
             1, v.num IS NOT NULL, v.num, v.num * v.num, v.num, v.num, NEW.ts, NEW.ts
      FROM (SELECT 'h' AS grain, {_SQLITE_HOUR} AS fmt UNION ALL SELECT 'd', {_SQLITE_DAY}) AS g,
           (SELECT {_SQLITE_NUM} AS num) AS v
      WHERE true
      ON CONFLICT (tenant, entity_id, attr, grain, bucket, dataset_key) DO UPDATE SET
        total = total + 1, n = n + excluded.n,
        sum = CASE WHEN sum IS NULL THEN excluded.sum WHEN excluded.sum IS NULL THEN sum ELSE sum + excluded.sum END,
        sumsq = CASE WHEN sumsq IS NULL THEN excluded.sumsq WHEN excluded.sumsq IS NULL THEN sumsq
                     ELSE sumsq + excluded.sumsq END,
        min = CASE WHEN min IS NULL OR excluded.min < min THEN coalesce(excluded.min, min) ELSE min END,
        max = CASE WHEN max IS NULL OR excluded.max > max THEN coalesce(excluded.max, max) ELSE max END,
        t_min = CASE WHEN excluded.t_min < t_min THEN excluded.t_min ELSE t_min END,
        t_max = CASE WHEN excluded.t_max > t_max THEN excluded.t_max ELSE t_max END;
    END""",
    f"""CREATE TRIGGER hub_history_rollup_mark_delete AFTER DELETE ON hub_attribute_history WHEN OLD.deleted = 0
    BEGIN {_sqlite_mark('OLD')} END""",
    f"""CREATE TRIGGER hub_history_rollup_mark_update AFTER UPDATE ON hub_attribute_history
    BEGIN {_sqlite_mark('OLD')} {_sqlite_mark('NEW')} END""",
]

SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS hub_history_rollup_mark_update",
    "DROP TRIGGER IF EXISTS hub_history_rollup_mark_delete",
    "DROP TRIGGER IF EXISTS hub_history_rollup_add",
    "DROP TABLE IF EXISTS hub_history_rollup_dirty",
    "DROP TABLE IF EXISTS hub_history_rollups",
]

# Every bucket of the existing history marked dirty: `refresh` computes them (the migration's backfill).
PG_BACKFILL = ("INSERT INTO hub_history_rollup_dirty (tenant, entity_id, attr, dataset_key, grain, bucket) "
               "SELECT DISTINCT tenant, entity_id, attr, coalesce(dataset_id, ''), g.grain, "
               "date_bin(g.step, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') FROM hub_attribute_history "
               "CROSS JOIN (VALUES ('h', INTERVAL '1 hour'), ('d', INTERVAL '1 day')) AS g(grain, step) "
               "WHERE deleted = 0 ON CONFLICT DO NOTHING")
SQLITE_BACKFILL = ("INSERT INTO hub_history_rollup_dirty (tenant, entity_id, attr, dataset_key, grain, bucket) "
                   "SELECT DISTINCT tenant, entity_id, attr, coalesce(dataset_id, ''), g.grain, strftime(g.fmt, ts) "
                   f"FROM hub_attribute_history, (SELECT 'h' AS grain, {_SQLITE_HOUR} AS fmt "
                   f"UNION ALL SELECT 'd', {_SQLITE_DAY}) AS g WHERE deleted = 0 ON CONFLICT DO NOTHING")


# ---------------------------------------------------------------------- recomputing marked buckets

_PG_RECOMPUTE = f"""
INSERT INTO hub_history_rollups AS r ({_COLUMNS})
SELECT a.tenant, d.entity_id, d.attr, d.dataset_key, d.grain, d.bucket, a.total, a.n, a.sum, a.sumsq, a.min, a.max,
       a.t_min, a.t_max
FROM unnest(CAST(:entity_ids AS varchar[]), CAST(:attrs AS varchar[]), CAST(:dataset_keys AS varchar[]),
            CAST(:grains AS varchar[]), CAST(:buckets AS timestamptz[]))
     AS d(entity_id, attr, dataset_key, grain, bucket)
CROSS JOIN LATERAL (
  SELECT CAST(:tenant AS varchar) AS tenant, count(*) AS total, count(num) AS n, sum(num) AS sum,
         sum({_PG_SQUARE}) AS sumsq,
         min(num) AS min, max(num) AS max, min(ts) AS t_min, max(ts) AS t_max
  FROM hub_attribute_history x
  WHERE x.tenant = :tenant AND x.entity_id = d.entity_id AND x.attr = d.attr
    AND coalesce(x.dataset_id, '') = d.dataset_key AND x.deleted = 0 AND x.ts >= d.bucket
    AND x.ts < d.bucket + CASE d.grain WHEN 'h' THEN INTERVAL '1 hour' ELSE INTERVAL '1 day' END) a
ORDER BY d.entity_id, d.attr, d.grain, d.bucket, d.dataset_key
ON CONFLICT (tenant, entity_id, attr, grain, bucket, dataset_key) DO UPDATE SET
  total = excluded.total, n = excluded.n, sum = excluded.sum, sumsq = excluded.sumsq, min = excluded.min,
  max = excluded.max, t_min = excluded.t_min, t_max = excluded.t_max
"""

_SQLITE_RECOMPUTE = f"""
INSERT INTO hub_history_rollups ({_COLUMNS})
SELECT :tenant, :entity_id, :attr, :dataset_key, :grain, :bucket, count(*), count(num), sum(num), sum(num * num),
       min(num), max(num), min(ts), max(ts)
FROM (SELECT ts, CASE WHEN json_type(instance, '$.value') IN ('integer', 'real')
                      THEN json_extract(instance, '$.value') END AS num
      FROM hub_attribute_history
      WHERE tenant = :tenant AND entity_id = :entity_id AND attr = :attr AND coalesce(dataset_id, '') = :dataset_key
        AND deleted = 0 AND ts >= :bucket AND ts < :bucket_end)
WHERE true
ON CONFLICT (tenant, entity_id, attr, grain, bucket, dataset_key) DO UPDATE SET
  total = excluded.total, n = excluded.n, sum = excluded.sum, sumsq = excluded.sumsq, min = excluded.min,
  max = excluded.max, t_min = excluded.t_min, t_max = excluded.t_max
"""

REFRESH_BATCH = 5000


async def has_dirty(conn: AsyncConnection, tenant: str) -> bool:
    found = await conn.execute(text("SELECT 1 FROM hub_history_rollup_dirty WHERE tenant = :tenant LIMIT 1"),
                               {"tenant": tenant})
    return found.first() is not None


async def refresh(conn: AsyncConnection, tenant: str) -> int:
    """Recompute the marked buckets of `tenant` from the raw rows (inside the caller's write transaction);
    returns how many. The marks are taken (deleted) first: a bucket marked again meanwhile by another
    transaction keeps its new mark for the next refresh."""
    done = 0
    pg = conn.dialect.name == "postgresql"
    while True:
        if pg:
            taken = (await conn.execute(text(
                "DELETE FROM hub_history_rollup_dirty WHERE ctid IN (SELECT ctid FROM hub_history_rollup_dirty "
                "WHERE tenant = :tenant LIMIT :batch) RETURNING entity_id, attr, dataset_key, grain, bucket"),
                {"tenant": tenant, "batch": REFRESH_BATCH})).all()
        else:
            taken = (await conn.execute(text(
                "DELETE FROM hub_history_rollup_dirty WHERE rowid IN (SELECT rowid FROM hub_history_rollup_dirty "
                "WHERE tenant = :tenant LIMIT :batch) RETURNING entity_id, attr, dataset_key, grain, bucket"),
                {"tenant": tenant, "batch": REFRESH_BATCH})).all()
        if not taken:
            return done
        taken = sorted(taken, key=lambda row: (row[0], row[1], row[3], str(row[4]), row[2]))
        if pg:
            await conn.execute(text(_PG_RECOMPUTE), {
                "tenant": tenant, "entity_ids": [r[0] for r in taken], "attrs": [r[1] for r in taken],
                "dataset_keys": [r[2] for r in taken], "grains": [r[3] for r in taken],
                "buckets": [_aware(r[4]) for r in taken]})
        else:
            await conn.execute(text(_SQLITE_RECOMPUTE), [
                {"tenant": tenant, "entity_id": r[0], "attr": r[1], "dataset_key": r[2], "grain": r[3],
                 "bucket": r[4], "bucket_end": _sqlite_text(_aware(r[4]) + GRAINS[r[3]])} for r in taken])
        # A bucket left with no instance has no rollup (the raw computation has no bucket there).
        await conn.execute(text("DELETE FROM hub_history_rollups WHERE tenant = :tenant AND total = 0"),
                           {"tenant": tenant})
        done += len(taken)


async def forget_range(conn: AsyncConnection, start: datetime, end: datetime) -> None:
    """Retention dropped every history row in [start, end) (a whole partition): drop their rollups too."""
    await conn.execute(text("DELETE FROM hub_history_rollups WHERE bucket >= :start AND bucket < :end"),
                       {"start": start, "end": end})
    await conn.execute(text("DELETE FROM hub_history_rollup_dirty WHERE bucket >= :start AND bucket < :end"),
                       {"start": start, "end": end})


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# ---------------------------------------------------------------------- which grain answers a query


def enabled() -> bool:
    """CITYOS_TEMPORAL_ROLLUPS=0 makes every aggregation read the raw rows (the rollups are still kept)."""
    return os.environ.get("CITYOS_TEMPORAL_ROLLUPS", "1").strip().lower() not in ("0", "false", "no", "off")


def _aligned(moment: datetime | None, step: timedelta) -> bool:
    return moment is None or (moment - EPOCH) % step == timedelta(0)


def grain_for(period: timedelta | None, origin: datetime | None, lower: datetime | None, upper: datetime | None,
              timeproperty: str, methods: list[str]) -> str | None:
    """The coarsest rollup whose buckets tile the query's buckets and window exactly, or None (raw rows).

    Buckets of `period` from `origin` are unions of rollup buckets when the period is a multiple of the
    grain and the origin falls on a grain boundary; the window must start and end on boundaries too."""
    if timeproperty != "observedAt" or not methods or not set(methods) <= ROLLUP_METHODS:
        return None
    for grain in ("d", "h"):
        step = GRAINS[grain]
        if period is not None and (period % step != timedelta(0) or origin is None or not _aligned(origin, step)):
            continue
        if _aligned(lower, step) and _aligned(upper, step):
            return grain
    return None
