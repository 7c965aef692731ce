"""Entity changes on a cross-process bus: how a `Change` travels as JSON, and its outbox row.

With the in-process bus the change object itself is handed to listeners and nothing here runs.
With JetStream (`CITYOS_EVENTS_URL`), `install` makes the hub write one `bus_outbox` row per change
in the change's own transaction (the relay publishes it after the commit), and teaches the bus to
turn the JSON back into a `Change` for consumers in other processes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.bus_models import bus_outbox
from cityos.core.events import EventBus
from cityos.hub.service import ENTITY_CHANGED, Change, HubService
from cityos.hub.store import EntityRecord


def _record_json(record: EntityRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"id": record.id, "types": record.types, "attrs": record.attrs, "scope": record.scope,
            "created_at": record.created_at.isoformat(), "modified_at": record.modified_at.isoformat()}


def _record(data: dict[str, Any] | None) -> EntityRecord | None:
    if data is None:
        return None
    return EntityRecord(id=data["id"], types=list(data["types"]), attrs=data["attrs"],
                        created_at=datetime.fromisoformat(data["created_at"]),
                        modified_at=datetime.fromisoformat(data["modified_at"]), scope=data.get("scope"))


def encode(payload: dict[str, Any]) -> dict[str, Any]:
    change: Change = payload["change"]
    return {"tenant": payload.get("tenant", ""),
            "change": {"entity_id": change.entity_id, "before": _record_json(change.before),
                       "after": _record_json(change.after), "changed_attrs": sorted(change.changed_attrs)}}


def decode(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload["change"]
    return {"tenant": payload.get("tenant", ""),
            "change": Change(data["entity_id"], _record(data["before"]), _record(data["after"]),
                             set(data["changed_attrs"]))}


def install(bus: EventBus, service: HubService) -> None:
    bus.codec(ENTITY_CHANGED, encode, decode)
    if not bus.crosses_processes:
        return
    bus.outboxed(ENTITY_CHANGED)

    async def record(conn: AsyncConnection, tenant: str, changes: list[Change]) -> None:
        now = clock.now()
        await conn.execute(insert(bus_outbox), [
            {"tenant": tenant, "topic": ENTITY_CHANGED, "payload": encode({"tenant": tenant, "change": change}),
             "created_at": now} for change in changes])

    service.listeners.append(record)
