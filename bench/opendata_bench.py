"""Open data speed: CKAN `datastore_search` over a large reading history (filter + sort) and
`package_search` over 500 datasets, each against the same query in plain SQL in the same run.

Fills a database of its own (SQLite file, or a new PostgreSQL database with --backend postgresql):
`--rows` readings of `--stations` air-quality stations in the data domain's row store, and 500 catalogue
entries. Then times, p50/p99 over `--queries` calls each:

- datastore_search through the whole app (CKAN action over ASGI, in process: parsing, validation, SQL,
  desensitisation, JSON) with filters {entityId, attribute}, sort observedAt desc, limit 100, total;
- the same SELECT (and count) in plain SQL on the same connection pool;
- package_search (q + fq organization + facets) through the app, and its plain-SQL SELECT + count.

    uv run --frozen python bench/opendata_bench.py --rows 1000000
    uv run --frozen python bench/opendata_bench.py --backend postgresql --rows 10000000
    # fill once into a kept database, then time again without refilling:
    uv run --frozen python bench/opendata_bench.py --backend postgresql --rows 10000000 --keep cityos_bench_10m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

from cityos.app import create_app
from cityos.config import Settings
from cityos.core import migrate

ADMIN = os.environ.get("CITYOS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DATASET = "readings-airqualityobserved"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
ATTRS = ("pm25", "pm10", "no2", "o3", "temperature")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def fill_rows(app: Any, rows: int, stations: int) -> None:
    engine = app.state.engine
    if engine.dialect.name == "postgresql":
        # Bulk load the PostgreSQL way: drop the table's secondary indexes, fill in chunks with
        # generate_series, build the indexes once, then VACUUM ANALYZE (statistics and the visibility
        # map that lets counts read the index alone).
        async with engine.connect() as conn:
            found = (await conn.execute(text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'data_rows' "
                "AND indexname NOT LIKE '%pkey'"))).all()
        async with engine.begin() as conn:
            for name, _definition in found:
                await conn.execute(text(f'DROP INDEX "{name}"'))
        chunk = 1_000_000
        for first in range(0, rows, chunk):
            last = min(rows, first + chunk) - 1
            async with engine.begin() as conn:
                await conn.execute(text("SET LOCAL synchronous_commit = off"))
                await conn.execute(text(f"""
                INSERT INTO data_rows (tenant, dataset, version, key, ts, doc, subkey)
                SELECT '', '{DATASET}', 0, 'urn:ngsi-ld:AirQualityObserved:s' || (g % {stations}),
                       timestamptz '{T0.isoformat()}' + (g / {stations * len(ATTRS)}) * interval '1 minute',
                       jsonb_build_object('entityId', 'urn:ngsi-ld:AirQualityObserved:s' || (g % {stations}),
                         'attribute', (ARRAY{list(ATTRS)})[1 + (g / {stations}) % {len(ATTRS)}],
                         'observedAt', to_char((timestamptz '{T0.isoformat()}' + (g / {stations * len(ATTRS)})
                                               * interval '1 minute') AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                         'value', round((random() * 100)::numeric, 2), 'unitCode', 'GQ',
                         'district', 'D' || (g % {stations} % 10)),
                       (ARRAY{list(ATTRS)})[1 + (g / {stations}) % {len(ATTRS)}]
                FROM generate_series({first}, {last}) AS g"""))
        for _name, definition in found:
            async with engine.begin() as conn:
                await conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
                await conn.execute(text(definition))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE data_rows"))
        return
    rng = random.Random(1)
    batch: list[dict[str, Any]] = []
    async with engine.begin() as conn:
        for g in range(rows):
            station = g % stations
            ts = T0 + timedelta(minutes=g // (stations * len(ATTRS)))
            entity = f"urn:ngsi-ld:AirQualityObserved:s{station}"
            attr = ATTRS[(g // stations) % len(ATTRS)]
            batch.append({"tenant": "", "dataset": DATASET, "version": 0, "key": entity, "ts": ts, "subkey": attr,
                          "doc": json.dumps({"entityId": entity, "attribute": attr,
                                             "observedAt": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                                             "value": round(rng.random() * 100, 2), "unitCode": "GQ",
                                             "district": f"D{station % 10}"})})
            if len(batch) == 50_000:
                await conn.execute(text("INSERT INTO data_rows (tenant, dataset, version, key, ts, doc, subkey) "
                                        "VALUES (:tenant, :dataset, :version, :key, :ts, :doc, :subkey)"), batch)
                batch = []
        if batch:
            await conn.execute(text("INSERT INTO data_rows (tenant, dataset, version, key, ts, doc, subkey) "
                                    "VALUES (:tenant, :dataset, :version, :key, :ts, :doc, :subkey)"), batch)
        await conn.execute(text("ANALYZE"))


async def fill_catalogue(app: Any, count: int) -> None:
    catalogue = app.state.data.catalogue
    fields = [{"id": f, "type": "numeric" if f == "value" else "text", "class": "public"}
              for f in ("entityId", "attribute", "observedAt", "value", "unitCode", "district")]
    departments = [f"dept-{i}" for i in range(20)]
    for i in range(count):
        dept = departments[i % 20]
        await catalogue.upsert("", DATASET if i == 0 else f"bench-{i:04d}", {
            "title": f"数据集 {i}", "title_en": f"Dataset {i} {'air quality' if i % 7 == 0 else 'records'}",
            "description": f"Benchmark dataset {i} of {dept}", "provider": dept,
            "category": ("environment", "transport", "water", "energy")[i % 4],
            "tags": sorted({f"tag{i % 30}", "bench"}), "format": "JSON", "update_cycle": "daily",
            "share_type": "unconditional", "open_type": "unconditional", "source_kind": "readings",
            "source": {}, "fields": fields, "district": f"D{i % 10}", "geo": 0})


async def interleaved(calls: int, first: Any, second: Any) -> tuple[list[float], list[float]]:
    """Both sides on the same picks, alternating which goes first, so neither reads pages the other warmed
    more often (the reading history is far larger than PostgreSQL's buffers)."""
    a: list[float] = []
    b: list[float] = []
    for i in range(calls):
        for fn, out in ((first, a), (second, b)) if i % 2 == 0 else ((second, b), (first, a)):
            start = time.perf_counter()
            await fn(i)
            out.append(time.perf_counter() - start)
    return a, b


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _exists(name: str) -> bool:
    admin = await asyncpg.connect(ADMIN)
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        started = time.perf_counter()
        async with app.state.engine.connect() as conn:
            filled = (await conn.execute(text("SELECT count(*) FROM data_datasets"))).scalar_one() >= 500
        if not filled:  # a kept database is filled once
            await fill_rows(app, args.rows, args.stations)
            await fill_catalogue(app, 500)
        fill_s = time.perf_counter() - started
        engine = app.state.engine
        rng = random.Random(7)
        picks = [(f"urn:ngsi-ld:AirQualityObserved:s{rng.randrange(args.stations)}", rng.choice(ATTRS))
                 for _ in range(args.queries)]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            async def api_call(i: int) -> None:
                entity, attr = picks[i]
                r = await http.get("/api/3/action/datastore_search", params={
                    "resource_id": DATASET, "filters": json.dumps({"entityId": entity, "attribute": attr}),
                    "sort": "observedAt desc", "limit": "100"})
                assert r.status_code == 200 and r.json()["result"]["records"], r.text[:300]

            extract = "subkey"  # the attribute's column, as datastore_search reads it
            select_sql = text(f"SELECT id, doc FROM data_rows WHERE tenant = '' AND dataset = :d AND version = 0 "
                              f"AND key = :k AND {extract} = :a ORDER BY ts DESC, id DESC LIMIT 100")
            count_sql = text(f"SELECT count(*) FROM data_rows WHERE tenant = '' AND dataset = :d AND version = 0 "
                             f"AND key = :k AND {extract} = :a")

            async def sql_call(i: int) -> None:
                entity, attr = picks[i]
                async with engine.connect() as conn:
                    found = (await conn.execute(select_sql, {"d": DATASET, "k": entity, "a": attr})).all()
                    await conn.execute(count_sql, {"d": DATASET, "k": entity, "a": attr})
                assert found

            await api_call(0)
            await sql_call(0)  # warm both
            api, sql = await interleaved(args.queries, api_call, sql_call)

            words = ["air", "records", "dataset", "quality"]

            async def search_call(i: int) -> None:
                r = await http.get("/api/3/action/package_search", params={
                    "q": words[i % 4], "fq": f"organization:dept-{i % 20}", "rows": "10",
                    "facet.field": '["organization","groups","tags"]'})
                assert r.status_code == 200, r.text[:300]

            search_sql = text("SELECT * FROM data_datasets WHERE tenant = '' AND open_type != 'none' "
                              "AND search_text LIKE :w AND provider = :p ORDER BY id LIMIT 10")
            search_count = text("SELECT count(*) FROM data_datasets WHERE tenant = '' AND open_type != 'none' "
                                "AND search_text LIKE :w AND provider = :p")

            async def search_sql_call(i: int) -> None:
                params = {"w": f"%{words[i % 4]}%", "p": f"dept-{i % 20}"}
                async with engine.connect() as conn:
                    (await conn.execute(search_sql, params)).all()
                    await conn.execute(search_count, params)

            await search_call(0)
            await search_sql_call(0)
            search_api, search_sql_t = await interleaved(args.queries, search_call, search_sql_call)
    return {"bench": "opendata", "backend": args.backend, "rows": args.rows, "stations": args.stations,
            "datasets": 500, "queries": args.queries, "fill_s": round(fill_s, 1),
            "datastore_search_p50_ms": pct(api, 0.5), "datastore_search_p99_ms": pct(api, 0.99),
            "plain_sql_p50_ms": pct(sql, 0.5), "plain_sql_p99_ms": pct(sql, 0.99),
            "datastore_ratio_p99": round(pct(api, 0.99) / max(pct(sql, 0.99), 0.01), 2),
            "datastore_target_p99_ms": 100, "datastore_target_met": pct(api, 0.99) < 100,
            "package_search_p50_ms": pct(search_api, 0.5), "package_search_p99_ms": pct(search_api, 0.99),
            "package_sql_p50_ms": pct(search_sql_t, 0.5), "package_sql_p99_ms": pct(search_sql_t, 0.99),
            "package_ratio_p99": round(pct(search_api, 0.99) / max(pct(search_sql_t, 0.99), 0.01), 2),
            "package_target_p99_ms": 50, "package_target_met": pct(search_api, 0.99) < 50,
            "mean_rows_per_station_attr": round(args.rows / args.stations / len(ATTRS)),
            "median_api_vs_sql_ms": round(statistics.median(api) * 1000 - statistics.median(sql) * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stations", type=int, default=500)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--keep", help="PostgreSQL: fill (once) and keep this database instead of a throw-away one")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cityos-opendata-bench-"))
    name = None
    if args.backend == "postgresql":
        name = args.keep or f"cityos_bench_{uuid.uuid4().hex[:8]}"
        if not args.keep or not asyncio.run(_exists(name)):
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        url = ADMIN.rsplit("/", 1)[0] + "/" + name
    else:
        url = f"sqlite:///{workdir / 'bench.db'}"
    os.environ.setdefault("CITYOS_DATA_DIR", str(workdir / "data"))
    os.environ.setdefault("CITYOS_EVALUATION_INTERVAL_SECONDS", "0")
    os.environ.setdefault("CITYOS_DATA_HARVEST_INTERVAL_SECONDS", "0")  # the bench's catalogue is fixed
    settings = Settings(database_url=url)
    migrate.upgrade(settings)
    try:
        print(json.dumps(asyncio.run(run(args, settings))))
    finally:
        if name is not None and not args.keep:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
