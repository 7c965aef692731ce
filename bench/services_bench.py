"""Benchmark of 一网通办 (services) on PostgreSQL, with a raw-insert baseline from the same run.

    CITYOS_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
        uv run python bench/services_bench.py --history 1000000

What it does:

1. creates a fresh database ``cityos_svcbench_<random>`` on the server of
   ``CITYOS_BENCH_DATABASE_URL`` (dropped at the end unless ``--keep``) and migrates it;
2. runs the app in-process (FastAPI lifespan + httpx ASGI transport: the full request path, routing,
   auth with real signed tokens, validation, SpiffWorkflow, SQL; no TCP/uvicorn);
3. measures:

   (a) submissions run to their first user task per second (housing fund withdrawals the DMN
       table sends to manual review), at ``--concurrency``; baseline: asyncpg ``executemany`` of
       the same number of rows into a copy of ``svc_applications`` at the same concurrency;
   (b) an official's inbox (``GET /api/services/tasks``, open tasks, default page) p50/p99 with
       ``--history`` historical (completed) applications and tasks bulk-loaded with COPY, spread
       over 10 departments, plus the open cases of (a); baseline: the hand-written SQL;
   (c) instant approvals (秒批) decided end to end (POST → approved in the response) p50/p99.

Prints one JSON line on stdout; progress goes to stderr. Nothing is asserted; targets are booleans.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from cityos.app import create_app
from cityos.config import Settings
from cityos.core import migrate

T0 = time.perf_counter()
DEPARTMENTS = ["market-regulation", "public-security", "tax", "human-resources-social-security", "housing-fund",
               "housing-construction", "natural-resources", "health", "medical-insurance", "civil-affairs"]
TARGETS = {"submit_per_s": 200, "inbox_p99_ms": 100.0, "instant_p99_ms": 1000.0}
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fund_form(instant: bool) -> dict[str, Any]:
    return {"accountNumber": "1234567890", "purpose": "rent", "contributionMonths": 12 if instant else 2,
            "accountBalance": 50000, "amount": 1000}


def token(app: Any, role: str, user_id: str, department: str | None = None) -> dict[str, str]:
    claims = {"kind": "user", "usr": f"{role}-{user_id}", "role": role, "tnt": "", "dep": department,
              "deps": [department] if department else [], "dis": [], "sid": uuid.uuid4().hex, "mfa": True}
    access, _jti, _ttl = app.state.security.service.issuer.issue(user_id, claims)
    return {"Authorization": f"Bearer {access}"}


async def run_concurrently(n: int, concurrency: int, fn: Any) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await fn(i)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def load_history(dsn: str, rows: int) -> float:
    """COPY `rows` completed applications (one completed task each) into the real tables."""
    conn = await asyncpg.connect(dsn)
    start = time.perf_counter()
    base = datetime(2025, 1, 1, tzinfo=UTC)
    chunk = 100_000
    try:
        for offset in range(0, rows, chunk):
            apps, tasks = [], []
            for i in range(offset, min(rows, offset + chunk)):
                app_id = f"h{i:031d}"
                dept = DEPARTMENTS[i % len(DEPARTMENTS)]
                submitted = base + timedelta(minutes=i % 500_000)
                done = submitted + timedelta(hours=5)
                apps.append((app_id, "", f"YH{i:016d}", "housing-fund-withdrawal", dept, f"user{i % 50_000}",
                             "citizen", "online", "approved", False, False, "{}", "[]", "[]", "[]", 3, 0, 1,
                             submitted, submitted + timedelta(days=3), done, 18000.0, done))
                tasks.append((f"t{i:035d}", "", app_id, "fund_review", "提取审核", dept, "completed", "approve",
                              "history", submitted, submitted + timedelta(days=3), done))
            await conn.copy_records_to_table("svc_applications", records=apps, columns=[
                "id", "tenant", "receipt", "service_code", "department", "applicant", "applicant_kind", "channel",
                "status", "instant", "escalated", "form", "materials", "steps", "licence_ids", "limit_days",
                "paused_days", "trips_saved", "submitted_at", "due_at", "completed_at", "handling_seconds",
                "updated_at"])
            await conn.copy_records_to_table("svc_tasks", records=tasks, columns=[
                "id", "tenant", "application_id", "name", "title", "department", "status", "outcome", "actor",
                "created_at", "due_at", "completed_at"])
            log(f"history: {offset + len(apps):,} rows")
        await conn.execute("ANALYZE svc_applications; ANALYZE svc_tasks")
    finally:
        await conn.close()
    return time.perf_counter() - start


async def raw_insert_baseline(dsn: str, n: int, concurrency: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE bench_raw_apps (LIKE svc_applications INCLUDING ALL)")
    now = datetime.now(UTC)
    form = orjson.dumps(fund_form(False)).decode()

    async def one(i: int) -> None:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO bench_raw_apps (id, tenant, receipt, service_code, department, applicant, "
                "applicant_kind, channel, status, instant, escalated, form, materials, steps, licence_ids, "
                "limit_days, paused_days, trips_saved, submitted_at, due_at, updated_at) VALUES "
                "($1, '', $2, 'housing-fund-withdrawal', 'housing-fund', 'u', 'citizen', 'online', 'in_review', "
                "false, false, $3::jsonb, '[]', '[]', '[]', 3, 0, 1, $4, $4, $4)",
                uuid.uuid4().hex, f"R{i:016d}", form, now)

    start = time.perf_counter()
    await run_concurrently(n, concurrency, one)
    elapsed = time.perf_counter() - start
    await pool.close()
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--instant", type=int, default=500)
    parser.add_argument("--inbox-queries", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    admin_url = os.environ.get("CITYOS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"cityos_svcbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_url.rsplit("/", 1)[0] + f"/{name}"
    result: dict[str, Any] = {"bench": "services", "database": "postgresql", "history": args.history,
                              "transport": "in-process ASGI"}
    try:
        settings = Settings(database_url=dsn, db_pool_size=args.concurrency)
        await asyncio.to_thread(migrate.upgrade, settings)
        os.environ.setdefault("CITYOS_SERVICES_SWEEP_SECONDS", "0")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            desk = app.state.services
            desk.settings.upload_dir = Path(tempfile.mkdtemp(prefix="cityos-svcbench-"))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                citizens = [token(app, "citizen", f"bench-c{i}") for i in range(64)]
                uploads = []
                for headers in citizens:
                    r = await client.post("/api/services/uploads", headers=headers,
                                          files={"file": ("id.pdf", PDF, "application/pdf")})
                    uploads.append(r.json()["uploadId"])

                async def submit(i: int, instant: bool) -> dict[str, Any]:
                    k = i % len(citizens)
                    r = await client.post("/api/services/applications", headers=citizens[k], json={
                        "serviceCode": "housing-fund-withdrawal", "form": fund_form(instant),
                        "materials": [{"name": "id-card", "uploadId": uploads[k]}]})
                    if r.status_code != 201:
                        raise RuntimeError(r.text)
                    return dict(r.json())

                for i in range(50):  # warm-up
                    await submit(i, False)
                log(f"(a) {args.submissions} submissions to the first user task at c={args.concurrency}")
                start, cpu = time.perf_counter(), time.process_time()

                async def manual(i: int) -> None:
                    view = await submit(i, False)
                    assert view["status"] == "in_review"

                await run_concurrently(args.submissions, args.concurrency, manual)
                submit_rate = args.submissions / (time.perf_counter() - start)
                # CPU of this process (client + app) per submission: steadier than the rate on a loaded machine.
                result["submit_cpu_ms_per_op"] = round((time.process_time() - cpu) / args.submissions * 1000, 2)
                raw_rate = await raw_insert_baseline(dsn, args.submissions, args.concurrency)
                result["submit_per_s"] = round(submit_rate, 1)
                result["baseline_raw_insert_per_s"] = round(raw_rate, 1)
                result["submit_vs_raw_insert"] = round(submit_rate / raw_rate, 4)

                log(f"(c) {args.instant} instant approvals at c=4")

                async def instant(i: int) -> None:
                    view = await submit(i, True)
                    assert view["status"] == "approved" and view["instant"]

                cpu = time.process_time()
                lat = await run_concurrently(args.instant, 4, instant)
                result["instant_cpu_ms_per_op"] = round((time.process_time() - cpu) / args.instant * 1000, 2)
                result["instant_p50_ms"] = round(pct(lat, 0.5) * 1000, 2)
                result["instant_p99_ms"] = round(pct(lat, 0.99) * 1000, 2)

                log(f"(b) loading {args.history:,} historical applications with COPY")
                result["history_load_s"] = round(await load_history(dsn, args.history), 1)
                official = token(app, "official", "bench-o1", "housing-fund")
                await client.get("/api/services/tasks", headers=official)
                lat = []
                cpu = time.process_time()
                for _ in range(args.inbox_queries):
                    start = time.perf_counter()
                    r = await client.get("/api/services/tasks", headers=official)
                    lat.append(time.perf_counter() - start)
                    assert r.status_code == 200 and len(r.json()["items"]) == 20
                result["inbox_cpu_ms_per_op"] = round((time.process_time() - cpu) / args.inbox_queries * 1000, 2)
                result["inbox_p50_ms"] = round(pct(lat, 0.5) * 1000, 2)
                result["inbox_p99_ms"] = round(pct(lat, 0.99) * 1000, 2)
                result["inbox_mean_ms"] = round(statistics.mean(lat) * 1000, 2)
                lat = []
                for _ in range(50):
                    start = time.perf_counter()
                    r = await client.get("/api/services/tasks", headers=official, params={"status": "completed"})
                    lat.append(time.perf_counter() - start)
                result["inbox_completed_p99_ms"] = round(pct(lat, 0.99) * 1000, 2)
                conn = await asyncpg.connect(dsn)
                sql_lat = []
                for _ in range(args.inbox_queries):
                    start = time.perf_counter()
                    await conn.fetch(
                        "SELECT t.*, a.receipt FROM svc_tasks t JOIN svc_applications a ON a.id = t.application_id "
                        "WHERE t.tenant = '' AND t.department = 'housing-fund' AND t.status = 'open' "
                        "ORDER BY t.due_at, t.id LIMIT 20")
                    sql_lat.append(time.perf_counter() - start)
                await conn.close()
                result["baseline_inbox_sql_p99_ms"] = round(pct(sql_lat, 0.99) * 1000, 2)
                result["inbox_vs_sql_p99"] = round(result["inbox_p99_ms"] / max(result["baseline_inbox_sql_p99_ms"],
                                                                                0.001), 2)
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["targets_met"] = {"submit_per_s": result["submit_per_s"] >= TARGETS["submit_per_s"],
                                 "inbox_p99_ms": result["inbox_p99_ms"] < TARGETS["inbox_p99_ms"],
                                 "instant_p99_ms": result["instant_p99_ms"] < TARGETS["instant_p99_ms"]}
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    asyncio.run(main())
