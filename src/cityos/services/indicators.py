"""一网通办 indicators measured over this domain's own tables (see cityos.core.indicators)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.services.models import APPROVED, REJECTED, applications
from cityos.services.ratings.models import ratings

_DONE = (APPROVED, REJECTED)


async def _by_department(conn: AsyncConnection, value: Any, where: list[Any]) -> tuple[float | None, int,
                                                                                        dict[str, float]]:
    """The value over all rows, its sample size, and the value per lead department."""
    a = applications
    total = (await conn.execute(select(value, func.count()).where(*where))).one()
    if not total[1] or total[0] is None:
        return None, 0, {}
    rows = (await conn.execute(select(a.c.department, value).where(*where).group_by(a.c.department))).all()
    return float(total[0]), int(total[1]), {str(d): round(float(v), 2) for d, v in rows if v is not None}


def _submitted_in(period: Period) -> list[Any]:
    a = applications
    return [a.c.tenant == period.tenant, a.c.submitted_at >= period.start, a.c.submitted_at < period.end]


def _completed_in(period: Period) -> list[Any]:
    a = applications
    return [a.c.tenant == period.tenant, a.c.status.in_(_DONE), a.c.completed_at >= period.start,
            a.c.completed_at < period.end]


def _percent(condition: Any) -> Any:
    return 100.0 * func.avg(case((condition, 1.0), else_=0.0))


async def online_rate(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of applications submitted online (not at a hall window)."""
    value, n, depts = await _by_department(conn, _percent(applications.c.channel == "online"), _submitted_in(period))
    return None if value is None else Measure(round(value, 2), n, by_department=depts)


async def trips_per_matter(conn: AsyncConnection, period: Period) -> Measure | None:
    """Trips to a hall per application: one for an application made at a window, none online."""
    value, n, depts = await _by_department(conn, func.avg(case((applications.c.channel == "hall", 1.0), else_=0.0)),
                                           _submitted_in(period))
    return None if value is None else Measure(round(value, 3), n, by_department=depts)


async def handling_minutes(conn: AsyncConnection, period: Period) -> Measure | None:
    """Average handling time of applications completed in the period, in minutes."""
    value, n, depts = await _by_department(conn, func.avg(cast(applications.c.handling_seconds, Float)) / 60.0,
                                           [*_completed_in(period), applications.c.handling_seconds.is_not(None)])
    return None if value is None else Measure(round(value, 1), n, by_department=depts)


async def instant_share(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of completed applications decided instantly (秒批)."""
    value, n, depts = await _by_department(conn, _percent(applications.c.instant.is_(True)), _completed_in(period))
    return None if value is None else Measure(round(value, 2), n, by_department=depts)


async def on_time_rate(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of completed applications decided within their statutory working-day limit."""
    a = applications
    value, n, depts = await _by_department(conn, _percent(a.c.completed_at <= a.c.due_at), _completed_in(period))
    return None if value is None else Measure(round(value, 2), n, by_department=depts)


async def satisfaction(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of 好差评 ratings of 4 or 5 (satisfied, on the five-level scale)."""
    r = ratings
    where = [r.c.tenant == period.tenant, r.c.created_at >= period.start, r.c.created_at < period.end]
    good = _percent(r.c.score >= 4)
    total = (await conn.execute(select(good, func.count()).where(*where))).one()
    if not total[1]:
        return None
    rows = (await conn.execute(select(r.c.department, good).where(*where).group_by(r.c.department))).all()
    return Measure(round(float(total[0]), 2), int(total[1]),
                   by_department={str(d or ""): round(float(v), 2) for d, v in rows})


SOURCES: dict[str, IndicatorSource] = {
    "services.online_rate": online_rate,
    "services.trips_per_matter": trips_per_matter,
    "services.handling_minutes": handling_minutes,
    "services.instant_share": instant_share,
    "services.on_time_rate": on_time_rate,
    "services.satisfaction": satisfaction,
}
__all__ = ["SOURCES", "share"]
