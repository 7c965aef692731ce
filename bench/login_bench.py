"""Does a burst of password logins slow down everybody else? (issue #12, finding 13)

    uv run python bench/login_bench.py                       # SQLite in a temporary directory
    uv run python bench/login_bench.py --database-url postgresql://postgres@127.0.0.1:5432/cityos_bench_login

The security router on a real database (migrated), in this process over httpx's ASGI transport, so
the logins and the other requests share one event loop as they do in a server worker. Argon2id
with the production parameters (m = 19 MiB, t = 2, p = 1).

Measured in the same run, each phase with the same number of sequential ``GET /auth/me`` requests
(bearer token: signature cache, revocation check) from another user, one due every 10 ms,
latency counted from when it was due:

1. ``idle``: no logins running (the baseline);
2. ``burst_on_loop``: while ``--burst`` concurrent clients log in over and over, with hashing on the
   event loop (``CITYOS_HASH_WORKERS=0``: how the code worked before);
3. ``burst_pool``: the same burst with hashing in the bounded thread pool (default
   ``CITYOS_HASH_WORKERS=2``) and at most ``CITYOS_LOGIN_CONCURRENCY`` logins verifying at once.

Prints exactly one JSON line on stdout (GET p50/p99 in ms per phase, logins/s during the bursts);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from cityos.config import Settings
from cityos.core import migrate
from cityos.core.db import create_engine
from cityos.core.errors import ProblemError
from cityos.core.responses import json_response
from cityos.security.api import SecurityState, router
from cityos.security.approvals import ApprovalService
from cityos.security.audit import AuditLog
from cityos.security.crypto import load_keyring
from cityos.security.service import SecurityService
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import TokenIssuer, load_signing_keys

PASSWORD = "Correct-Horse-9-battery"
INTERVAL = 0.010  # seconds between the measured GETs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def build(url: str, settings: SecuritySettings) -> tuple[FastAPI, SecurityService, Any]:
    engine = create_engine(Settings(database_url=url))
    audit = AuditLog(engine)
    service = SecurityService(engine, settings, TokenIssuer(settings, load_signing_keys(settings)),
                              load_keyring(settings), audit)
    app = FastAPI()
    app.state.engine = engine
    app.state.security = SecurityState(settings, service, ApprovalService(service), audit)
    app.include_router(router)

    @app.exception_handler(ProblemError)
    async def problem(_request: Any, exc: ProblemError) -> Any:
        return json_response({"title": exc.title, "status": exc.status, "detail": exc.detail}, exc.status,
                             headers=exc.headers)

    await audit.start()
    return app, service, audit


async def phase(app: FastAPI, bearer: dict[str, str], samples: int, burst: int, names: list[str]) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    stop = asyncio.Event()
    logins = refused = 0

    async def login_loop(name: str) -> None:
        nonlocal logins, refused
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            while not stop.is_set():
                r = await http.post("/auth/token", data={"grant_type": "password", "username": name,
                                                         "password": PASSWORD})
                if r.status_code == 200:
                    logins += 1
                else:
                    refused += 1
                    await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(login_loop(names[i % len(names)])) for i in range(burst)]
    await asyncio.sleep(0.5 if burst else 0)  # let the burst get going
    latencies: list[float] = []
    started = time.perf_counter()
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=bearer) as http:
        for i in range(samples):
            # Open loop: a request is due every 10 ms and its latency counts from when it was due, so
            # time the event loop spent blocked before the request could even be sent is counted too
            # (no coordinated omission).
            due = started + i * INTERVAL
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            r = await http.get("/auth/me")
            latencies.append((time.perf_counter() - due) * 1000)
            assert r.status_code == 200, r.text
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    return {"get_p50_ms": round(statistics.median(latencies), 2), "get_p99_ms": round(percentile(latencies, 0.99), 2),
            "logins_per_s": round(logins / elapsed, 1), "logins_refused_503": refused}


async def run(args: argparse.Namespace, url: str, tmp: Path) -> None:
    base = SecuritySettings(env="development", data_dir=tmp, jwt_key_file=None, data_keys=None,
                            argon2_time_cost=2, argon2_memory_kib=19456, auth_rate_per_minute=10**9,
                            revocation_cache_seconds=2.0, oidc_issuer=None, admin_password=None)
    if args.hash_workers is not None:
        base = replace(base, hash_workers=args.hash_workers)
    if args.login_concurrency is not None:
        base = replace(base, login_concurrency=args.login_concurrency)
    results: dict[str, Any] = {"burst": args.burst, "samples": args.samples, "argon2": "m=19456 KiB, t=2, p=1",
                               "database": url.split(":")[0]}
    names = [f"burst-{i}" for i in range(args.burst)]
    for label, settings in (("idle", base), ("burst_on_loop", replace(base, hash_workers=0)),
                            ("burst_pool", base)):
        app, service, audit = await build(url, settings)
        if label == "idle":
            for name in [*names, "reader"]:
                await service.create_user(name, PASSWORD, "citizen")
        token, _jti, _ttl = service.issuer.issue("reader", {
            "kind": "user", "usr": "reader", "role": "citizen", "tnt": "", "dep": None, "deps": [], "dis": [],
            "sid": uuid.uuid4().hex, "mfa": False})
        log(f"{label} …")
        results[label] = await phase(app, {"Authorization": f"Bearer {token}"}, args.samples,
                                     0 if label == "idle" else args.burst, names)
        log(f"{label}: {results[label]}")
        await audit.stop()
        service.close()
        await service.engine.dispose()
    results["settings"] = {"hash_workers": base.hash_workers, "login_concurrency": base.login_concurrency,
                           "login_queue_seconds": base.login_queue_seconds}
    print(orjson.dumps(results).decode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=None, help="an empty database (migrated here)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--hash-workers", type=int, default=None, help="default: CITYOS_HASH_WORKERS")
    parser.add_argument("--login-concurrency", type=int, default=None, help="default: CITYOS_LOGIN_CONCURRENCY")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cityos-login-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    migrate.upgrade(Settings(database_url=url))  # runs its own event loop
    asyncio.run(run(args, url, tmp))


if __name__ == "__main__":
    main()
