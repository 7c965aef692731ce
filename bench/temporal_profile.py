"""Process CPU of one temporal aggregation request, in-process, on a database `temporal_bench.py --keep` left.

    uv run python bench/temporal_profile.py postgresql://postgres@127.0.0.1:5432/cityos_bench_xxxxxxxx \
        [--runs 5] [--methods avg] [--period PT1H] [--profile] [--dump answer.json]

Asks the hourly aggregation of `temporal_bench.py` (every Sensor, the last full day) through the app in this
process (httpx ASGITransport) and prints one JSON line: the median wall time and the median process CPU per
request (the broker's work, plus httpx building the request; the answer is not parsed). CPU is the comparable
figure on a shared machine. `--profile` prints a cProfile (CPU clock) of the measured requests to stderr;
`--dump` writes the answer's bytes, to compare two versions of the code byte for byte.

Baseline: the same command with the code of another commit first on the path, e.g.
``git archive main src | tar -x -C /tmp/base && PYTHONPATH=/tmp/base/src uv run python bench/temporal_profile.py …``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from bench_auth import bearer

from cityos.app import create_app
from cityos.config import Settings
from cityos.core import clock


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--methods", default="avg")
    parser.add_argument("--period", default="PT1H")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dump", default=None)
    args = parser.parse_args()
    os.environ["CITYOS_RETENTION_INTERVAL_SECONDS"] = "0"
    app = create_app(Settings(database_url=args.url, max_page_size=1000))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=bearer(app)) as client:
            day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
            params = {"type": "Sensor", "attrs": "temperature", "timerel": "between", "timeAt": clock.iso(day),
                      "endTimeAt": clock.iso(day + timedelta(days=1)), "options": "aggregatedValues",
                      "aggrMethods": args.methods, "aggrPeriodDuration": args.period, "limit": "1000"}
            first = await client.get("/ngsi-ld/v1/temporal/entities", params=params)  # warm-up
            assert first.status_code == 200, first.text
            if args.dump:
                await asyncio.to_thread(Path(args.dump).write_bytes, first.content)
            profile = cProfile.Profile(time.process_time)
            walls, cpus = [], []
            for _ in range(args.runs):
                wall, cpu = time.perf_counter(), time.process_time()
                if args.profile:
                    profile.enable()
                r = await client.get("/ngsi-ld/v1/temporal/entities", params=params)
                if args.profile:
                    profile.disable()
                walls.append((time.perf_counter() - wall) * 1000)
                cpus.append((time.process_time() - cpu) * 1000)
                assert r.status_code == 200, r.text
    if args.profile:
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    print(orjson.dumps({"bench": "temporal_profile", "methods": args.methods, "period": args.period,
                        "bytes": len(first.content), "wall_ms": round(statistics.median(walls), 1),
                        "cpu_ms": round(statistics.median(cpus), 1), "runs": args.runs,
                        "load_average": round(os.getloadavg()[0], 1)}).decode())


if __name__ == "__main__":
    asyncio.run(main())
