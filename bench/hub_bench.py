"""Benchmark of the NGSI-LD hub against raw database baselines measured in the same run.

    uv run python bench/hub_bench.py --entities 1000000          # PostgreSQL (default)
    uv run python bench/hub_bench.py --entities 20000 --sqlite   # SQLite (informational)

What it does:

1. creates a fresh database (PostgreSQL: ``cityos_bench_<random>`` on ``--pg-admin-url``, dropped at
   the end unless ``--keep``; SQLite: a file in a temporary directory), runs ``cityos db upgrade``
   and starts the server as a real subprocess (``python -m cityos.cli serve --no-migrate``);
2. loads N ``AirQualityObserved`` entities (pm25, no2, temperature with observedAt/unitCode, a
   ``district`` string and a ``location`` Point spread over a 30 km x 30 km city around
   110.3 E 20.0 N) through ``POST /entityOperations/upsert``, 1,000 entities a request;
3. measures, each together with a raw baseline on the same machine in the same run:

   (a) upsert of EXISTING entities (1,000 a request) in attribute updates/s, against asyncpg
       ``executemany`` INSERT .. ON CONFLICT DO UPDATE of the same number of one-jsonb-doc rows into
       ``bench_raw`` (a LOGGED copy of ``hub_entities`` with the same indexes, same batch size and
       concurrency); a COPY of the same rows into an empty logged table is reported for context;
   (b) ``PATCH /entities/{id}/attrs`` at concurrency 32, against ``UPDATE bench_raw SET attrs =
       jsonb_set(..)`` (one statement, autocommit) at concurrency 32 through a pool, plus a
       read-modify-write baseline (BEGIN; SELECT .. FOR UPDATE; UPDATE; COMMIT);
   (c) ``GET /entities/{id}`` p50/p99 at concurrency 1 and 8, against SELECT by primary key;
   (d) ``georel=near;maxDistance==500`` p50/p99, against a hand-written ST_DWithin join over the
       hub's own ``hub_entity_geo`` / ``hub_entities`` tables;
   (e) ``type`` + ``q`` (``pm25>X;district=="Dk"`` and ``no2==a..b``) p50/p99 with the default
       limit 20, against the equivalent hand-written jsonb query over ``hub_entities``.

Prints one JSON line on stdout per measure as it is taken (``"measure"``: the hub's figure, the raw
baseline of the same run, the ratio, the load average and the phase's CPU per operation), then one
summary line with everything; progress goes to stderr. Ratios are hub / baseline: for
throughput a ratio below 1 means the hub is slower, for latency a ratio above 1 means it is slower.
Targets are reported as booleans; nothing is asserted. CPU use of the client, the server and
PostgreSQL is reported per phase (in cores) so that a client bottleneck would show.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from bench_auth import bearer
from bench_server import CpuMeter, RawHttp, free_port, launch, stop_server

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]

# The city: 30 km x 30 km around (110.3 E, 20.0 N).
CENTER_LON, CENTER_LAT = 110.3, 20.0
EARTH_RADIUS_M = 6371008.8
SPAN_LAT = 30_000 / (EARTH_RADIUS_M * math.pi / 180)
SPAN_LON = SPAN_LAT / math.cos(math.radians(CENTER_LAT))
MIN_LON, MIN_LAT = CENTER_LON - SPAN_LON / 2, CENTER_LAT - SPAN_LAT / 2
ENTITY_TYPE = "AirQualityObserved"
ATTRS_PER_ENTITY = 5  # pm25, no2, temperature, district, location
NEAR_METRES = 500

TARGETS = {"upsert_attr_updates_per_s": 20_000, "patch_per_s_c32": 2_000, "get_p99_ms": 10.0,
           "near_p99_ms": 50.0, "q_p99_ms": 100.0}


# The hub API needs a bearer token (issue #5): a sys_admin token the benchmarked server accepts.
AUTH = bearer()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:8.1f}s] {message}", file=sys.stderr, flush=True)


def entity_id(i: int) -> str:
    return f"urn:ngsi-ld:{ENTITY_TYPE}:b{i:07d}"


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# ------------------------------------------------------------------------------------ data


class City:
    """Deterministic positions and districts of the N entities."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        self.lons = [round(MIN_LON + rng.random() * SPAN_LON, 6) for _ in range(n)]
        self.lats = [round(MIN_LAT + rng.random() * SPAN_LAT, 6) for _ in range(n)]

    def district(self, i: int) -> str:
        col = min(2, int((self.lons[i] - MIN_LON) / SPAN_LON * 3))
        row = min(2, int((self.lats[i] - MIN_LAT) / SPAN_LAT * 3))
        return f"D{row * 3 + col + 1}"

    def values(self, rng: random.Random) -> tuple[float, int, float]:
        return round(rng.uniform(0, 150), 1), rng.randint(0, 100), round(rng.uniform(15, 35), 1)

    def body(self, i: int, rng: random.Random, observed: str) -> dict[str, Any]:
        pm25, no2, temp = self.values(rng)
        return {
            "id": entity_id(i),
            "type": ENTITY_TYPE,
            "pm25": {"type": "Property", "value": pm25, "unitCode": "GQ", "observedAt": observed},
            "no2": {"type": "Property", "value": no2, "unitCode": "GQ", "observedAt": observed},
            "temperature": {"type": "Property", "value": temp, "unitCode": "CEL", "observedAt": observed},
            "district": {"type": "Property", "value": self.district(i)},
            "location": {"type": "GeoProperty",
                         "value": {"type": "Point", "coordinates": [self.lons[i], self.lats[i]]}},
        }

    def internal_doc(self, i: int, rng: random.Random, observed: str, iris: dict[str, str]) -> dict[str, Any]:
        """The same entity in the hub's internal (expanded) form, for the raw baselines."""
        pm25, no2, temp = self.values(rng)
        stamps = {"createdAt": observed, "modifiedAt": observed}
        return {
            iris["pm25"]: [{"type": "Property", "value": pm25, "unitCode": "GQ", "observedAt": observed, **stamps}],
            iris["no2"]: [{"type": "Property", "value": no2, "unitCode": "GQ", "observedAt": observed, **stamps}],
            iris["temperature"]: [{"type": "Property", "value": temp, "unitCode": "CEL", "observedAt": observed,
                                   **stamps}],
            iris["district"]: [{"type": "Property", "value": self.district(i), **stamps}],
            iris["location"]: [{"type": "GeoProperty",
                                "value": {"type": "Point", "coordinates": [self.lons[i], self.lats[i]]}, **stamps}],
        }


