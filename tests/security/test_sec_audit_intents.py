"""A committed hub change always has its audit record: the record is announced inside the change's
transaction and chained later, or recovered from the announcement when the process died in between."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select

from cityos.security.audit import AuditEvent
from cityos.security.audit_intents import announce
from cityos.security.models import audit, audit_intents


async def _count(app: Any, table: Any, *where: Any) -> int:
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


def _entity(n: int) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Meter:intent-{n}", "type": "Meter", "reading": {"type": "Property", "value": n}}


async def test_a_write_through_the_api_leaves_its_record_and_no_intent(client: httpx.AsyncClient, app: Any) -> None:
    assert (await client.post("/ngsi-ld/v1/entities", json=_entity(1))).status_code == 201
    batch = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=[_entity(2), _entity(3)])
    assert batch.status_code in (201, 204)
    assert await _count(app, audit_intents) == 0
    assert await _count(app, audit, audit.c.action == "entity.create",
                        audit.c.resource == "urn:ngsi-ld:Meter:intent-1") == 1
    assert await _count(app, audit, audit.c.action == "entity.batch_upsert") == 1


async def test_a_change_committed_by_a_process_that_died_is_recovered(client: httpx.AsyncClient, app: Any,
                                                                      monkeypatch: Any) -> None:
    hub, intents = app.state.hub, app.state.security.intents
    event = AuditEvent(action="entity.create", resource="urn:ngsi-ld:Meter:intent-9", actor="op-li",
                       actor_kind="user", role="operator")
    # What `Access.audited` does up to the commit; the process "dies" before chaining the record.
    with announce(event) as intent:
        await hub.service.create_entity("", _entity(9), hub.resolver.core)
    assert intent.row_ids and await _count(app, audit_intents) == 1
    assert await _count(app, audit, audit.c.resource == "urn:ngsi-ld:Meter:intent-9") == 0
    monkeypatch.setattr(intents, "grace", intents.grace * 0)
    assert await intents.recover() == 1
    async with app.state.engine.connect() as conn:
        row = (await conn.execute(select(audit).where(audit.c.resource == "urn:ngsi-ld:Meter:intent-9"))).one()
    assert row.actor == "op-li" and row.action == "entity.create" and '"recovered":true' in row.detail
    assert await _count(app, audit_intents) == 0
    assert (await app.state.security.audit.verify()).ok
    assert await intents.recover() == 0  # recovered once, never twice


async def test_a_record_chained_before_the_crash_is_not_duplicated(client: httpx.AsyncClient, app: Any,
                                                                   monkeypatch: Any) -> None:
    hub, intents = app.state.hub, app.state.security.intents
    event = AuditEvent(action="entity.create", resource="urn:ngsi-ld:Meter:intent-7", actor="op-li")
    with announce(event):
        await hub.service.create_entity("", _entity(7), hub.resolver.core)
    await app.state.security.audit.append_many([event])  # chained, then the process died before settling
    monkeypatch.setattr(intents, "grace", intents.grace * 0)
    assert await intents.recover() == 0
    assert await _count(app, audit, audit.c.resource == "urn:ngsi-ld:Meter:intent-7") == 1
    assert await _count(app, audit_intents) == 0


async def test_a_refused_write_leaves_no_intent(client: httpx.AsyncClient, app: Any, auth: Any) -> None:
    owned = {**_entity(5), "owningDepartment": {"type": "Property", "value": "water"}}
    assert (await client.post("/ngsi-ld/v1/entities", json=owned)).status_code == 201
    official = auth.headers("official", department="transport")
    refused = await client.patch("/ngsi-ld/v1/entities/urn:ngsi-ld:Meter:intent-5/attrs", headers=official,
                                 json={"reading": {"type": "Property", "value": 0}})
    assert refused.status_code == 403
    assert await _count(app, audit_intents) == 0
