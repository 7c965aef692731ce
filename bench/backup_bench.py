"""RTO of a PostgreSQL restore with `cityos backup`, against plain pg_dump/pg_restore in the same run.

Fills a database of its own with attribute history (realistic rows: the hub's own schema, JSON instances
of air-quality readings) up to `--gigabytes`, then times:

- baseline: `pg_dump -Fc` and `pg_restore` into a new database (no encryption, no checks);
- CityOS: `cityos backup create` (snapshot + AES-256-GCM sealing) and `restore` (full authentication of
  the file, then a new database);

and reports the recovery time objective as the restore time plus the time to reach `/ready`-level
health (migrations at head). One JSON line; the ratio is CityOS's restore time over the baseline's.

    uv run python bench/backup_bench.py --gigabytes 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from cityos.config import Settings
from cityos.core import migrate
from cityos.operations.backup import create_backup, key_from_text, new_key_text, restore_backup

ADMIN = os.environ.get("CITYOS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROWS_PER_STEP = 500_000


def _url(name: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + "/" + name


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _fill(url: str, gigabytes: float) -> tuple[int, int]:
    """Insert history rows until the database holds `gigabytes`; returns (rows, bytes)."""
    conn = await asyncpg.connect(url)
    rows = 0
    try:
        while True:
            size = await conn.fetchval("SELECT pg_database_size(current_database())")
            if size >= gigabytes * 1024**3:
                return rows, int(size)
            await conn.execute(f"""
                INSERT INTO hub_attribute_history
                  (tenant, entity_id, entity_type, attr, instance_id, ts, modified_at, deleted, instance, seq)
                SELECT '', 'urn:ngsi-ld:AirQualityObserved:station-' || (g % 2000),
                       'https://smartdatamodels.org/dataModel.Environment/AirQualityObserved',
                       'https://smartdatamodels.org/dataModel.Environment/pm25',
                       md5(g::text), now() - (g || ' seconds')::interval, now(), 0,
                       jsonb_build_object('type', 'Property', 'value', (g % 500) / 3.0,
                                          'observedAt', to_char(now() - (g || ' seconds')::interval,
                                                                'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                          'unitCode', 'GQ'), g
                FROM generate_series({rows + 1}, {rows + ROWS_PER_STEP}) AS g""")
            rows += ROWS_PER_STEP
    finally:
        await conn.close()


def _timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=1.0)
    opts = parser.parse_args()
    stamp = f"{os.getpid()}_{int(time.time())}"
    source, baseline_target, cityos_target = f"rto_src_{stamp}", f"rto_base_{stamp}", f"rto_city_{stamp}"
    await _admin(f'CREATE DATABASE "{source}"')
    try:
        await asyncio.to_thread(migrate.upgrade, Settings(database_url=_url(source)))
        fill_started = time.perf_counter()
        rows, size = await _fill(_url(source), opts.gigabytes)
        fill_s = time.perf_counter() - fill_started
        with tempfile.TemporaryDirectory(prefix="cityos-rto-") as work:
            dump = Path(work) / "baseline.dump"
            base_dump_s = _timed(["pg_dump", "-Fc", "--no-owner", f"--file={dump}", f"--dbname={_url(source)}"])
            await _admin(f'CREATE DATABASE "{baseline_target}"')
            base_restore_s = _timed(["pg_restore", "--no-owner", f"--dbname={_url(baseline_target)}", str(dump)])
            dump_bytes = dump.stat().st_size
            dump.unlink()

            key = key_from_text(new_key_text())
            started = time.perf_counter()
            sealed = create_backup(_url(source), Path(work) / "cityos.cityos-backup", key)
            city_backup_s = time.perf_counter() - started
            backup_bytes = sealed.path.stat().st_size
            started = time.perf_counter()
            restore_backup(sealed.path, _url(cityos_target), key)
            city_restore_s = time.perf_counter() - started
            started = time.perf_counter()
            await asyncio.to_thread(migrate.upgrade, Settings(database_url=_url(cityos_target)))
            conn = await asyncpg.connect(_url(cityos_target))
            restored_rows = await conn.fetchval("SELECT count(*) FROM hub_attribute_history")
            await conn.close()
            ready_s = time.perf_counter() - started
        rto_s = city_restore_s + ready_s
        print(json.dumps({
            "bench": "backup_rto", "backend": "postgresql", "database_bytes": size, "history_rows": rows,
            "fill_s": round(fill_s, 1), "dump_bytes": dump_bytes, "backup_bytes": backup_bytes,
            "baseline_dump_s": round(base_dump_s, 1), "baseline_restore_s": round(base_restore_s, 1),
            "cityos_backup_s": round(city_backup_s, 1), "cityos_restore_s": round(city_restore_s, 1),
            "ready_after_restore_s": round(ready_s, 1), "rto_s": round(rto_s, 1),
            "restore_ratio_to_baseline": round(city_restore_s / base_restore_s, 2),
            "restored_rows_equal": restored_rows == rows,
            "rto_per_gb_s": round(rto_s / (size / 1024**3), 1),
            "target_rto_s": 1800, "target_met_at_this_size": rto_s <= 1800}))
    finally:
        for name in (source, baseline_target, cityos_target):
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