def random_point(rng: random.Random) -> tuple[float, float]:
    return round(MIN_LON + rng.random() * SPAN_LON, 6), round(MIN_LAT + rng.random() * SPAN_LAT, 6)


def near_path(lon: float, lat: float) -> str:
    return (f"/ngsi-ld/v1/entities?type={ENTITY_TYPE}&georel={quote(f'near;maxDistance=={NEAR_METRES}')}"
            f"&geometry=Point&coordinates={quote(f'[{lon},{lat}]')}")


@dataclass
class QCase:
    kind: str  # "pm25_district" | "no2_range"
    a: float
    b: Any

    @property
    def q(self) -> str:
        if self.kind == "pm25_district":
            return f'pm25>{self.a:g};district=="{self.b}"'
        return f"no2=={self.a:g}..{self.b:g}"

    @property
    def path(self) -> str:
        return f"/ngsi-ld/v1/entities?type={ENTITY_TYPE}&q={quote(self.q, safe='')}"


def q_cases(rng: random.Random, n: int) -> list[QCase]:
    cases = []
    for k in range(n):
        if k % 2 == 0:
            cases.append(QCase("pm25_district", rng.choice([60, 70, 80, 90, 100]), f"D{rng.randint(1, 9)}"))
        else:
            low = rng.randint(0, 90)
            cases.append(QCase("no2_range", low, low + 5))
    return cases


# ------------------------------------------------------------------------------------ HTTP clients


class HttpxSession:
    """httpx instead of bench_server.RawHttp (--client httpx), to compare the client's CPU."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        response = await self.client.request(method, path, content=body, headers=headers)
        return response.status_code, response.content

    async def close(self) -> None:
        return None


class Clients:
    """Opens `n` sessions of the chosen client kind; each worker of a closed loop owns one.

    "raw" is bench_server.RawHttp: per request a small fraction of httpx's CPU, which matters on a 2-core
    machine where the client shares the CPU with the server and the database.
    """

    def __init__(self, kind: str, host: str, port: int) -> None:
        self.kind, self.host, self.port = kind, host, port
        self._httpx: Any = None

    async def sessions(self, n: int) -> list[Any]:
        if self.kind == "raw":
            return [RawHttp(self.host, self.port, AUTH) for _ in range(n)]
        import httpx

        if self._httpx is None:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            self._httpx = httpx.AsyncClient(base_url=f"http://{self.host}:{self.port}", limits=limits,
                                            timeout=600, headers=AUTH)
        return [HttpxSession(self._httpx) for _ in range(n)]

    async def close(self) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()


# ------------------------------------------------------------------------------------ measurement


@dataclass
class Run:
    latencies: list[float]
    errors: int
    elapsed: float
    first_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def rate(self, per_op: float = 1.0) -> float:
        return self.ok * per_op / self.elapsed if self.elapsed else 0.0

    def pct_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


Op = Callable[[Any, int], Awaitable[bool]]


async def closed_loop(sessions: Sequence[Any], op: Op, *, total: int | None = None,
                      duration: float | None = None) -> Run:
    """len(sessions) workers run op(session, k) for k = 0, 1, ... until `total` ops or `duration` s."""
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + duration if duration else None

    async def worker(session: Any) -> None:
        while True:
            k = next(counter)
            if total is not None and k >= total:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            t = time.perf_counter()
            try:
                ok = await op(session, k)
                why = "unexpected response"
            except Exception as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors.append(why)

    await asyncio.gather(*(worker(s) for s in sessions))
    elapsed = time.perf_counter() - start
    for message in errors[:3]:
        log(f"  error: {message[:300]}")
    return Run(latencies, len(errors), elapsed, errors[:3])


class Profiler:
    """py-spy record of the server during each measured phase (only with --profile-dir)."""

    def __init__(self, directory: Path | None, server_pid: int) -> None:
        self.directory = directory
        self.server_pid = server_pid
        self.exe = shutil.which("py-spy") or str(Path.home() / ".local/bin/py-spy")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, phase: str) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.exe, "record", "--pid", str(self.server_pid), "--subprocesses",
                                      "--format", "raw", "--rate", "200", "--output",
                                      str(self.directory / f"{phase}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# ------------------------------------------------------------------------------------ process plumbing


def admin_sql(admin_url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def migrate(database_url: str) -> None:
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url}
    subprocess.run([sys.executable, "-m", "cityos.cli", "db", "upgrade"], env=env, check=True, cwd=ROOT,
                   stdout=sys.stderr, stderr=sys.stderr)


def start_server(database_url: str, port: int, workers: int, pool_size: int | None,
                 log_path: Path, app_factory: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url}
    if pool_size:
        env["CITYOS_DB_POOL_SIZE"] = str(pool_size)
    command = [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port), "--no-migrate",
               "--log-level", "warning", "--workers", str(workers)]
    if app_factory:
        # An experiment (e.g. bench/whatif_app.py): same uvicorn settings, another app factory.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "uvicorn", app_factory, "--factory", "--port", str(port),
                   "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    return launch(command, env, log_path, port, 90)


# ------------------------------------------------------------------------------------ raw baselines


class PgRaw:
    """Raw asyncpg baselines over the benchmark database."""

    def __init__(self, url: str, max_size: int) -> None:
        self.url = url
        self.max_size = max_size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.max_size)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(sql, *args)

    async def sessions(self, n: int) -> list[Any]:
        import asyncpg

        # The PostgreSQL server may be shared (max_connections): wait for free slots instead of failing.
        conns: list[Any] = []
        deadline = time.monotonic() + 180
        while len(conns) < n:
            try:
                conns.append(await self.pool.acquire())
            except asyncpg.TooManyConnectionsError:
                if time.monotonic() > deadline:
                    raise
                log("  PostgreSQL has no free connection slot; waiting")
                await asyncio.sleep(2)
        return conns

    async def release(self, sessions: list[Any]) -> None:
        for conn in sessions:
            await self.pool.release(conn)

    async def iris(self) -> tuple[str, dict[str, str]]:
        row = await self.fetchrow("SELECT type, attrs::text AS attrs FROM hub_entities WHERE tenant = '' LIMIT 1")
        return row["type"], {k.rsplit("/", 1)[-1]: k for k in orjson.loads(row["attrs"])}


class SqliteRaw:
    """Raw sqlite3 baselines on the server's own database file (the server is idle meanwhile)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.execute("PRAGMA cache_size=-65536")
        self.conn.create_function("bench_distance", 3, _sqlite_distance, deterministic=True)

    def iris(self) -> tuple[str, dict[str, str]]:
        etype, attrs = self.conn.execute("SELECT type, attrs FROM hub_entities WHERE tenant = '' LIMIT 1").fetchone()
        return etype, {k.rsplit("/", 1)[-1]: k for k in orjson.loads(attrs)}


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _sqlite_distance(geojson: str, lon: float, lat: float) -> float:
    x, y = orjson.loads(geojson)["coordinates"][:2]
    return haversine(x, y, lon, lat)


