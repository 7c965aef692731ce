"""Benchmark of parking guidance (cityos.traffic.parking.guidance) over 5,000 car parks.

    uv run --frozen python bench/parking_bench.py                       # SQLite file in a temp dir
    uv run --frozen python bench/parking_bench.py --database-url postgresql://postgres@127.0.0.1:5432/bench_parking

Builds a database at the migration head with N car parks (default 5,000) spread over a 40 km × 40 km
city, random capacities and counts, and an occupancy history for every hour of the week (N × 168 rows).
Then Q guidance queries (default 1,000): a random destination, an arrival 0–6 h ahead, radius 3 km,
5 results.

- ours: `guidance.nearest` (indexed bounding-box query with the arrival hour's history row joined,
  numpy distances and ranking);
- baseline in the same run: plain SQL without the spatial prefilter (every car park of the tenant with
  the hour's history joined) and a per-row Python haversine, filter and sort — what a first version
  would do. Its answers must equal ours (`mismatches`, expected 0).

p50/p99 wall-clock per query (perf_counter) and the load average. Target: p99 < 50 ms at 5,000 car parks.
Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import and_, delete, insert, select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from cityos.config import Settings  # noqa: E402
from cityos.core import clock, migrate  # noqa: E402
from cityos.core.db import create_engine  # noqa: E402
from cityos.core.messages import city_zone  # noqa: E402
from cityos.traffic.parking import guidance  # noqa: E402
from cityos.traffic.parking.models import carparks, occupancy  # noqa: E402
from cityos.traffic.parking.service import is_open  # noqa: E402
from cityos.traffic.parking.tariff import Tariff, first_hour_price  # noqa: E402

T0 = time.perf_counter()
CENTRE = (31.2304, 121.4737)
HALF_SPAN_DEG = 0.18  # ≈ 20 km
TENANT = "bench"


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


async def populate(engine: AsyncEngine, count: int, rng: random.Random) -> None:
    now = clock.now()
    rows: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for n in range(count):
        total = rng.randint(20, 800)
        occupied = rng.randint(0, total)
        rows.append({"tenant": TENANT, "id": f"cp{n:05d}", "name": f"停车场 {n}", "department": "transport",
                     "lat": CENTRE[0] + rng.uniform(-HALF_SPAN_DEG, HALF_SPAN_DEG),
                     "lon": CENTRE[1] + rng.uniform(-HALF_SPAN_DEG, HALF_SPAN_DEG), "total": total,
                     "occupied": occupied, "held": 0, "free_minutes": 15, "hour_rate": rng.choice([500, 800, 1000]),
                     "night_rate": 200, "night_start": 22, "night_end": 7, "daily_cap": 6000,
                     "opens": "00:00", "closes": "00:00" if n % 5 else "23:00", "ev_chargers": rng.randint(0, 10),
                     "created_at": now, "updated_at": now})
        for how in range(168):
            samples = rng.randint(1, 8)
            history.append({"tenant": TENANT, "carpark_id": f"cp{n:05d}", "hour_of_week": how, "samples": samples,
                            "occupied_sum": samples * rng.randint(0, total)})
    async with engine.begin() as conn:
        await conn.execute(delete(occupancy).where(occupancy.c.tenant == TENANT))
        await conn.execute(delete(carparks).where(carparks.c.tenant == TENANT))
        for start in range(0, len(rows), 1000):
            await conn.execute(insert(carparks), rows[start:start + 1000])
        for start in range(0, len(history), 20000):
            await conn.execute(insert(occupancy), history[start:start + 20000])


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * guidance.EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


async def baseline(engine: AsyncEngine, lat: float, lon: float, arrival: dt.datetime, radius: float,
                   limit: int) -> list[str]:
    """Plain SQL over every car park, then Python per row (same prediction rule as ours)."""
    predict = arrival - clock.now() > guidance.PREDICT_AFTER
    query = select(carparks, occupancy.c.samples, occupancy.c.occupied_sum).select_from(carparks.outerjoin(
        occupancy, and_(occupancy.c.tenant == carparks.c.tenant, occupancy.c.carpark_id == carparks.c.id,
                        occupancy.c.hour_of_week == guidance.hour_of_week(arrival)))).where(
        carparks.c.tenant == TENANT)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    found: list[tuple[float, int, str]] = []
    zone = city_zone()
    for index, r in enumerate(rows):
        distance = haversine(lat, lon, r.lat, r.lon)
        if distance > radius:
            continue
        expected = float(r.occupied + r.held)
        if predict and r.samples:
            expected = max(r.occupied_sum / r.samples, float(r.held))
        if math.floor(r.total - expected) < 1 or not is_open(r.opens, r.closes, arrival):
            continue
        first_hour_price(Tariff(r.free_minutes, r.hour_rate, r.night_rate, r.night_start, r.night_end,
                                r.daily_cap), arrival, zone)
        found.append((distance, index, r.id))
    found.sort()
    return [item[2] for item in found[:limit]]


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3)}


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    rng = random.Random(args.seed)
    engine = create_engine(settings)
    log(f"populating {args.carparks} car parks and {args.carparks * 168} history rows")
    await populate(engine, args.carparks, rng)
    now = clock.now()
    queries = [(CENTRE[0] + rng.uniform(-HALF_SPAN_DEG, HALF_SPAN_DEG),
                CENTRE[1] + rng.uniform(-HALF_SPAN_DEG, HALF_SPAN_DEG),
                now + dt.timedelta(minutes=rng.randint(0, 360))) for _ in range(args.queries)]
    for lat, lon, arrival in queries[:20]:  # warm the pool and the page cache
        await guidance.nearest(engine, TENANT, lat, lon, arrival, args.radius, 5)
        await baseline(engine, lat, lon, arrival, args.radius, 5)
    ours: list[float] = []
    base: list[float] = []
    mismatches = 0
    empty = 0
    log(f"{args.queries} queries")
    for lat, lon, arrival in queries:
        started = time.perf_counter()
        answer = await guidance.nearest(engine, TENANT, lat, lon, arrival, args.radius, 5)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        expected = await baseline(engine, lat, lon, arrival, args.radius, 5)
        base.append(time.perf_counter() - started)
        mismatches += [a["id"] for a in answer] != expected
        empty += not answer
    await engine.dispose()
    result_ours, result_base = percentiles(ours), percentiles(base)
    return {"bench": "parking_guidance", "database": settings.database_url.split(":")[0],
            "carparks": args.carparks, "queries": args.queries, "radius_m": args.radius,
            "ours": result_ours, "baseline_plain_sql": result_base,
            "p99_ratio_baseline_over_ours": round(result_base["p99_ms"] / max(result_ours["p99_ms"], 1e-9), 2),
            "target_p99_ms": 50, "met": result_ours["p99_ms"] < 50, "mismatches": mismatches,
            "empty_answers": empty, "loadavg_1m": round(os.getloadavg()[0], 2), "seed": args.seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carparks", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--radius", type=float, default=3000.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='parking-bench-')}/bench.db"
    settings = Settings(database_url=url)
    migrate.upgrade(settings)  # runs its own event loop
    print(json.dumps(asyncio.run(run(args, settings)), ensure_ascii=False))


if __name__ == "__main__":
    main()
