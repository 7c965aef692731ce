"""Data-pool indicators over the hub's tables (see cityos.core.indicators)."""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.hub.models import entities


async def fresh_entities(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of the tenant's entities updated during the period (stale data is a data-quality problem)."""
    e = entities
    in_period = case(((e.c.modified_at >= period.start) & (e.c.modified_at < period.end), 1), else_=0)
    # one statement: counted apart, entities written in between would make the share exceed 100 %
    total, fresh = (await conn.execute(select(func.count(), func.sum(in_period)).select_from(e)
                                       .where(e.c.tenant == period.tenant))).one()
    if not total:
        return None
    return Measure(share(fresh or 0, total), int(total))


async def entity_types(conn: AsyncConnection, period: Period) -> Measure | None:
    """Distinct entity types in the pool: the breadth of what the city shares."""
    count = (await conn.execute(select(func.count(func.distinct(entities.c.type)))
                                .where(entities.c.tenant == period.tenant))).scalar_one()
    return Measure(float(count), int(count)) if count else None


SOURCES: dict[str, IndicatorSource] = {
    "data.fresh_entities": fresh_entities,
    "data.entity_types": entity_types,
}
