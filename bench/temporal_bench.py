"""Temporal API benchmark on PostgreSQL; prints one JSON line.

    uv run python bench/temporal_bench.py [--url postgresql://postgres@127.0.0.1:5432/test]
                                          [--entities 1000] [--instances 10000000] [--runs 5]
                                          [--keep | --reuse cityos_bench_xxxxxxxx]

A fresh database is created and dropped (`--keep` keeps it; `--reuse` measures on one kept earlier, same
`--entities`/`--instances`, the same UTC day, without loading). `--entities` sensors each get one reading a minute for
`--instances / --entities` minutes up to the last midnight before today, loaded with COPY straight
into hub_attribute_history (the entities themselves with COPY into hub_entities). Then:

1. hourly avg over the last full day for every sensor (1,440 readings each: 1.44M instances for
   1,000 sensors) through GET /temporal/entities?options=aggregatedValues, answered from the hourly
   rollups (`hub_history_rollups`, filled by the history's insert trigger during the COPY), then
   again with CITYOS_TEMPORAL_ROLLUPS=0 (raw rows); baselines: the same aggregate as one
   hand-written SQL statement over the raw rows, and one over the rollup table; the rollup and raw
   answers are compared (`rollup_answers_equal_raw`);
2. lastN=10 for 100 sensors through GET /temporal/entities?lastN=10; baseline: the same LATERAL
   query hand-written.

The API runs in-process (httpx ASGITransport, no sockets): the figures are the broker's time,
HTTP parsing and JSON rendering included, until the answer's bytes are in the client (the client's own
parsing of the answer is not timed). `CITYOS_GC_TUNE=1` runs the app with the collector settings of
`cityos serve` (cityos.core.gctuning); unset, untuned as in tests. Each figure is the median of --runs
after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from bench_auth import bearer

from cityos.app import create_app
from cityos.config import Settings
from cityos.core import clock, migrate

TYPE = "https://uri.etsi.org/ngsi-ld/default-context/Sensor"
ATTR = "https://uri.etsi.org/ngsi-ld/default-context/temperature"
T_URL = "/ngsi-ld/v1/temporal/entities"
COPY_CHUNK = 200_000


def log(message: str) -> None:
    print(f"[temporal_bench] {message}", file=sys.stderr, flush=True)


def entity_id(n: int) -> str:
    return f"urn:ngsi-ld:Sensor:{n:06d}"


def value_at(n: int, minute: int) -> float:
    return round(15 + (n % 17) + ((minute * 7 + n * 13) % 60) / 10, 2)


def history_rows(entities: int, minutes: int, start: datetime) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for m in range(minutes):
        ts = start + timedelta(minutes=m)
        stamp = clock.iso(ts)
        for n in range(entities):
            instance = orjson.dumps({"type": "Property", "value": value_at(n, m), "observedAt": stamp,
                                     "createdAt": stamp, "modifiedAt": stamp}).decode()
            chunk.append(("", entity_id(n), TYPE, ATTR, f"{m:016x}{n:016x}", None, ts, ts, 0, instance))
            if len(chunk) >= COPY_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def load(dsn: str, entities: int, minutes: int, start: datetime) -> float:
    conn = await asyncpg.connect(dsn)
    began = time.perf_counter()
    try:
        last = start + timedelta(minutes=minutes - 1)
        stamp = clock.iso(last)
        records = [("", entity_id(n), TYPE, last, last,
                    orjson.dumps({ATTR: [{"type": "Property", "value": value_at(n, minutes - 1), "observedAt": stamp,
                                          "createdAt": stamp, "modifiedAt": stamp}]}).decode(), None)
                   for n in range(entities)]
        await conn.copy_records_to_table("hub_entities", records=records, columns=[
            "tenant", "id", "type", "created_at", "modified_at", "attrs", "scope"])
        await conn.execute("INSERT INTO hub_tenants (name, created_at) VALUES ('', now()) ON CONFLICT DO NOTHING")
        done = 0
        for chunk in history_rows(entities, minutes, start):
            await conn.copy_records_to_table("hub_attribute_history", records=chunk, columns=[
                "tenant", "entity_id", "entity_type", "attr", "instance_id", "dataset_id", "ts", "modified_at",
                "deleted", "instance"])
            done += len(chunk)
            if done % 1_000_000 < COPY_CHUNK:
                log(f"loaded {done:,} instances in {time.perf_counter() - began:.0f} s")
        # What autovacuum does after bulk inserts (PostgreSQL >= 13); it lets scans stay in the index.
        await conn.execute("VACUUM (ANALYZE) hub_attribute_history")
        await conn.execute("ANALYZE hub_history_rollups")
        await conn.execute("ANALYZE hub_entities")
    finally:
        await conn.close()
    return time.perf_counter() - began


def _same_buckets(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Two aggregatedValues answers hold the same buckets, values equal up to float summation order."""
    if [e["id"] for e in a] != [e["id"] for e in b]:
        return False
    for x, y in zip(a, b, strict=True):
        for (vx, *bx), (vy, *by) in zip(x["temperature"]["avg"], y["temperature"]["avg"], strict=True):
            if bx != by or abs(vx - vy) > 1e-9 * max(1.0, abs(vx)):
                return False
    return True


