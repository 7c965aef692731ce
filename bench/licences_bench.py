"""Benchmark of e-licences: issue, online verification and offline verification.

    uv run python bench/licences_bench.py                      # SQLite in a temporary directory
    uv run python bench/licences_bench.py --n 2000 --database-url postgresql://postgres@127.0.0.1:5432/bench

The database must be empty or absent for SQLite (it is created and migrated); for PostgreSQL give
a database that exists and is migrated. Measures, sequentially, one licence at a time:
(a) `LicenceService.issue` (canonicalise, Ed25519 sign, AES-GCM encrypt, insert);
(b) `verify_document` (signature, time, doc-hash and revocation lookup);
(c) `verify_offline` (no database); baseline: bare Ed25519 sign and verify of the same bytes.
Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cityos.config import Settings
from cityos.core import migrate
from cityos.core.db import create_engine
from cityos.security.crypto import KeyRing
from cityos.services.licences import verify_offline
from cityos.services.licences.keys import LicenceKey
from cityos.services.licences.service import LicenceService
from cityos.services.licences.verify import signing_input

SUBJECT = {"name": "张三", "idNumber": "110101199003071234", "company": "三元餐饮有限公司", "scope": "餐饮服务",
           "address": "北京市东城区某街1号", "registeredCapital": 1000000}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


async def run(n: int, url: str) -> dict[str, Any]:
    engine = create_engine(Settings(database_url=url))
    key = LicenceKey.of(Ed25519PrivateKey.generate())
    service = LicenceService(engine, [key], KeyRing({"k1": ("aes256gcm", os.urandom(32))}, "k1"))
    docs = []
    log(f"issuing {n} licences")
    started = time.perf_counter()
    for i in range(n):
        docs.append(await service.issue("bench", f"u{i}", "business_licence", SUBJECT, "dept-market", f"a{i}"))
    issue_s = time.perf_counter() - started
    log("verifying online")
    started = time.perf_counter()
    for doc in docs:
        assert (await service.verify_document(doc)).valid
    online_s = time.perf_counter() - started
    jwks = service.jwks()
    started = time.perf_counter()
    for doc in docs:
        assert verify_offline(doc, jwks).valid
    offline_s = time.perf_counter() - started
    message = signing_input(docs[0])
    signature = key.sign(message)
    started = time.perf_counter()
    for _ in range(n):
        key.sign(message)
        key.public.verify(signature, message)
    raw_s = time.perf_counter() - started
    await engine.dispose()
    return {"bench": "licences", "n": n, "database": url.split(":")[0], "issue_per_s": rate(n, issue_s),
            "verify_online_per_s": rate(n, online_s), "verify_offline_per_s": rate(n, offline_s),
            "baseline_ed25519_sign_verify_per_s": rate(n, raw_s),
            "document_bytes": len(orjson.dumps(docs[0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        if url.startswith("sqlite"):
            migrate.upgrade(Settings(database_url=url))  # runs its own event loop
        print(orjson.dumps(asyncio.run(run(args.n, url))).decode(), flush=True)


if __name__ == "__main__":
    main()
