"""Which databases this test run covers, and PostgreSQL admin helpers shared by the fixtures.

CITYOS_TEST_BACKENDS (comma list of sqlite, postgresql) selects the backends; by default SQLite,
plus PostgreSQL when CITYOS_TEST_POSTGRES_URL is set. `./run test` runs the suite once per backend,
so a test that talks to PostgreSQL directly must ask `postgres_test_url()` rather than the env var.
"""

from __future__ import annotations

import asyncio
import os

POSTGRES_URL = os.environ.get("CITYOS_TEST_POSTGRES_URL")


def selected_backends() -> list[str]:
    raw = os.environ.get("CITYOS_TEST_BACKENDS")
    if raw:
        return [b.strip() for b in raw.split(",") if b.strip()]
    return ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


def postgres_test_url() -> str | None:
    return POSTGRES_URL if "postgresql" in selected_backends() else None


def admin_sql(statement: str) -> None:
    """Run one statement on the admin database (CREATE/DROP DATABASE cannot run in a transaction)."""
    import asyncpg

    async def run() -> None:
        assert POSTGRES_URL is not None
        conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres_database_url(name: str) -> str:
    assert POSTGRES_URL is not None
    base, _db = POSTGRES_URL.rsplit("/", 1)
    return f"{base}/{name}"