async def timed(fn: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, Any]:
    result = await fn()  # warm-up
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        result = await fn()
        samples.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(samples), 1), result


BASELINE_AGG = """
SELECT entity_id, date_bin('1 hour', ts, $2) AS bucket, avg((instance->>'value')::float8)
FROM hub_attribute_history
WHERE tenant = '' AND entity_type = $1 AND attr = $3 AND deleted = 0 AND ts >= $2 AND ts < $2 + interval '1 day'
GROUP BY 1, 2
"""
# The same hourly averages hand-written over the hourly rollups (what the database alone takes for them).
BASELINE_ROLLUP = """
SELECT entity_id, bucket, sum / n FROM hub_history_rollups
WHERE tenant = '' AND grain = 'h' AND attr = $2 AND bucket >= $1 AND bucket < $1 + interval '1 day' AND total > 0
"""
BASELINE_LAST_N = """
SELECT p.id, x.instance FROM unnest($1::varchar[]) AS p(id)
CROSS JOIN LATERAL (SELECT instance, ts FROM hub_attribute_history h
                    WHERE h.tenant = '' AND h.entity_id = p.id AND h.attr = $2 ORDER BY ts DESC LIMIT 10) x
"""


async def measure(url: str, dsn: str, entities: int, day: datetime, runs: int) -> dict[str, Any]:
    os.environ["CITYOS_RETENTION_INTERVAL_SECONDS"] = "0"
    app = create_app(Settings(database_url=url, max_page_size=max(1000, entities)))
    figures: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=bearer(app)) as client:
            agg_params = {"type": "Sensor", "attrs": "temperature", "timerel": "between",
                          "timeAt": clock.iso(day), "endTimeAt": clock.iso(day + timedelta(days=1)),
                          "options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "PT1H",
                          "limit": str(entities)}

            async def aggregate_api() -> Any:
                # Timed until the answer's bytes are in: parsing 1.5 MB into 24,000 lists is the client's work
                # (before 2026-12-05 22:30 UTC the figure included httpx's r.json() of it).
                r = await client.get(T_URL, params=agg_params)
                assert r.status_code == 200, r.text
                return r

            # (1) from the hourly rollups (the default), then from the raw rows (CITYOS_TEMPORAL_ROLLUPS=0).
            figures["hourly_avg_api_ms"], response = await timed(aggregate_api, runs)
            body = orjson.loads(response.content)
            assert len(body) == entities and all(len(e["temperature"]["avg"]) == 24 for e in body)
            some = next(e for e in body if e["id"] == entity_id(0))["temperature"]["avg"][0][0]
            os.environ["CITYOS_TEMPORAL_ROLLUPS"] = "0"
            try:
                figures["hourly_avg_api_raw_ms"], response = await timed(aggregate_api, runs)
            finally:
                os.environ.pop("CITYOS_TEMPORAL_ROLLUPS", None)
            raw_body = orjson.loads(response.content)
            figures["rollup_answers_equal_raw"] = _same_buckets(body, raw_body)

            ids = [entity_id(n) for n in range(0, entities, max(1, entities // 100))][:100]
            last_params = {"id": ",".join(ids), "attrs": "temperature", "lastN": "10", "limit": "100"}

            async def last_n_api() -> Any:
                r = await client.get(T_URL, params=last_params)
                assert r.status_code == 200, r.text
                return r.json()

            figures["last_n_api_ms"], body = await timed(last_n_api, runs)
            assert len(body) == len(ids) and all(len(e["temperature"]) == 10 for e in body)

            async def last_n_all_attrs_api() -> Any:
                # No attrs: every attribute of each entity (a query still needs a selector: the type).
                params = {**{k: v for k, v in last_params.items() if k != "attrs"}, "type": "Sensor"}
                r = await client.get(T_URL, params=params)
                assert r.status_code == 200, r.text
                return r.json()

            figures["last_n_api_no_attrs_ms"], _ = await timed(last_n_all_attrs_api, runs)

    conn = await asyncpg.connect(dsn)
    try:
        async def aggregate_sql() -> Any:
            return await conn.fetch(BASELINE_AGG, TYPE, day, ATTR)

        figures["hourly_avg_sql_ms"], rows = await timed(aggregate_sql, runs)
        expected = next(r[2] for r in rows if r[0] == entity_id(0) and r[1] == day)
        assert abs(expected - some) < 1e-9, (expected, some)

        async def aggregate_rollup_sql() -> Any:
            return await conn.fetch(BASELINE_ROLLUP, day, ATTR)

        figures["hourly_avg_rollup_sql_ms"], rows = await timed(aggregate_rollup_sql, runs)
        assert len(rows) == 24 * entities
        figures["ratio_api_to_raw_sql"] = round(figures["hourly_avg_api_ms"] / figures["hourly_avg_sql_ms"], 3)
        figures["ratio_api_to_rollup_sql"] = round(figures["hourly_avg_api_ms"] / figures["hourly_avg_rollup_sql_ms"],
                                                   2)

        async def last_n_sql() -> Any:
            return await conn.fetch(BASELINE_LAST_N, ids, ATTR)

        figures["last_n_sql_ms"], rows = await timed(last_n_sql, runs)
        assert len(rows) == 10 * len(ids)
        # How busy the machine is (shared with other work): the same count on every run.
        began = time.perf_counter()
        await conn.fetchval("SELECT count(*) FROM generate_series(1, 10000000)")
        figures["calibration_count_1e7_ms"] = round((time.perf_counter() - began) * 1000)
        figures["load_average"] = round(os.getloadavg()[0], 1)
    finally:
        await conn.close()
    return figures


async def admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CITYOS_TEST_POSTGRES_URL",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name goes to stderr)")
    parser.add_argument("--reuse", default=None, metavar="DATABASE",
                        help="measure on a database an earlier --keep run of the same size left today (no load)")
    args = parser.parse_args()
    load_start = round(os.getloadavg()[0], 1)
    minutes = max(1440, args.instances // args.entities)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = today - timedelta(days=1)  # the last full day, aggregated in (1)
    start = today - timedelta(minutes=minutes)
    base = args.url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)[0]
    if args.reuse:
        dsn = f"{base}/{args.reuse}"
        await asyncio.to_thread(migrate.upgrade, Settings(database_url=dsn))
        figures = await measure(dsn, dsn, args.entities, day, args.runs)
        print(orjson.dumps({"bench": "temporal", "database": "postgresql", "entities": args.entities,
                            "instances": args.entities * minutes, "reused": args.reuse, **figures,
                            "hourly_avg_target_ms": 100, "runs": args.runs,
                            "target_hourly_avg_met": figures["hourly_avg_api_ms"] < 100,
                            "load_average_start": load_start}).decode())
        return
    name = f"cityos_bench_{uuid.uuid4().hex[:8]}"
    await admin(f"{base}/postgres", f'CREATE DATABASE "{name}"')
    dsn = f"{base}/{name}"
    try:
        await asyncio.to_thread(migrate.upgrade, Settings(database_url=dsn))
        log(f"loading {args.entities:,} entities x {minutes:,} minutes")
        load_s = await load(dsn, args.entities, minutes, start)
        figures = await measure(dsn, dsn, args.entities, day, args.runs)
    finally:
        if args.keep:
            log(f"kept database {name}")
        else:
            await admin(f"{base}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    instances = args.entities * minutes
    print(orjson.dumps({
        "bench": "temporal", "database": "postgresql", "entities": args.entities, "instances": instances,
        "instances_aggregated": args.entities * 1440, "load_s": round(load_s, 1),
        "load_instances_per_s": round(instances / load_s), **figures,
        "hourly_avg_target_ms": 100, "last_n_target_ms": 100, "runs": args.runs,
        "target_hourly_avg_met": figures["hourly_avg_api_ms"] < 100, "load_average_start": load_start,
    }).decode())


if __name__ == "__main__":
    asyncio.run(main())
