"""Test fixtures: every hub test runs against real databases.

Backends come from CITYOS_TEST_BACKENDS (comma list of sqlite, postgresql; default: sqlite, plus
postgresql when CITYOS_TEST_POSTGRES_URL is set). PostgreSQL runs get a fresh database per session.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from auth_tokens import Auth, auth
from backends import POSTGRES_URL, admin_sql, postgres_database_url, selected_backends
from cityos.app import create_app
from cityos.config import Settings
from cityos.core import migrate
from own_services import own_mosquitto, own_postgres  # noqa: F401 (fixtures every test directory may use)

__all__ = ["Auth", "auth"]

# Tests compute indicators when they mean to: a scheduled round would publish KPI entities into the
# hub in the middle of other tests.
os.environ.setdefault("CITYOS_EVALUATION_INTERVAL_SECONDS", "0")
os.environ.setdefault("CITYOS_DATA_HARVEST_INTERVAL_SECONDS", "0")  # tests harvest when they mean to
os.environ.setdefault("CITYOS_DATA_HARVEST_SHARE", "1")  # no rests between a harvest's slices, but where tested
# Tests run device-health rounds (`cityos.iot.health.run_once`) when they mean to: the session app's
# 30-second loop would otherwise time out RPCs or mark devices offline under a test's moved clock.
os.environ.setdefault("CITYOS_IOT_HEALTH_SECONDS", "0")
# The same for the other timer sweeps that act on "now" (incident deadlines, service timers, livelihood
# settlement): a tick landing between a test's clock move and its own sweep would take the test's work.
os.environ.setdefault("CITYOS_INCIDENT_SWEEP_SECONDS", "0")
os.environ.setdefault("CITYOS_SERVICES_SWEEP_SECONDS", "0")
os.environ.setdefault("CITYOS_LIVELIHOOD_INTERVAL_SECONDS", "0")
# One token issuer for this process and the servers it starts (`auth_tokens.server_headers` mints tokens
# for them): otherwise each server's issuer would be the address it happens to listen on.
os.environ.setdefault("CITYOS_PUBLIC_URL", "http://cityos.test")
# Tests empty every table between tests, so signed audit checkpoints of the session's app would
# (rightly) report the chain as truncated: the session app writes none, into a file of its own.
# The checkpoint tests (tests/security/test_sec_audit_checkpoints.py) use their own stores.
os.environ.setdefault("CITYOS_AUDIT_CHECKPOINT_SECONDS", "0")
os.environ.setdefault("CITYOS_AUDIT_CHECKPOINT_FILE",
                      os.path.join(tempfile.mkdtemp(prefix="cityos-checkpoints-"), "audit-checkpoints.jsonl"))

# Kept importable under their old names for test modules that use them.
_admin_sql = admin_sql
_postgres_database = postgres_database_url


@pytest.fixture(scope="session", params=selected_backends())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'cityos.db'}"
        migrate.upgrade(Settings(database_url=url))
        yield url
        return
    if not POSTGRES_URL:
        pytest.skip("CITYOS_TEST_POSTGRES_URL is not set")
    name = f"cityos_test_{uuid.uuid4().hex[:10]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    url = _postgres_database(name)
    try:
        migrate.upgrade(Settings(database_url=url))
        yield url
    finally:
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    # Notification receivers and @context servers of the tests listen on loopback: allow it explicitly
    # (the default outbound policy refuses loopback; tests/hub/test_outbound_guard.py checks that).
    return Settings(database_url=database_url, max_body_bytes=2 * 1024 * 1024, max_page_size=1000,
                    outbound_allow="127.0.0.0/8,::1")


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


# SQLite refuses a compound SELECT of more than 500 parts (SQLITE_MAX_COMPOUND_SELECT).
_PROBES_PER_STATEMENT = 200
# Rounds of `_clean` before it gives up: each round's DELETEs may fire triggers that fill other tables.
_CLEAN_ROUNDS = 5


def _quoted(table: str) -> str:
    return '"' + table.replace('"', '""') + '"'


async def _non_empty(conn: Any, tables: list[str]) -> list[str]:
    """The tables holding a row, in the order given, found with one statement (per 200 tables): a test leaves
    rows in a few of the ~150 tables, and a DELETE per table cost 60 ms per test on SQLite (a thread hop each)."""
    found: set[int] = set()
    for start in range(0, len(tables), _PROBES_PER_STATEMENT):
        probe = " UNION ALL ".join(f"SELECT {n} AS i WHERE EXISTS (SELECT 1 FROM {_quoted(tables[n])})"
                                   for n in range(start, min(start + _PROBES_PER_STATEMENT, len(tables))))
        found.update(int(i) for (i,) in (await conn.execute(text(probe))).all())
    return [t for n, t in enumerate(tables) if n in found]


async def _clean(application: Any) -> None:
    engine = application.state.engine
    async with engine.begin() as conn:
        # Every table but Alembic's own: domains add tables without touching this fixture.
        if engine.dialect.name == "postgresql":
            rows = await conn.execute(text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
                "AND c.relname NOT IN ('alembic_version', 'spatial_ref_sys')"))
            # The audit table refuses DELETE by trigger; tests may bypass triggers as the superuser.
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            rows = await conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name != 'alembic_version' AND name NOT GLOB '*_rtree_*'"))
        tables = [str(table) for (table,) in rows]
        # Until none holds a row: on SQLite a DELETE may fire a trigger that writes another table (the
        # history's rollup bookkeeping). DELETE beats TRUNCATE on tables this small: TRUNCATE rewrites
        # files and syncs them.
        for _ in range(_CLEAN_ROUNDS):
            filled = await _non_empty(conn, tables)
            if not filled:
                break
            for table in filled:
                await conn.execute(text(f"DELETE FROM {_quoted(table)}"))
        else:
            raise AssertionError(f"tables still hold rows after {_CLEAN_ROUNDS} rounds of DELETE: {filled}")
    store = application.state.hub.service.store
    store._known_tenants = {""}
    store._has_multi_typed.clear()
    registry = getattr(application.state, "data_classes", None)
    if registry is not None:
        registry._tenants.clear()
        registry._invalidate()
    sources = getattr(application.state.hub.service, "sources", None)
    if sources is not None:  # 一数一源 rules held in memory (their table was just emptied)
        sources.replace({})
        sources.refused.clear()
    data = getattr(application.state, "data", None)
    if data is not None and data.catalogue.index is not None:  # the in-memory search index of the catalogue
        data.catalogue.index.invalidate()


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client acting as a sys_admin of the default tenant (a real signed token).

    Pass other `headers=auth.headers(role, ...)` per request to act as someone else, or use
    `anon_client` for calls without a token.
    """
    await _clean(app)
    transport = httpx.ASGITransport(app=app)
    headers = Auth(app).headers("sys_admin", username="test-admin")
    async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test", headers=headers) as http:
        yield http


@pytest.fixture
async def anon_client(app: Any, client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client without any token (anonymous). Shares `client`'s clean database."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as http:
        yield http


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"


# Fixtures through which a test reaches the backend under test.
_BACKEND_FIXTURES = frozenset({"database_url", "own_postgres"})
_BACKEND_HELPER_MODULES = frozenset({"backends", "own_services"})


def _uses_a_backend(item: pytest.Item) -> bool:
    """Whether the test touches the database under test: via a fixture, or by asking `backends` itself."""
    if _BACKEND_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    return module is not None and any(getattr(value, "__module__", None) in _BACKEND_HELPER_MODULES
                                      for value in vars(module).values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """CITYOS_TEST_ONLY_BACKEND_TESTS=1 (`./run test`'s second backend): a test that uses no database
    would only repeat exactly what the first backend's run has done, so it is left out."""
    if os.environ.get("CITYOS_TEST_ONLY_BACKEND_TESTS") != "1":
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        (kept if _uses_a_backend(item) else left_out).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
