"""What-if experiment for bench/hub_bench.py: the stock app with three suspected costs removed.

Not a fix (src/ is not changed by benchmarks); it exists to measure how much the changes proposed in
bench/RESULTS.md would buy. Serve it through the benchmark:

    uv run python bench/hub_bench.py --entities 20000 --app-factory bench.whatif_app:create_app

Each change is switched on by CITYOS_WHATIF (comma list; default all):

- ``noping``: no ``pool_pre_ping`` (with asyncpg, SQLAlchemy's ping is BEGIN; ";"; ROLLBACK, three
  round trips on every pool checkout);
- ``autocommit_reads``: read-only requests run in autocommit (no BEGIN/ROLLBACK around one SELECT);
- ``multityped_cache``: "this tenant has no multi-typed entities" is remembered for one second
  instead of being looked up again on every read and write.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import cityos.app as cityos_app
from cityos.config import Settings, async_url
from cityos.core import db
from cityos.hub.store import HubStore

CHANGES = {c.strip() for c in os.environ.get("CITYOS_WHATIF", "noping,autocommit_reads,multityped_cache").split(",")}
_original_create_engine = db.create_engine
_original_multi_typed = HubStore._tenant_has_multi_typed


def _create_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.database_url)
    if url.startswith("sqlite") or "noping" not in CHANGES:
        return _original_create_engine(settings)
    return create_async_engine(url, json_serializer=db.json_dumps, json_deserializer=orjson.loads,
                               pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size)


@asynccontextmanager
async def _read(self: HubStore) -> AsyncIterator[AsyncConnection]:
    async with self.engine.connect() as conn:
        if self.dialect == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


async def _multi_typed(self: HubStore, conn: AsyncConnection, tenant: str) -> bool:
    checked: dict[str, float] = self.__dict__.setdefault("_whatif_checked", {})
    if self._has_multi_typed.get(tenant) is False and time.monotonic() - checked.get(tenant, 0.0) < 1.0:
        return False
    found = await _original_multi_typed(self, conn, tenant)
    checked[tenant] = time.monotonic()
    return found


def create_app(**overrides: Any) -> Any:
    cityos_app.create_engine = _create_engine  # type: ignore[assignment]
    if "autocommit_reads" in CHANGES:
        HubStore.read = _read  # type: ignore[method-assign]
    if "multityped_cache" in CHANGES:
        HubStore._tenant_has_multi_typed = _multi_typed  # type: ignore[method-assign]
    return cityos_app.create_app(**overrides)
