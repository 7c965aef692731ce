"""Fixtures for the IoT tests: the running app's IotService and a few helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from cityos.core import clock
from cityos.hub.models import attribute_history


@pytest.fixture
def iot(app: Any, client: Any) -> Any:  # `client` cleans the database first
    return app.state.iot


@pytest.fixture
def fixed_clock() -> Iterator[list[Any]]:
    """A movable clock: now[0] is the time; tests assign to it."""
    from datetime import UTC, datetime

    now = [datetime(2026, 11, 21, 8, 0, tzinfo=UTC)]
    clock.set_clock(lambda: now[0])
    try:
        yield now
    finally:
        clock.reset_clock()


async def history_count(app: Any, entity_id: str, attr_suffix: str | None = None) -> int:
    t = attribute_history.c
    stmt = select(func.count()).select_from(attribute_history).where(t.entity_id == entity_id)
    if attr_suffix:
        stmt = stmt.where(t.attr.like(f"%{attr_suffix}"))
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


def ms(dt: Any) -> int:
    return int(dt.timestamp() * 1000)
