"""Service-hall indicators over the hall's own tables (see cityos.core.indicators)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.indicators import IndicatorSource, Measure, Period
from cityos.livelihood.hall.models import tickets


async def hall_wait_minutes(conn: AsyncConnection, period: Period) -> Measure | None:
    """Mean minutes from taking a ticket to being called, over the tickets called in the period."""
    t = tickets
    rows = (await conn.execute(select(t.c.taken_at, t.c.called_at).where(
        t.c.tenant == period.tenant, t.c.called_at.is_not(None), t.c.called_at >= period.start,
        t.c.called_at < period.end))).all()
    if not rows:
        return None
    waits = [(clock.as_utc(called) - clock.as_utc(taken)).total_seconds() / 60 for taken, called in rows]
    return Measure(round(sum(waits) / len(waits), 2), len(waits))


SOURCES: dict[str, IndicatorSource] = {"livelihood.hall_wait_minutes": hall_wait_minutes}
