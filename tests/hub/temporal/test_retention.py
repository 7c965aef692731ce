"""History retention: policies per tenant and entity type, batched deletes, partition drops, the schedule."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from cityos.core import clock
from cityos.hub.partitions import ensure_history_partitions
from cityos.hub.temporal import retention
from cityos.hub.temporal.retention import purge_expired, run_once, start_retention
from hub.temporal.temporal_helpers import JSON, T0, T, history_count, post_series

ADMIN = "/admin/history-retention"
# The session's app would otherwise purge on its own a minute in, racing these tests; the
# schedule itself is tested below with its own short interval. (Read when the app starts.)
os.environ.setdefault("CITYOS_RETENTION_INTERVAL_SECONDS", "0")
AGES = [1, 6, 8, 29, 31, 100]


@pytest.fixture
def frozen() -> Iterator[None]:
    clock.set_clock(lambda: T0)
    yield
    clock.reset_clock()


@pytest.fixture(autouse=True)
def no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYOS_HISTORY_RETENTION_DAYS", raising=False)


def days_ago(now: datetime, days: float) -> str:
    return clock.iso(now - timedelta(days=days))


async def kept_ages(client: httpx.AsyncClient, entity_id: str, tenant: str = "") -> list[int]:
    r = await client.get(f"{T}/{entity_id}", headers={"NGSILD-Tenant": tenant} if tenant else {})
    return [inst["value"] for inst in r.json().get("temperature", [])]


async def put_policy(client: httpx.AsyncClient, body: dict[str, Any], tenant: str = "") -> None:
    r = await client.put(ADMIN, json=body, headers={**JSON, **({"NGSILD-Tenant": tenant} if tenant else {})})
    assert r.status_code == 204, r.text


async def test_policies_per_type_per_tenant_and_default(client: httpx.AsyncClient, app: Any, frozen: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_HISTORY_RETENTION_DAYS", "90")
    monkeypatch.setattr(retention, "BATCH", 2)  # several batches per scope
    series = [(age, days_ago(T0, age)) for age in sorted(AGES, reverse=True)]
    await post_series(client, "urn:ngsi-ld:Sensor:1", series)
    await post_series(client, "urn:ngsi-ld:Meter:1", series, entity_type="Meter")
    await post_series(client, "urn:ngsi-ld:Sensor:1", series, headers={"NGSILD-Tenant": "city-b"})
    await put_policy(client, {"days": 30})
    await put_policy(client, {"entityType": "Sensor", "days": 7})

    removed = await purge_expired(app.state.engine, T0)
    assert removed == 4 + 2 + 1
    assert await kept_ages(client, "urn:ngsi-ld:Sensor:1") == [6, 1]
    assert await kept_ages(client, "urn:ngsi-ld:Meter:1") == [29, 8, 6, 1]
    assert await kept_ages(client, "urn:ngsi-ld:Sensor:1", "city-b") == [31, 29, 8, 6, 1]
    assert await purge_expired(app.state.engine, T0) == 0
    # A day and a half later, one more reading of Sensor and of Meter has expired.
    assert await purge_expired(app.state.engine, T0 + timedelta(days=1.5)) == 2


async def test_without_policy_or_default_history_is_kept(client: httpx.AsyncClient, app: Any, frozen: None) -> None:
    await post_series(client, "urn:ngsi-ld:Sensor:1", [(age, days_ago(T0, age)) for age in AGES])
    assert await purge_expired(app.state.engine, T0 + timedelta(days=3650)) == 0
    assert await history_count(app) == len(AGES)


async def test_a_fully_purged_temporal_entity_is_forgotten(client: httpx.AsyncClient, app: Any, frozen: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_HISTORY_RETENTION_DAYS", "5")
    await post_series(client, "urn:ngsi-ld:Sensor:1", [(10, days_ago(T0, 10))])
    await post_series(client, "urn:ngsi-ld:Sensor:2", [(10, days_ago(T0, 10)), (1, days_ago(T0, 1))])
    assert await run_once(app.state.engine) == 2  # the clock is T0
    assert (await client.get(f"{T}/urn:ngsi-ld:Sensor:1")).status_code == 404
    assert await kept_ages(client, "urn:ngsi-ld:Sensor:2") == [1]


async def test_whole_month_partitions_are_dropped(client: httpx.AsyncClient, app: Any) -> None:
    engine = app.state.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("partitions are a PostgreSQL feature")
    async with engine.connect() as conn:
        names = [r[0] for r in await conn.execute(text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'hub_attribute_history'::regclass AND c.relname ~ '_[0-9]{6}$' ORDER BY 1"))]
    oldest = names[0]
    start = datetime.strptime(oldest[-6:] + "01+0000", "%Y%m%d%z")
    end = (start + timedelta(days=32)).replace(day=1)
    now = end + timedelta(days=11)
    clock.set_clock(lambda: now)
    try:
        await put_policy(client, {"days": 10})
        inside = [(i, clock.iso(start + timedelta(days=1, hours=i))) for i in range(3)]
        await post_series(client, "urn:ngsi-ld:Sensor:1", [*inside, (99, clock.iso(now - timedelta(days=1)))])
        # Rows of a tenant without any window keep the partition: only the expired rows go.
        await post_series(client, "urn:ngsi-ld:Sensor:1", inside, headers={"NGSILD-Tenant": "city-b"})
        assert await purge_expired(engine, now) == 3
        assert await _exists(engine, oldest)
        assert await kept_ages(client, "urn:ngsi-ld:Sensor:1", "city-b") == [0, 1, 2]
        assert await kept_ages(client, "urn:ngsi-ld:Sensor:1") == [99]

        r = await client.delete(f"{T}/urn:ngsi-ld:Sensor:1", headers={"NGSILD-Tenant": "city-b"})
        assert r.status_code == 204
        await post_series(client, "urn:ngsi-ld:Sensor:1", inside)
        assert await purge_expired(engine, now) == 3
        assert not await _exists(engine, oldest)
        assert await kept_ages(client, "urn:ngsi-ld:Sensor:1") == [99]
    finally:
        clock.reset_clock()
        async with engine.begin() as conn:
            await ensure_history_partitions(conn)
    assert await _exists(engine, oldest)


async def _exists(engine: Any, name: str) -> bool:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT to_regclass(:n)"), {"n": name})).scalar() is not None


async def test_admin_endpoint(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_HISTORY_RETENTION_DAYS", "365")
    await put_policy(client, {"days": 30}, tenant="city-b")
    await put_policy(client, {"entityType": "Sensor", "days": 7}, tenant="city-b")
    await put_policy(client, {"entityType": "Sensor", "days": 14}, tenant="city-b")
    r = await client.get(ADMIN, headers={"NGSILD-Tenant": "city-b"})
    assert r.json() == {"defaultDays": 365, "policies": [{"entityType": None, "days": 30},
                                                         {"entityType": "Sensor", "days": 14}]}
    bad = [{"days": 0}, {"days": "30"}, {"days": 10.5}, {"days": True}, {"days": 36501}, {"entityType": "Sensor"},
           {"days": 3, "tenant": "x"}, {"entityType": "bad name", "days": 3}, [1]]
    for body in bad:
        r = await client.put(ADMIN, json=body, headers={**JSON, "NGSILD-Tenant": "city-b"})
        assert r.status_code == 400, body
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    unchanged = {"defaultDays": 365,
                 "policies": [{"entityType": None, "days": 30}, {"entityType": "Sensor", "days": 14}]}
    assert (await client.get(ADMIN, headers={"NGSILD-Tenant": "city-b"})).json() == unchanged
    r = await client.delete(ADMIN, params={"entityType": "Sensor"}, headers={"NGSILD-Tenant": "city-b"})
    assert r.status_code == 204
    assert (await client.delete(ADMIN, params={"entityType": "Sensor"},
                                headers={"NGSILD-Tenant": "city-b"})).status_code == 404
    assert (await client.get(ADMIN, headers={"NGSILD-Tenant": "city-b"})).json()["policies"] == [
        {"entityType": None, "days": 30}]


async def test_the_schedule_purges_and_stops(client: httpx.AsyncClient, app: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_RETENTION_INTERVAL_SECONDS", "0")
    stop = start_retention(app)
    await stop()  # 0 turns the schedule off

    now = clock.now()
    await post_series(client, "urn:ngsi-ld:Sensor:1", [(2, days_ago(now, 2)), (0, days_ago(now, 0.5))])
    monkeypatch.setenv("CITYOS_HISTORY_RETENTION_DAYS", "1")
    monkeypatch.setenv("CITYOS_RETENTION_INTERVAL_SECONDS", "0.05")
    monkeypatch.setattr(retention, "FIRST_RUN_DELAY", 0.0)
    stop = start_retention(app)
    try:
        for _ in range(100):
            if await history_count(app) == 1:
                break
            await asyncio.sleep(0.05)
    finally:
        await stop()
    assert await kept_ages(client, "urn:ngsi-ld:Sensor:1") == [0]
