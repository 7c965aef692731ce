"""Helpers shared by the IoT tests (a module of its own: several conftest.py files share that name)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from cityos.hub.models import attribute_history


async def history_count(app: Any, entity_id: str, attr_suffix: str | None = None) -> int:
    t = attribute_history.c
    stmt = select(func.count()).select_from(attribute_history).where(t.entity_id == entity_id)
    if attr_suffix:
        stmt = stmt.where(t.attr.like(f"%{attr_suffix}"))
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


def ms(dt: Any) -> int:
    return int(dt.timestamp() * 1000)


def recorder(app: Any, topic: str) -> list[dict[str, Any]]:
    """Every payload published on `topic` from now on."""
    seen: list[dict[str, Any]] = []

    async def handler(event: Any) -> None:
        seen.append(event.payload)

    app.state.bus.subscribe(topic, handler)
    return seen
