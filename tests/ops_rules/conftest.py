"""Fixtures for the ops.rules tests: a clean RulesService on the running app, a movable clock, helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.core import clock
from cityos.core.events import Event


@pytest.fixture
def now() -> Iterator[list[datetime]]:
    """A movable clock: now[0] is the time; tests assign to it."""
    moment = [datetime(2026, 11, 21, 8, 0, tzinfo=UTC)]
    clock.set_clock(lambda: moment[0])
    try:
        yield moment
    finally:
        clock.reset_clock()


@pytest.fixture
async def rules(app: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The app's RulesService with an empty memory and empty tables (a fresh start per test)."""
    service = app.state.ops_rules
    # Memory is dropped before the tables are emptied, so nothing stale is written back. Both locks
    # are held until the tables are empty: a background tick already in flight (it reads due rows,
    # applies them, then flushes) must land before the emptying, not write the last test's window
    # state into this one's tables.
    async with service._tick_lock, service._flush_lock:
        service.discard()
        request.getfixturevalue("client")  # empties every table
        await service.reload()
    yield service


@pytest.fixture
def events(app: Any) -> Iterator[list[Event]]:
    """Every ops.alarm.* event published during the test."""
    seen: list[Event] = []

    async def keep(event: Event) -> None:
        seen.append(event)

    bus = app.state.bus
    undo = [bus.subscribe(t, keep) for t in ("ops.alarm.raised", "ops.alarm.updated", "ops.alarm.cleared")]
    yield seen
    for u in undo:
        u()


class Api:
    """Short-hands for calling the CityOS APIs in tests."""

    def __init__(self, client: httpx.AsyncClient, auth: Auth, anon: httpx.AsyncClient, app: Any = None) -> None:
        self.app = app
        self.client = client
        self.anon = anon  # no Authorization header at all
        self.auth = auth
        self.admin = auth.headers("sys_admin")
        self.operator = auth.headers("operator", department="environment", districts=["d1"])

    async def rule(self, doc: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.client.post("/api/ops/rules", json=doc, headers=headers or self.operator)
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def upsert(self, *entities: dict[str, Any]) -> None:
        r = await self.client.post("/ngsi-ld/v1/entityOperations/upsert", json=list(entities),
                                   headers={**self.admin, "Content-Type": "application/json"})
        assert r.status_code in (201, 204), r.text

    async def alarms(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.client.get("/api/ops/alarms", params=params, headers=self.operator)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items


@pytest.fixture
async def api(app: Any, client: httpx.AsyncClient, auth: Auth, rules: Any) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as anon:
        yield Api(client, auth, anon, app)

