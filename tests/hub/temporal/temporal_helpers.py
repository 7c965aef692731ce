"""Builders shared by the temporal API tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from cityos.core import clock
from cityos.hub.models import attribute_history

T = "/ngsi-ld/v1/temporal/entities"
E = "/ngsi-ld/v1/entities"
JSON = {"Content-Type": "application/json"}
T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
TEMPERATURE = "https://uri.etsi.org/ngsi-ld/default-context/temperature"


def at(minutes: float) -> str:
    """T0 plus some minutes, as an NGSI-LD DateTime."""
    return clock.iso(T0 + timedelta(minutes=minutes))


def reading(value: Any, when: str, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, "observedAt": when, **extra}


def sensor(n: int) -> str:
    return f"urn:ngsi-ld:Sensor:{n:03d}"


async def post_series(client: httpx.AsyncClient, entity_id: str, values: list[tuple[Any, str]],
                      attr: str = "temperature", entity_type: str = "Sensor",
                      headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"id": entity_id, "type": entity_type, attr: [reading(v, when) for v, when in values]}
    r = await client.post(T, json=body, headers={**JSON, **(headers or {})})
    assert r.status_code in (201, 204), r.text
    return r


async def history_count(app: Any, entity_id: str | None = None) -> int:
    h = attribute_history
    stmt = select(func.count()).select_from(h)
    if entity_id is not None:
        stmt = stmt.where(h.c.entity_id == entity_id)
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


def values_of(body: dict[str, Any], attr: str = "temperature") -> list[Any]:
    return [inst["value"] for inst in body.get(attr, [])]
