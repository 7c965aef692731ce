"""一网统管 indicators measured over the incident tables (see cityos.core.indicators)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.ops.incidents.models import incidents


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _response_minutes(conn: AsyncConnection, period: Period, categories: tuple[str, ...]) -> Measure | None:
    """Median minutes from report to dispatch, for incidents of these category prefixes reported in the period."""
    t = incidents
    rows = (await conn.execute(select(t.c.category, t.c.district, t.c.reported_at, t.c.dispatched_at).where(
        t.c.tenant == period.tenant, t.c.reported_at >= period.start, t.c.reported_at < period.end,
        t.c.dispatched_at.is_not(None), t.c.parent_id.is_(None)))).all()
    minutes: dict[str, list[float]] = defaultdict(list)
    everything: list[float] = []
    for category, district, reported, dispatched in rows:
        if not str(category).startswith(categories):
            continue
        value = (_utc(dispatched) - _utc(reported)).total_seconds() / 60.0
        everything.append(value)
        minutes[str(district or "")].append(value)
    if not everything:
        return None
    return Measure(round(statistics.median(everything), 1), len(everything),
                   by_district={d: round(statistics.median(v), 1) for d, v in minutes.items()})


async def pollution_response(conn: AsyncConnection, period: Period) -> Measure | None:
    return await _response_minutes(conn, period, ("environment.",))


async def fire_response(conn: AsyncConnection, period: Period) -> Measure | None:
    return await _response_minutes(conn, period, ("fire",))


async def sla_compliance(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of incidents resolved in the period without breaching a response or resolution deadline."""
    t = incidents
    rows = (await conn.execute(select(t.c.district, t.c.response_state, t.c.resolution_state).where(
        t.c.tenant == period.tenant, t.c.resolved_at >= period.start, t.c.resolved_at < period.end))).all()
    if not rows:
        return None
    kept: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for district, response, resolution in rows:
        ok = "breached" not in (response, resolution)
        kept[str(district or "")][0] += ok
        kept[str(district or "")][1] += 1
    total_ok = sum(v[0] for v in kept.values())
    return Measure(share(total_ok, len(rows)), len(rows),
                   by_district={d: share(ok, n) for d, (ok, n) in kept.items()})


async def resolution_hours(conn: AsyncConnection, period: Period) -> Measure | None:
    """Median hours from report to resolution of incidents resolved in the period."""
    t = incidents
    rows = (await conn.execute(select(t.c.reported_at, t.c.resolved_at).where(
        t.c.tenant == period.tenant, t.c.resolved_at >= period.start, t.c.resolved_at < period.end))).all()
    hours = [(_utc(resolved) - _utc(reported)).total_seconds() / 3600.0 for reported, resolved in rows]
    return Measure(round(statistics.median(hours), 2), len(hours)) if hours else None


SOURCES: dict[str, IndicatorSource] = {
    "ops.pollution_response_minutes": pollution_response,
    "ops.fire_response_minutes": fire_response,
    "ops.sla_compliance": sla_compliance,
    "ops.resolution_hours": resolution_hours,
}
