"""The write path's speed measures keep their semantics (issue #13, "Speed").

- garbage-collector tuning of server processes (`core.gctuning`): off unless asked, bad settings refused;
- one reload at a time of the revocation list and of a tenant's data-class policies, however many
  requests find them stale together;
- the PostgreSQL pool keeps the connections it opened (no connect per burst above the pool size).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from helpers import air
from sqlalchemy import event, insert, text

from auth_tokens import Auth
from cityos.core import clock, gctuning
from cityos.hub.access import refresh_classes
from cityos.security.classes import class_registry

E = "/ngsi-ld/v1/entities"


# ---------------------------------------------------------------------- garbage collector


@pytest.fixture
def gc_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_gc_tuning_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch, gc_state: None) -> None:
    monkeypatch.delenv("CITYOS_GC_TUNE", raising=False)
    before = gc.get_threshold()
    assert gctuning.tune_after_startup() is False
    assert gc.get_threshold() == before
    monkeypatch.setenv("CITYOS_GC_TUNE", "0")
    assert gctuning.tune_after_startup() is False


def test_gc_tuning_freezes_and_raises_thresholds(monkeypatch: pytest.MonkeyPatch, gc_state: None) -> None:
    monkeypatch.setenv("CITYOS_GC_TUNE", "1")
    monkeypatch.delenv("CITYOS_GC_THRESHOLDS", raising=False)
    assert gctuning.tune_after_startup() is True
    assert gc.get_threshold() == gctuning.DEFAULT_THRESHOLDS
    assert gc.get_freeze_count() > 0
    monkeypatch.setenv("CITYOS_GC_THRESHOLDS", "1000,5,7")
    gctuning.tune_after_startup()
    assert gc.get_threshold() == (1000, 5, 7)


@pytest.mark.parametrize("raw", ["", "a,b,c", "1,2", "1,2,3,4", "0,10,10", "-5,10,10", "1e9,1,1", "1;2;3"])
def test_bad_gc_thresholds_fall_back_to_the_default(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CITYOS_GC_THRESHOLDS", raw)
    assert gctuning.thresholds_from_env() == gctuning.DEFAULT_THRESHOLDS


def test_the_serve_and_demo_commands_turn_gc_tuning_on() -> None:
    import inspect

    from cityos import cli

    for command in (cli.serve, cli.demo):
        assert 'os.environ.setdefault("CITYOS_GC_TUNE", "1")' in inspect.getsource(command)


# ---------------------------------------------------------------------- single-flight cache reloads


class StatementCounter:
    """Counts the statements an engine sends whose SQL contains `needle` (SQLAlchemy-issued ones)."""

    def __init__(self, engine: Any, needle: str) -> None:
        self.engine, self.needle, self.count = engine.sync_engine, needle, 0

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.needle in statement:
            self.count += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: Any) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


async def test_concurrent_stale_revocation_checks_reload_once(client: httpx.AsyncClient, app: Any) -> None:
    security = app.state.security.service
    await security.revoke_family("speed-revoked-session")
    security._revoked = set()  # as another process would see it: only in the database
    security._revoked_loaded = -1e18
    with StatementCounter(app.state.engine, "sec_revocations") as reads:
        answers = await asyncio.gather(*(security.is_revoked("speed-revoked-session") for _ in range(20)),
                                       *(security.is_revoked("speed-live-session") for _ in range(20)))
    assert answers == [True] * 20 + [False] * 20
    assert reads.count == 1
    # Fresh for the cache period: no further read.
    with StatementCounter(app.state.engine, "sec_revocations") as reads:
        assert await security.is_revoked("speed-revoked-session") is True
    assert reads.count == 0


async def test_concurrent_stale_class_refreshes_read_once(client: httpx.AsyncClient, app: Any) -> None:
    registry = class_registry(app)
    store = app.state.hub.service.store
    registry._tenants.clear()
    assert registry.needs_refresh("")
    with StatementCounter(app.state.engine, "FROM hub_entities") as reads:
        await asyncio.gather(*(refresh_classes(registry, store, None, "") for _ in range(20)))
    assert reads.count == 1
    assert not registry.needs_refresh("")


async def test_requests_waiting_for_a_class_refresh_see_the_policy(client: httpx.AsyncClient, app: Any) -> None:
    """Requests that arrive together while the tenant's copy is stale all wait for the one refresh and
    all apply what it read: a confidential attribute stays hidden from every one of them."""
    r = await client.put("/admin/data-classes/SpeedCase", json={
        "attributes": {"diagnosis": "confidential", "status": "public"}, "default": "internal"})
    assert r.status_code == 204, r.text
    case = {"id": "urn:ngsi-ld:SpeedCase:1", "type": "SpeedCase",
            "diagnosis": {"type": "Property", "value": "secret"}, "status": {"type": "Property", "value": "open"}}
    assert (await client.post(E, json=case)).status_code == 201
    class_registry(app)._tenants.clear()
    operator = Auth(app).headers("operator")
    answers = await asyncio.gather(*(client.get(f"{E}/urn:ngsi-ld:SpeedCase:1", params={"options": "keyValues"},
                                                headers=operator) for _ in range(10)))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "open"
        assert "diagnosis" not in answer.json()


# ---------------------------------------------------------------------- connection pool


async def test_write_bursts_open_no_new_connections_once_the_pool_is_warm(client: httpx.AsyncClient,
                                                                         app: Any) -> None:
    engine = app.state.engine
    if engine.dialect.name == "postgresql":
        assert engine.pool.size() == 2 * app.state.settings.db_pool_size
        assert engine.pool._max_overflow == 0
    body = [air(i) for i in range(40)]
    assert (await client.post(f"{E[:-len('/entities')]}/entityOperations/upsert", json=body)).status_code in (201,
                                                                                                          204)
    opened: list[int] = []
    closed: list[int] = []

    def on_connect(*_args: Any) -> None:
        opened.append(1)

    def on_close(*_args: Any) -> None:
        closed.append(1)

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine.pool, "close", on_close)
    try:
        for _ in range(3):
            answers = await asyncio.gather(*(
                client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:{i:06d}/attrs",
                             json={"pm25": {"type": "Property", "value": float(i)}}) for i in range(40)))
            assert [a.status_code for a in answers] == [204] * 40, [a.text for a in answers if a.status_code != 204]
    finally:
        event.remove(engine.sync_engine, "connect", on_connect)
        event.remove(engine.sync_engine.pool, "close", on_close)
    # Opened lazily up to the pool's size and then kept: none closed after use to be opened again.
    assert closed == []
    assert len(opened) <= engine.pool.size()
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM hub_attribute_history"))).scalar_one()
    assert rows >= 40 + 3 * 40


# ---------------------------------------------------------------------- one-statement PATCH


async def test_a_patch_keeps_history_audit_and_notifications(client: httpx.AsyncClient, app: Any) -> None:
    """The one-statement PATCH (PostgreSQL) writes the entity, its history, the audit intent and reads the
    subscription version together: everything the multi-statement path did is still there."""
    sub = {"id": "urn:ngsi-ld:Subscription:speed", "type": "Subscription",
           "entities": [{"type": "AirQualityObserved"}], "watchedAttributes": ["pm25"],
           "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify", "accept": "application/json"}}}
    assert (await client.post(E, json=air(1))).status_code == 201
    r = await client.post("/ngsi-ld/v1/subscriptions", json=sub)
    assert r.status_code == 201, r.text
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:000001/attrs",
                           json={"pm25": {"type": "Property", "value": 42.5, "observedAt": "2026-11-21T10:00:00Z"}})
    assert r.status_code == 204, r.text
    async with app.state.engine.connect() as conn:
        history = (await conn.execute(text(
            "SELECT ts, deleted FROM hub_attribute_history WHERE entity_id = 'urn:ngsi-ld:AirQualityObserved:000001' "
            "AND attr LIKE '%pm25' ORDER BY ts"))).all()
        outbox = (await conn.execute(text("SELECT payload FROM hub_notification_outbox"))).all()
        audit = (await conn.execute(text(
            "SELECT count(*) FROM sec_audit WHERE action = 'entity.update_attrs'"))).scalar_one()
    assert len(history) == 2 and [h.deleted for h in history] == [0, 0]
    assert len(outbox) == 1
    payload = outbox[0].payload if isinstance(outbox[0].payload, dict) else orjson.loads(outbox[0].payload)
    assert payload["data"][0]["pm25"]["value"] == 42.5
    assert audit == 1
    from cityos.hub.store import _PREFETCHED_VERSION

    assert _PREFETCHED_VERSION.get() is None  # never outlives its transaction


async def test_a_patch_of_a_missing_entity_or_attribute_changes_nothing(client: httpx.AsyncClient,
                                                                         app: Any) -> None:
    assert (await client.post(E, json=air(2))).status_code == 201
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:999999/attrs",
                           json={"pm25": {"type": "Property", "value": 1}})
    assert r.status_code == 404
    # A missing attribute is appended (v1.9.1 §5.6.2), but its deletion (an NGSI-LD Null) has nothing to do.
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:000002/attrs",
                           json={"nothere": {"type": "Property", "value": "urn:ngsi-ld:null"}})
    assert r.status_code == 207, r.text
    r = await client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:000002/attrs", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    async with app.state.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM hub_attribute_history"))).scalar_one()
    assert rows == 2  # the creation's pm25 and location only


async def test_concurrent_writes_settle_every_audit_intent(client: httpx.AsyncClient, app: Any) -> None:
    """The audit intents of concurrent writes are all deleted once their records are chained."""
    r = await client.post(E, json=air(3))
    assert r.status_code == 201
    with StatementCounter(app.state.engine, "DELETE FROM sec_audit_intents") as deletes:
        answers = await asyncio.gather(*(
            client.patch(f"{E}/urn:ngsi-ld:AirQualityObserved:000003/attrs",
                         json={"pm25": {"type": "Property", "value": float(i)}}) for i in range(12)))
    assert [a.status_code for a in answers] == [204] * 12
    # How many deletes depends on how the writes overlapped (they queue on the entity's row lock): at
    # most one each. That settles arriving together share one is checked below, where it is certain.
    assert 1 <= deletes.count <= 12
    async with app.state.engine.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM sec_audit_intents"))).scalar_one()
        chained = (await conn.execute(text(
            "SELECT count(*) FROM sec_audit WHERE action = 'entity.update_attrs'"))).scalar_one()
    assert left == 0  # every request returned after its intent was gone
    assert chained == 12


async def test_settles_arriving_together_share_one_delete(app: Any) -> None:
    from cityos.security.audit import AuditEvent
    from cityos.security.audit_intents import Intent
    from cityos.security.models import audit_intents

    intents = app.state.security.intents
    async with app.state.engine.begin() as conn:
        ids = [int((await conn.execute(insert(audit_intents).values(
            created_at=clock.now(), event={"action": "entity.update_attrs", "resource": f"e{i}"})
            .returning(audit_intents.c.id))).scalar_one()) for i in range(12)]
    settles = [Intent(AuditEvent("entity.update_attrs", f"e{i}"), [row]) for i, row in enumerate(ids)]
    with StatementCounter(app.state.engine, "DELETE FROM sec_audit_intents") as deletes:
        await asyncio.gather(*(intents.settle(intent) for intent in settles))
    assert deletes.count == 1
    async with app.state.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM sec_audit_intents"))).scalar_one() == 0
