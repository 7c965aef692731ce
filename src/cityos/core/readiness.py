"""`/ready`: may a load balancer send this process traffic? (`/health` only says the process answers.)

Ready means: the database answers within a bound, its schema is at the migrations' head (a process
that started before an upgrade finished must not serve), and, when this process ingests from MQTT,
its ingest clients are connected to the broker.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import text

from cityos.config import Settings
from cityos.core import migrate

DATABASE_TIMEOUT_SECONDS = 2.0


@functools.cache
def migration_heads(database_url: str) -> frozenset[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config(Settings(database_url=database_url)))
    return frozenset(script.get_heads())


async def _database(app: Any) -> dict[str, Any]:
    async def probe() -> set[str]:
        async with app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            return {row[0] for row in await conn.execute(text("SELECT version_num FROM alembic_version"))}

    try:
        versions = await asyncio.wait_for(probe(), DATABASE_TIMEOUT_SECONDS)
    except Exception as exc:  # the reason goes to the operator, never a stack trace
        return {"database": {"ok": False, "reason": type(exc).__name__},
                "schema": {"ok": False, "reason": "database unreachable"}}
    heads = migration_heads(app.state.settings.database_url)
    schema_ok = versions == set(heads)
    schema: dict[str, Any] = {"ok": schema_ok}
    if not schema_ok:
        schema["reason"] = f"database at {sorted(versions)}, code expects {sorted(heads)}"
    return {"database": {"ok": True}, "schema": schema}


def _broker(app: Any) -> dict[str, Any] | None:
    workers = getattr(app.state, "iot_workers", None) or []
    if not workers:
        return None  # this process does not ingest: no broker is needed to serve
    down = [w.client_id for w in workers if not w.connected]
    return {"ok": not down, **({"reason": f"not connected: {', '.join(down)}"} if down else {})}


async def check(app: Any) -> dict[str, Any]:
    checks = await _database(app)
    broker = _broker(app)
    if broker is not None:
        checks["broker"] = broker
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}
