"""Benchmark of the security layer against baselines measured in the same run.

    uv run python bench/security_bench.py                      # PostgreSQL at 127.0.0.1 (default)
    uv run python bench/security_bench.py --records 100000 --pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres

1. Audit appends/s with the SHA-256 hash chain on PostgreSQL (a fresh ``cityos_bench_sec_<random>``
   database, migrated, dropped at the end):
   (a) ``AuditLog.record`` from 256 concurrent producers through the group-commit writer task
       (each call returns after its record is committed);
   (b) ``AuditLog.append_many`` in batches of 1,000 (head row locked FOR UPDATE each batch);
   baseline: asyncpg ``executemany`` of the same rows (hashes precomputed) into a copy of
   ``sec_audit`` in batches of 1,000, one transaction each. Target: (a) and (b) ≥ 10,000/s.
2. Per-request cost of bearer-JWT verification (Ed25519) + revocation check + ``authorize`` through
   a FastAPI dependency (``require("entity.read")``), against the same route without the
   dependency, over httpx's ASGI transport (no sockets), sequential requests; plus the bare
   ``verify`` + ``authorize`` call in a loop.

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from fastapi import Depends, FastAPI
from fastapi.responses import Response

from cityos.config import Settings
from cityos.core import migrate
from cityos.core.db import create_engine
from cityos.security.api import SecurityState, require
from cityos.security.approvals import ApprovalService
from cityos.security.audit import AuditEvent, AuditLog, _row
from cityos.security.crypto import load_keyring
from cityos.security.models import GENESIS_HASH
from cityos.security.policy import Resource, authorize
from cityos.security.service import SecurityService, principal_from_claims
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import TokenIssuer, load_signing_keys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def events(n: int) -> list[AuditEvent]:
    return [AuditEvent("entity.write", f"urn:ngsi-ld:AirQualityObserved:{i}", actor=f"user{i % 50}",
                       actor_kind="user", role="operator", tenant="city", ip="10.0.0.1",
                       detail={"attrs": ["pm25", "no2"], "n": i}) for i in range(n)]


async def bench_audit(url: str, n: int) -> dict[str, Any]:
    engine = create_engine(Settings(database_url=url, db_pool_size=8))
    audit = AuditLog(engine)
    await audit.start()
    # (a) concurrent producers through the writer task
    evs = events(n)
    queue = list(evs)

    async def producer() -> None:
        while queue:
            await audit.record(queue.pop())

    t = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(256)))
    a_rate = n / (time.perf_counter() - t)
    await audit.stop()
    log(f"audit record (group commit): {a_rate:,.0f}/s")
    # (b) append_many in batches of 1,000
    t = time.perf_counter()
    for i in range(0, n, 1000):
        await audit.append_many(evs[i:i + 1000])
    b_rate = n / (time.perf_counter() - t)
    log(f"audit append_many(1000): {b_rate:,.0f}/s")
    report = await audit.verify()
    t = time.perf_counter()
    await audit.verify()
    verify_rate = report.checked / (time.perf_counter() - t)
    await engine.dispose()
    # baseline: raw executemany of the same rows
    raw = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(raw)
    try:
        await conn.execute("CREATE TABLE bench_raw_audit (LIKE sec_audit INCLUDING ALL)")
        prev = GENESIS_HASH
        rows = []
        for seq, e in enumerate(evs, 1):
            row = _row(e, seq, prev)
            prev = row["hash"]
            rows.append(tuple(row[c] for c in ("seq", "ts", "actor", "actor_kind", "role", "tenant", "action",
                                               "resource", "outcome", "ip", "detail", "prev_hash", "hash")))
        sql = ("INSERT INTO bench_raw_audit (seq, ts, actor, actor_kind, role, tenant, action, resource, outcome, ip,"
               " detail, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)")
        t = time.perf_counter()
        for i in range(0, n, 1000):
            async with conn.transaction():
                await conn.executemany(sql, rows[i:i + 1000])
        raw_rate = n / (time.perf_counter() - t)
    finally:
        await conn.close()
    log(f"raw executemany(1000): {raw_rate:,.0f}/s")
    return {"records": n, "record_group_commit_per_s": round(a_rate), "append_many_1000_per_s": round(b_rate),
            "baseline_raw_executemany_1000_per_s": round(raw_rate),
            "ratio_group_commit_vs_raw": round(a_rate / raw_rate, 3),
            "ratio_append_many_vs_raw": round(b_rate / raw_rate, 3),
            "verify_records_per_s": round(verify_rate), "chain_ok": report.ok and report.checked == 2 * n,
            "target_10k_per_s_met": min(a_rate, b_rate) >= 10_000}


async def bench_auth(url: str, requests: int) -> dict[str, Any]:
    engine = create_engine(Settings(database_url=url))
    settings = SecuritySettings(data_dir=Path(tempfile.mkdtemp()), jwt_key_file=None, data_keys=None,
                                argon2_time_cost=1, argon2_memory_kib=1024)
    audit = AuditLog(engine)
    service = SecurityService(engine, settings, TokenIssuer(settings, load_signing_keys(settings)),
                              load_keyring(settings), audit)
    app = FastAPI()
    app.state.engine = engine
    app.state.security = SecurityState(settings, service, ApprovalService(service), audit)

    @app.get("/open")
    async def open_route() -> Response:
        return Response(b"{}", media_type="application/json")

    @app.get("/guarded", dependencies=[Depends(require("entity.read"))])
    async def guarded_route() -> Response:
        return Response(b"{}", media_type="application/json")

    token, _jti, _ttl = service.issuer.issue("u1", {"kind": "user", "usr": "op", "role": "operator", "tnt": "city",
                                                    "dep": "d1", "deps": ["d1"], "dis": ["east"],
                                                    "sid": uuid.uuid4().hex, "mfa": True})
    headers = {"Authorization": f"Bearer {token}", "NGSILD-Tenant": "city"}
    transport = httpx.ASGITransport(app=app)
    results: dict[str, list[float]] = {"open": [], "guarded": []}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(200):  # warm-up (and the first revocation-cache load)
            await client.get("/open", headers=headers)
            assert (await client.get("/guarded", headers=headers)).status_code == 200
        for _round in range(5):
            for path in ("open", "guarded"):
                t = time.perf_counter()
                for _ in range(requests // 5):
                    await client.get(f"/{path}", headers=headers)
                results[path].append((time.perf_counter() - t) / (requests // 5) * 1e6)
    open_us, guarded_us = statistics.median(results["open"]), statistics.median(results["guarded"])
    # The bare calls.
    resource = Resource("entity", "city", department="d1")
    n = 5000
    t = time.perf_counter()
    for _ in range(n):
        principal = principal_from_claims(service.issuer.verify(token))
        authorize(principal, "entity.read", resource)
    bare_us = (time.perf_counter() - t) / n * 1e6
    await engine.dispose()
    log(f"request: no auth {open_us:.0f} µs, JWT+policy {guarded_us:.0f} µs; bare verify+authorize {bare_us:.1f} µs")
    return {"requests": requests, "no_auth_us_per_request": round(open_us, 1),
            "jwt_policy_us_per_request": round(guarded_us, 1),
            "added_us_per_request": round(guarded_us - open_us, 1),
            "bare_verify_authorize_us": round(bare_us, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    name = f"cityos_bench_sec_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        await asyncio.to_thread(migrate.upgrade, Settings(database_url=url))
        audit = await bench_audit(url, args.records)
        auth = await bench_auth(url, args.requests)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(orjson.dumps({"bench": "security", "database": "postgresql", "audit": audit, "auth": auth}).decode())


if __name__ == "__main__":
    asyncio.run(main())