def json_path(iri: str) -> str:
    return f'$."{iri}"[0].value'


# ------------------------------------------------------------------------------------ the benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    backend: str  # "postgresql" | "sqlite"
    clients: Clients
    cpu: CpuMeter
    profiler: Profiler
    raw: Any  # PgRaw | SqliteRaw
    city: City
    out: dict[str, Any] = field(default_factory=dict)
    cpu_phases: dict[str, dict[str, float]] = field(default_factory=dict)
    etype_iri: str = ""
    iris: dict[str, str] = field(default_factory=dict)

    @property
    def pg(self) -> bool:
        return self.backend == "postgresql"

    async def measured(self, name: str, coro: Awaitable[Run]) -> Run:
        if self.args.quiet_wait > 0:
            other = await self.cpu.wait_quiet(self.args.quiet_wait)
            if other >= 0.3:
                log(f"  other processes still use {other:.2f} cores; measuring {name} anyway")
        self.profiler.start(name)
        before = self.cpu.snapshot()
        try:
            run = await coro
        finally:
            after = self.cpu.snapshot()
            self.profiler.stop()
        cores = CpuMeter.cores(before, after)
        if run.ok:
            # CPU per operation is far less sensitive than throughput to other load on the machine.
            for who in ("server", "postgres", "client"):
                cores[f"{who}_ms_per_op"] = round(cores[who] * run.elapsed / run.ok * 1000, 3)
        self.cpu_phases[name] = cores
        log(f"  {name}: {run.ok} ok, {run.errors} errors in {run.elapsed:.1f}s; cpu {self.cpu_phases[name]}")
        return run

    # ---------------------------------------------------------------- (load) and (a): upsert

    async def hub_upsert(self, name: str, first: int, count: int, seed: int) -> Run:
        batch = self.args.batch
        batches = math.ceil(count / batch)
        observed = iso(datetime.now(UTC))
        done = [0]
        last_report = [time.perf_counter()]

        async def op(session: Any, k: int) -> bool:
            rng = random.Random(seed * 1_000_003 + k)
            lo = first + k * batch
            hi = min(first + count, lo + batch)
            body = orjson.dumps([self.city.body(i, rng, observed) for i in range(lo, hi)])
            status, payload = await session.request("POST", "/ngsi-ld/v1/entityOperations/upsert", body)
            done[0] += hi - lo
            if time.perf_counter() - last_report[0] > 15:
                last_report[0] = time.perf_counter()
                log(f"  {name}: {done[0]:,}/{count:,} entities")
            if status not in (201, 204):
                raise RuntimeError(f"upsert answered {status}: {payload[:300]!r}")
            return True

        sessions = await self.clients.sessions(self.args.load_concurrency)
        try:
            return await self.measured(name, closed_loop(sessions, op, total=batches))
        finally:
            for s in sessions:
                await s.close()

    async def raw_upsert(self, count: int, seed: int) -> Run:
        batch = self.args.batch
        observed_dt = datetime.now(UTC)
        observed = iso(observed_dt)
        iris = self.iris

        def rows(k: int) -> list[tuple[Any, ...]]:
            rng = random.Random(seed * 1_000_003 + k)
            lo, hi = k * batch, min(count, (k + 1) * batch)
            return [("", entity_id(i), self.etype_iri, observed_dt, observed_dt,
                     orjson.dumps(self.city.internal_doc(i, rng, observed, iris)).decode()) for i in range(lo, hi)]

        batches = math.ceil(count / batch)
        if self.pg:
            sql = ("INSERT INTO bench_raw (tenant, id, type, created_at, modified_at, attrs, scope) "
                   "VALUES ($1, $2, $3, $4, $5, $6::jsonb, NULL) ON CONFLICT (tenant, id) DO UPDATE SET "
                   "type = excluded.type, modified_at = excluded.modified_at, attrs = excluded.attrs, "
                   "scope = excluded.scope")

            async def op(conn: Any, k: int) -> bool:
                data = rows(k)
                async with conn.transaction():
                    await conn.executemany(sql, data)
                return True

            sessions = await self.raw.sessions(self.args.load_concurrency)
            try:
                return await self.measured("a_upsert_baseline", closed_loop(sessions, op, total=batches))
            finally:
                await self.raw.release(sessions)
        db = self.raw.conn
        sql = ("INSERT INTO bench_raw (tenant, id, type, created_at, modified_at, attrs, scope) "
               "VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (tenant, id) DO UPDATE SET "
               "type = excluded.type, modified_at = excluded.modified_at, attrs = excluded.attrs, "
               "scope = excluded.scope")

        async def sqlite_op(_session: Any, k: int) -> bool:
            data = [(t, i, ty, c.isoformat(), m.isoformat(), a) for t, i, ty, c, m, a in rows(k)]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, data)
            db.execute("COMMIT")
            return True

        return await self.measured("a_upsert_baseline", closed_loop([None], sqlite_op, total=batches))

    async def raw_copy(self, count: int, seed: int) -> Run | None:
        if not self.pg:
            return None
        batch = self.args.batch
        observed_dt = datetime.now(UTC)
        observed = iso(observed_dt)
        await self.raw.execute("DROP TABLE IF EXISTS bench_copy")
        await self.raw.execute("CREATE TABLE bench_copy (LIKE hub_entities INCLUDING ALL)")

        async def op(conn: Any, k: int) -> bool:
            rng = random.Random(seed * 1_000_003 + k)
            lo, hi = k * batch, min(count, (k + 1) * batch)
            records = [("", entity_id(i), self.etype_iri, observed_dt, observed_dt,
                        orjson.dumps(self.city.internal_doc(i, rng, observed, self.iris)).decode(), None)
                       for i in range(lo, hi)]
            await conn.copy_records_to_table("bench_copy", records=records)
            return True

        sessions = await self.raw.sessions(self.args.load_concurrency)
        try:
            run = await self.measured("a_copy_baseline", closed_loop(sessions, op, total=math.ceil(count / batch)))
        finally:
            await self.raw.release(sessions)
        await self.raw.execute("DROP TABLE bench_copy")
        return run

    async def make_raw_table(self) -> None:
        """bench_raw: a logged copy of hub_entities with the same primary key and index."""
        log("copying hub_entities into bench_raw for the write baselines")
        if self.pg:
            await self.raw.execute("DROP TABLE IF EXISTS bench_raw")
            await self.raw.execute("CREATE TABLE bench_raw AS SELECT * FROM hub_entities")
            await self.raw.execute("ALTER TABLE bench_raw ADD PRIMARY KEY (tenant, id)")
            await self.raw.execute("CREATE INDEX ix_bench_raw_type ON bench_raw (tenant, type, id)")
            await self.raw.execute("VACUUM ANALYZE bench_raw")
            return
        db = self.raw.conn
        db.execute("DROP TABLE IF EXISTS bench_raw")
        db.execute("CREATE TABLE bench_raw (tenant VARCHAR(256) NOT NULL, id VARCHAR(512) NOT NULL, "
                   "type VARCHAR(512) NOT NULL, created_at DATETIME NOT NULL, modified_at DATETIME NOT NULL, "
                   "attrs JSON NOT NULL, scope JSON, PRIMARY KEY (tenant, id))")
        db.execute("INSERT INTO bench_raw SELECT tenant, id, type, created_at, modified_at, attrs, scope "
                   "FROM hub_entities")
        db.execute("CREATE INDEX ix_bench_raw_type ON bench_raw (tenant, type, id)")

    # ---------------------------------------------------------------- (b): PATCH at concurrency 32

    async def hub_patch(self, concurrency: int, seconds: float) -> Run:
        n = self.args.entities
        rng = random.Random(7)
        observed = iso(datetime.now(UTC))

        async def op(session: Any, _k: int) -> bool:
            i = rng.randrange(n)
            body = orjson.dumps({"pm25": {"type": "Property", "value": round(rng.uniform(0, 150), 1),
                                          "unitCode": "GQ", "observedAt": observed}})
            status, payload = await session.request("PATCH", f"/ngsi-ld/v1/entities/{entity_id(i)}/attrs", body)
            if status != 204:
                raise RuntimeError(f"PATCH answered {status}: {payload[:300]!r}")
            return True

        sessions = await self.clients.sessions(concurrency)
        try:
            await closed_loop(sessions, op, duration=min(3.0, seconds / 5))  # warm-up: connections, pool
            return await self.measured("b_patch", closed_loop(sessions, op, duration=seconds))
        finally:
            for s in sessions:
                await s.close()

    async def raw_patch(self, concurrency: int, seconds: float, rmw: bool) -> Run:
        n = self.args.entities
        rng = random.Random(8)
        observed = iso(datetime.now(UTC))
        pm25 = self.iris["pm25"]

        def instance() -> str:
            return orjson.dumps({"type": "Property", "value": round(rng.uniform(0, 150), 1), "unitCode": "GQ",
                                 "observedAt": observed, "createdAt": observed, "modifiedAt": observed}).decode()

        name = "b_patch_baseline_rmw" if rmw else "b_patch_baseline"
        if self.pg:
            update = ("UPDATE bench_raw SET attrs = jsonb_set(attrs, ARRAY[$2::text, '0'], $3::jsonb), "
                      "modified_at = now() WHERE tenant = '' AND id = $1")
            set_doc = "UPDATE bench_raw SET attrs = $2::jsonb, modified_at = now() WHERE tenant = '' AND id = $1"
            select = "SELECT attrs::text FROM bench_raw WHERE tenant = '' AND id = $1 FOR UPDATE"

            async def op(conn: Any, _k: int) -> bool:
                eid = entity_id(rng.randrange(n))
                if not rmw:
                    return str(await conn.execute(update, eid, pm25, instance())) == "UPDATE 1"
                async with conn.transaction():
                    doc = orjson.loads(await conn.fetchval(select, eid))
                    doc[pm25] = [orjson.loads(instance())]
                    return str(await conn.execute(set_doc, eid, orjson.dumps(doc).decode())) == "UPDATE 1"

            sessions = await self.raw.sessions(concurrency)
            try:
                await closed_loop(sessions, op, duration=min(3.0, seconds / 5))
                return await self.measured(name, closed_loop(sessions, op, duration=seconds))
            finally:
                await self.raw.release(sessions)
        db = self.raw.conn
        path = f'$."{pm25}"[0]'

        async def sqlite_op(_session: Any, _k: int) -> bool:
            eid = entity_id(rng.randrange(n))
            if not rmw:
                cur = db.execute("UPDATE bench_raw SET attrs = json_set(attrs, ?, json(?)), "
                                 "modified_at = CURRENT_TIMESTAMP WHERE tenant = '' AND id = ?",
                                 (path, instance(), eid))
                return cur.rowcount == 1
            db.execute("BEGIN IMMEDIATE")
            doc = orjson.loads(db.execute("SELECT attrs FROM bench_raw WHERE tenant = '' AND id = ?",
                                          (eid,)).fetchone()[0])
            doc[pm25] = [orjson.loads(instance())]
            cur = db.execute("UPDATE bench_raw SET attrs = ?, modified_at = CURRENT_TIMESTAMP "
                             "WHERE tenant = '' AND id = ?", (orjson.dumps(doc).decode(), eid))
            db.execute("COMMIT")
            return cur.rowcount == 1

        return await self.measured(name, closed_loop([None], sqlite_op, duration=seconds))

    # ---------------------------------------------------------------- (c)(d)(e): reads

    async def hub_reads(self, name: str, paths: list[str], concurrency: int,
                        check: Callable[[int, bytes], bool] | None = None) -> Run:
        async def op(session: Any, k: int) -> bool:
            status, payload = await session.request("GET", paths[k])
            if status != 200:
                raise RuntimeError(f"GET {paths[k][:200]} answered {status}: {payload[:300]!r}")
            return check(k, payload) if check else True

        sessions = await self.clients.sessions(concurrency)
        try:
            warm = min(50, len(paths))
            await closed_loop(sessions, op, total=warm)
            return await self.measured(name, closed_loop(sessions, op, total=len(paths)))
        finally:
            for s in sessions:
                await s.close()

    async def raw_reads(self, name: str, queries: list[tuple[str, tuple[Any, ...]]], concurrency: int) -> Run:
        if self.pg:
            async def op(conn: Any, k: int) -> bool:
                sql, params = queries[k]
                await conn.fetch(sql, *params)
                return True

            sessions = await self.raw.sessions(concurrency)
            try:
                await closed_loop(sessions, op, total=min(50, len(queries)))
                return await self.measured(name, closed_loop(sessions, op, total=len(queries)))
            finally:
                await self.raw.release(sessions)
        db = self.raw.conn

        async def sqlite_op(_session: Any, k: int) -> bool:
            sql, params = queries[k]
            db.execute(sql, params).fetchall()
            return True

        await closed_loop([None], sqlite_op, total=min(50, len(queries)))
        return await self.measured(name, closed_loop([None], sqlite_op, total=len(queries)))

    async def raw_ids(self, sql: str, params: tuple[Any, ...]) -> list[str]:
        if self.pg:
            async with self.raw.pool.acquire() as conn:
                return [row[0] for row in await conn.fetch(sql, *params)]
        return [row[0] for row in self.raw.conn.execute(sql, params).fetchall()]

    async def hub_ids(self, path: str) -> list[str]:
        session = (await self.clients.sessions(1))[0]
        try:
            status, payload = await session.request("GET", path)
        finally:
            await session.close()
        return [e["id"] for e in orjson.loads(payload)] if status == 200 else [f"HTTP {status}"]

    def near_sql(self, lon: float, lat: float) -> tuple[str, tuple[Any, ...]]:
        if self.pg:
            return ("SELECT e.id, e.type, e.created_at, e.modified_at, e.attrs, e.scope "
                    "FROM hub_entity_geo g JOIN hub_entities e ON e.tenant = g.tenant AND e.id = g.entity_id "
                    "WHERE g.tenant = '' AND g.attr = $1 AND e.type = $2 AND ST_DWithin(g.geom::geography, "
                    "ST_SetSRID(ST_MakePoint($3, $4), 4326)::geography, $5, false) ORDER BY e.id LIMIT 20",
                    (self.iris["location"], self.etype_iri, lon, lat, float(NEAR_METRES)))
        dlat = NEAR_METRES / (EARTH_RADIUS_M * math.pi / 180)
        dlon = dlat / math.cos(math.radians(lat))
        return ("SELECT e.id, e.type, e.created_at, e.modified_at, e.attrs, e.scope FROM hub_entity_geo_rtree r "
                "JOIN hub_entity_geo g ON g.gid = r.gid JOIN hub_entities e ON e.tenant = g.tenant "
                "AND e.id = g.entity_id WHERE r.minx <= ? AND r.maxx >= ? AND r.miny <= ? AND r.maxy >= ? "
                "AND g.tenant = '' AND g.attr = ? AND e.type = ? AND bench_distance(g.geojson, ?, ?) <= ? "
                "ORDER BY e.id LIMIT 20",
                (lon + dlon, lon - dlon, lat + dlat, lat - dlat, self.iris["location"], self.etype_iri,
                 lon, lat, float(NEAR_METRES)))

    def q_sql(self, case: QCase) -> tuple[str, tuple[Any, ...]]:
        cols = "id, type, created_at, modified_at, attrs, scope"
        if self.pg:
            if case.kind == "pm25_district":
                return (f"SELECT {cols} FROM hub_entities WHERE tenant = '' AND type = $1 "
                        "AND (attrs->$2->0->>'value')::float8 > $3 AND attrs->$4->0->>'value' = $5 "
                        "ORDER BY id LIMIT 20",
                        (self.etype_iri, self.iris["pm25"], float(case.a), self.iris["district"], case.b))
            return (f"SELECT {cols} FROM hub_entities WHERE tenant = '' AND type = $1 "
                    "AND (attrs->$2->0->>'value')::float8 BETWEEN $3 AND $4 ORDER BY id LIMIT 20",
                    (self.etype_iri, self.iris["no2"], float(case.a), float(case.b)))
        if case.kind == "pm25_district":
            return (f"SELECT {cols} FROM hub_entities WHERE tenant = '' AND type = ? "
                    "AND json_extract(attrs, ?) > ? AND json_extract(attrs, ?) = ? ORDER BY id LIMIT 20",
                    (self.etype_iri, json_path(self.iris["pm25"]), case.a, json_path(self.iris["district"]), case.b))
        return (f"SELECT {cols} FROM hub_entities WHERE tenant = '' AND type = ? "
                "AND json_extract(attrs, ?) BETWEEN ? AND ? ORDER BY id LIMIT 20",
                (self.etype_iri, json_path(self.iris["no2"]), case.a, case.b))

    async def maintenance(self) -> None:
        """Statistics as autovacuum would have them (the bench does not wait for autovacuum)."""
        log("VACUUM ANALYZE of the hub tables")
        if self.pg:
            for table in ("hub_entities", "hub_entity_geo", "bench_raw"):
                await self.raw.execute(f"VACUUM ANALYZE {table}")
        else:
            self.raw.conn.execute("ANALYZE")

    # ---------------------------------------------------------------- the run

    def measure_line(self, measure: str, hub: Any, baseline: Any, ratio: Any, phase: str, *, target: float,
                     lower_is_better: bool = False, **extra: Any) -> None:
        """One JSON line on stdout per measure, as soon as it is taken: the hub's figure, the raw baseline of
        the same run, their ratio, the load average and the CPU per operation of the phase."""
        met = hub < target if lower_is_better else hub >= target
        line = {"bench": "hub", "measure": measure, "backend": "postgresql" if self.pg else "sqlite",
                "entities": self.args.entities, "hub": hub, "baseline": baseline, "ratio": ratio, "target": target,
                "target_met": met, "loadavg": [round(x, 2) for x in os.getloadavg()],
                "cpu": self.cpu_phases.get(phase), **extra}
        print(orjson.dumps(line).decode(), flush=True)

    async def run(self) -> dict[str, Any]:
        a, out, n = self.args, self.out, self.args.entities
        if self.pg:
            await self.raw.open()

        log(f"loading {n:,} entities through entityOperations/upsert ({a.batch} a request, "
            f"{a.load_concurrency} concurrent)")
        load = await self.hub_upsert("load", 0, n, seed=1)
        out["load_entities_per_s"] = round(n / load.elapsed)
        out["load_attr_per_s"] = round(n * ATTRS_PER_ENTITY / load.elapsed)
        out["load_errors"] = load.errors
        out["load_seconds"] = round(load.elapsed, 1)

        self.etype_iri, self.iris = await self.raw.iris() if self.pg else self.raw.iris()
        if self.pg:
            log("ANALYZE after loading")
            await self.raw.execute("ANALYZE")
        await self.make_raw_table()

        # (a) upsert of existing entities
        u = min(a.update_entities, n)
        log(f"(a) re-upserting {u:,} existing entities with new values")
        upd = await self.hub_upsert("a_upsert", 0, u, seed=2)
        log(f"(a) baseline: raw upsert of {u:,} existing rows into bench_raw")
        base = await self.raw_upsert(u, seed=2)
        copy_run = await self.raw_copy(u, seed=3)
        hub_eps = u / upd.elapsed if not upd.errors else float("nan")
        out["upsert_entities"] = u
        out["upsert_errors"] = upd.errors
        out["upsert_entities_per_s"] = round(hub_eps)
        out["upsert_attr_updates_per_s"] = round(hub_eps * ATTRS_PER_ENTITY)
        out["upsert_baseline_rows_per_s"] = round(u / base.elapsed)
        out["upsert_baseline_attr_per_s"] = round(u / base.elapsed * ATTRS_PER_ENTITY)
        out["upsert_baseline_kind"] = (
            "asyncpg executemany INSERT..ON CONFLICT DO UPDATE, 1000 rows/txn, logged table with the same PK+index"
            if self.pg else "sqlite3 executemany INSERT..ON CONFLICT DO UPDATE, 1000 rows/txn")
        out["upsert_ratio"] = round(hub_eps / (u / base.elapsed), 3)
        if copy_run is not None:
            out["copy_baseline_rows_per_s"] = round(u / copy_run.elapsed)
        self.measure_line("upsert_attr_updates_per_s", out["upsert_attr_updates_per_s"],
                          out["upsert_baseline_attr_per_s"], out["upsert_ratio"], "a_upsert",
                          target=TARGETS["upsert_attr_updates_per_s"], errors=upd.errors)

        # (b) PATCH at concurrency 32
        c = a.patch_concurrency
        log(f"(b) PATCH /entities/{{id}}/attrs at concurrency {c} for {a.patch_seconds:g}s")
        patch = await self.hub_patch(c, a.patch_seconds)
        log(f"(b) baseline: raw UPDATE at concurrency {c}")
        pbase = await self.raw_patch(c, a.patch_seconds, rmw=False)
        prmw = await self.raw_patch(c, a.patch_seconds, rmw=True)
        out[f"patch_per_s_c{c}"] = round(patch.rate())
        out["patch_p50_ms"] = round(patch.pct_ms(0.5), 2)
        out["patch_p99_ms"] = round(patch.pct_ms(0.99), 2)
        out["patch_errors"] = patch.errors
        out["patch_baseline_per_s"] = round(pbase.rate())
        out["patch_baseline_rmw_per_s"] = round(prmw.rate())
        out["patch_ratio"] = round(patch.rate() / pbase.rate(), 3) if pbase.rate() else None
        out["patch_ratio_vs_rmw"] = round(patch.rate() / prmw.rate(), 3) if prmw.rate() else None
        self.measure_line(f"patch_per_s_c{c}", out[f"patch_per_s_c{c}"], out["patch_baseline_rmw_per_s"],
                          out["patch_ratio_vs_rmw"], "b_patch", target=TARGETS["patch_per_s_c32"],
                          baseline_kind="read-modify-write (BEGIN; SELECT FOR UPDATE; UPDATE; COMMIT)",
                          bare_update_per_s=out["patch_baseline_per_s"], ratio_vs_bare_update=out["patch_ratio"],
                          p50_ms=out["patch_p50_ms"], p99_ms=out["patch_p99_ms"], errors=patch.errors)
        if a.writes_only:
            await self.clients.close()
            if self.pg:
                await self.raw.close()
            return out

        await self.maintenance()

        # (c) GET by id
        rng = random.Random(11)
        ids = [entity_id(rng.randrange(n)) for _ in range(a.get_samples)]
        get_paths = [f"/ngsi-ld/v1/entities/{i}" for i in ids]
        pk = ("SELECT id, type, created_at, modified_at, attrs, scope FROM hub_entities "
              "WHERE tenant = '' AND id = $1") if self.pg else (
              "SELECT id, type, created_at, modified_at, attrs, scope FROM hub_entities WHERE tenant = '' AND id = ?")
        get_sql = [(pk, (i,)) for i in ids]
        log(f"(c) GET /entities/{{id}}: {len(ids)} random ids at concurrency 1 and 8")
        g1 = await self.hub_reads("c_get_c1", get_paths, 1)
        g8 = await self.hub_reads("c_get_c8", get_paths, 8)
        gb1 = await self.raw_reads("c_get_baseline_c1", get_sql, 1)
        gb8 = await self.raw_reads("c_get_baseline_c8", get_sql, 8)
        out["get_p50_ms"] = round(g1.pct_ms(0.5), 2)
        out["get_p99_ms"] = round(g1.pct_ms(0.99), 2)
        out["get_c8_p50_ms"] = round(g8.pct_ms(0.5), 2)
        out["get_c8_p99_ms"] = round(g8.pct_ms(0.99), 2)
        out["get_c8_per_s"] = round(g8.rate())
        out["get_baseline_p50_ms"] = round(gb1.pct_ms(0.5), 3)
        out["get_baseline_p99_ms"] = round(gb1.pct_ms(0.99), 3)
        out["get_baseline_c8_p99_ms"] = round(gb8.pct_ms(0.99), 3)
        out["get_baseline_c8_per_s"] = round(gb8.rate())
        out["get_ratio_p99"] = round(g1.pct_ms(0.99) / gb1.pct_ms(0.99), 1)
        out["get_errors"] = g1.errors + g8.errors
        self.measure_line("get_p99_ms", out["get_p99_ms"], out["get_baseline_p99_ms"], out["get_ratio_p99"], "c_get_c1",
                          target=TARGETS["get_p99_ms"], lower_is_better=True)

        # (d) near;maxDistance==500
        rng = random.Random(12)
        points = [random_point(rng) for _ in range(a.near_samples)]
        sizes: list[int] = []

        def count_results(_k: int, payload: bytes) -> bool:
            sizes.append(len(orjson.loads(payload)))
            return True

        log(f"(d) near;maxDistance=={NEAR_METRES}: {len(points)} random points at concurrency 1")
        nr = await self.hub_reads("d_near", [near_path(x, y) for x, y in points], 1, count_results)
        nb = await self.raw_reads("d_near_baseline", [self.near_sql(x, y) for x, y in points], 1)
        out["near_p50_ms"] = round(nr.pct_ms(0.5), 2)
        out["near_p99_ms"] = round(nr.pct_ms(0.99), 2)
        out["near_baseline_p50_ms"] = round(nb.pct_ms(0.5), 2)
        out["near_baseline_p99_ms"] = round(nb.pct_ms(0.99), 2)
        out["near_ratio_p99"] = round(nr.pct_ms(0.99) / nb.pct_ms(0.99), 2)
        out["near_mean_results"] = round(sum(sizes[-len(points):]) / max(1, len(points)), 1)
        out["near_errors"] = nr.errors
        same = True
        for x, y in points[:10]:
            hub = await self.hub_ids(near_path(x, y))
            sql, params = self.near_sql(x, y)
            same = same and hub == await self.raw_ids(sql, params)
        out["near_same_ids_as_baseline"] = same
        self.measure_line("near_p99_ms", out["near_p99_ms"], out["near_baseline_p99_ms"], out["near_ratio_p99"],
                          "d_near", target=TARGETS["near_p99_ms"], lower_is_better=True, same_ids=same)

        # (e) type + q
        cases = q_cases(random.Random(13), a.q_samples)
        log(f"(e) type + q: {len(cases)} queries ({cases[0].q!r}, {cases[1].q!r}, ...) at concurrency 1")
        qr = await self.hub_reads("e_q", [c.path for c in cases], 1)
        qb = await self.raw_reads("e_q_baseline", [self.q_sql(c) for c in cases], 1)
        by_kind: dict[str, list[float]] = {}
        base_kind: dict[str, list[float]] = {}
        # closed_loop at concurrency 1 runs the cases in order, so latencies line up with cases.
        for case, hub_lat, base_lat in zip(cases, qr.latencies, qb.latencies, strict=False):
            by_kind.setdefault(case.kind, []).append(hub_lat)
            base_kind.setdefault(case.kind, []).append(base_lat)
        out["q_p50_ms"] = round(qr.pct_ms(0.5), 2)
        out["q_p99_ms"] = round(qr.pct_ms(0.99), 2)
        for kind, lat in by_kind.items():
            out[f"q_{kind}_p99_ms"] = round(percentile(lat, 0.99) * 1000, 2)
            out[f"q_{kind}_baseline_p99_ms"] = round(percentile(base_kind[kind], 0.99) * 1000, 2)
        out["q_baseline_p50_ms"] = round(qb.pct_ms(0.5), 2)
        out["q_baseline_p99_ms"] = round(qb.pct_ms(0.99), 2)
        out["q_ratio_p99"] = round(qr.pct_ms(0.99) / qb.pct_ms(0.99), 2)
        out["q_errors"] = qr.errors
        same = True
        for case in cases[:10]:
            sql, params = self.q_sql(case)
            same = same and await self.hub_ids(case.path) == await self.raw_ids(sql, params)
        out["q_same_ids_as_baseline"] = same
        self.measure_line("q_p99_ms", out["q_p99_ms"], out["q_baseline_p99_ms"], out["q_ratio_p99"], "e_q",
                          target=TARGETS["q_p99_ms"], lower_is_better=True, same_ids=same)

        if a.explain and self.pg:
            await self.explain(points[0], cases[:2])
        await self.clients.close()
        if self.pg:
            await self.raw.close()
        return out

    async def explain(self, point: tuple[float, float], cases: list[QCase]) -> None:
        """EXPLAIN ANALYZE of the SQL the hub generates (compiled from the hub's own store code)."""
        try:
            from sqlalchemy import and_, select
            from sqlalchemy.dialects import postgresql
            from sqlalchemy.ext.asyncio import create_async_engine

            from cityos.hub import geoquery
            from cityos.hub.jsonld import ContextResolver, ContextStore
            from cityos.hub.models import entities
            from cityos.hub.qlang import parse_q
            from cityos.hub.store import EntityQuery, HubStore

            ctx = ContextResolver(ContextStore()).core
            store = HubStore(create_async_engine("postgresql+asyncpg://localhost/unused"))
            coords = f"[{point[0]},{point[1]}]"
            queries = [EntityQuery(types=[self.etype_iri], geo=geoquery.parse_geoquery(
                f"near;maxDistance=={NEAR_METRES}", "Point", coords, None, ctx.expand), expand=ctx.expand)]
            queries += [EntityQuery(types=[self.etype_iri], q=parse_q(c.q), expand=ctx.expand) for c in cases]
            for query in queries:
                stmt = (select(entities).where(and_(*store._conditions("", query, False)))
                        .order_by(entities.c.id).limit(20))
                sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
                async with self.raw.pool.acquire() as conn:
                    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
                log("hub SQL: " + " ".join(sql.split()))
                for row in plan:
                    print("    " + row[0], file=sys.stderr)
            for sql, params in [self.near_sql(*point), *(self.q_sql(c) for c in cases)]:
                async with self.raw.pool.acquire() as conn:
                    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
                log("baseline SQL: " + " ".join(sql.split()))
                for row in plan:
                    print("    " + row[0], file=sys.stderr)
        except Exception as exc:
            log(f"--explain failed: {type(exc).__name__}: {exc}")


def targets(out: dict[str, Any], concurrency: int) -> None:
    patch = out.get(f"patch_per_s_c{concurrency}", 0)
    out["target_upsert_met"] = out.get("upsert_attr_updates_per_s", 0) >= TARGETS["upsert_attr_updates_per_s"]
    out["target_patch_met"] = concurrency == 32 and patch >= TARGETS["patch_per_s_c32"]
    out["target_get_p99_met"] = out.get("get_p99_ms", math.inf) < TARGETS["get_p99_ms"]
    out["target_near_p99_met"] = out.get("near_p99_ms", math.inf) < TARGETS["near_p99_ms"]
    out["target_q_p99_met"] = out.get("q_p99_ms", math.inf) < TARGETS["q_p99_ms"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=1_000_000, help="entities to load (default 1,000,000)")
    p.add_argument("--update-entities", type=int, default=100_000,
                   help="existing entities re-upserted for figure (a) (default 100,000)")
    p.add_argument("--batch", type=int, default=1000, help="entities per upsert request")
    p.add_argument("--load-concurrency", type=int, default=4, help="concurrent upsert requests")
    p.add_argument("--patch-concurrency", type=int, default=32)
    p.add_argument("--patch-seconds", type=float, default=20.0)
    p.add_argument("--writes-only", action="store_true", help="measure (a) and (b) only, skip the reads")
    p.add_argument("--get-samples", type=int, default=3000)
    p.add_argument("--near-samples", type=int, default=500)
    p.add_argument("--q-samples", type=int, default=600, help="half pm25+district, half no2 range")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="HTTP client: a minimal asyncio HTTP/1.1 client (default) or httpx.AsyncClient")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--db-pool-size", type=int, default=None, help="CITYOS_DB_POOL_SIZE for the server")
    p.add_argument("--sqlite", action="store_true", help="run against SQLite (figures are informational)")
    p.add_argument("--pg-admin-url", default=os.environ.get("CITYOS_BENCH_PG_ADMIN_URL",
                                                            "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--keep", action="store_true", help="keep the database (and print its URL to stderr)")
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of hub and baseline queries")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each measured phase, wait up to this many seconds for other processes on the "
                        "machine to fall below 0.3 cores (0: do not wait)")
    p.add_argument("--profile-dir", default=None, help="py-spy record the server during each phase into this dir")
    p.add_argument("--app-factory", default=None,
                   help="serve MODULE:FACTORY with uvicorn instead of `cityos serve` (what-if experiments only)")
    p.add_argument("--seed", type=int, default=20261121)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = "sqlite" if args.sqlite else "postgresql"
    loadavg = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="cityos_bench_"))
    name = f"cityos_bench_{secrets.token_hex(4)}"
    if args.sqlite:
        db_path = tmp / "cityos.db"
        database_url = f"sqlite:///{db_path}"
    else:
        base = args.pg_admin_url.rsplit("/", 1)[0]
        database_url = f"{base}/{name}"
        log(f"creating database {name}")
        admin_sql(args.pg_admin_url, f'CREATE DATABASE "{name}"')
    proc: subprocess.Popen[bytes] | None = None
    started = time.perf_counter()
    try:
        log("cityos db upgrade")
        migrate(database_url)
        port = free_port()
        log(f"starting the server on port {port} ({args.workers} worker(s))")
        proc = start_server(database_url, port, args.workers, args.db_pool_size, tmp / "server.log",
                            args.app_factory)
        log(f"City of {args.entities:,} entities: generating positions")
        bench = Bench(args=args, backend=backend, clients=Clients(args.client, "127.0.0.1", port),
                      cpu=CpuMeter(proc.pid, None if args.sqlite else name, shared_postgres=True),
                      profiler=Profiler(Path(args.profile_dir) if args.profile_dir else None, proc.pid),
                      raw=SqliteRaw(db_path) if args.sqlite else PgRaw(
                          database_url, max(args.patch_concurrency, args.load_concurrency, 8) + 2),
                      city=City(args.entities, args.seed))
        out: dict[str, Any] = {"bench": "hub", "backend": backend, "entities": args.entities,
                               "attrs_per_entity": ATTRS_PER_ENTITY, "client": args.client,
                               "server_workers": args.workers, "cores": os.cpu_count()}
        if args.app_factory:
            out["app_factory"] = args.app_factory
        bench.out = out
        asyncio.run(bench.run())
        targets(out, args.patch_concurrency)
        out["cpu_cores_used"] = bench.cpu_phases
        out["loadavg_at_start"] = [round(x, 2) for x in loadavg]
        out["duration_s"] = round(time.perf_counter() - started, 1)
        print(orjson.dumps(out).decode(), flush=True)
        return 0
    finally:
        if proc is not None:
            log("stopping the server")
            stop_server(proc)
            server_log = (tmp / "server.log").read_text(errors="replace")
            if server_log.strip():
                log("server log (tail):\n" + server_log[-3000:])
        if args.keep:
            log(f"kept database {database_url}")
        else:
            if not args.sqlite:
                log(f"dropping database {name}")
                admin_sql(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for path in sorted(tmp.glob("*")):
                path.unlink()
            tmp.rmdir()


if __name__ == "__main__":
    sys.exit(main())
