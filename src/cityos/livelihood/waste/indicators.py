"""Waste-sorting indicators over this domain's own tables (see cityos.core.indicators)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.livelihood.waste.models import cards, deposits


async def participation(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of registered household cards that made at least one deposit in the period."""
    registered = (await conn.execute(select(func.count()).select_from(cards).where(
        cards.c.tenant == period.tenant, cards.c.active.is_(True), cards.c.issued_at < period.end))).scalar_one()
    if not registered:
        return None
    active = (await conn.execute(select(func.count(func.distinct(deposits.c.card))).where(
        deposits.c.tenant == period.tenant, deposits.c.at >= period.start, deposits.c.at < period.end)))
    return Measure(share(active.scalar_one(), registered), int(registered))


async def accuracy(conn: AsyncConnection, period: Period) -> Measure | None:
    """Share of checked deposits that were sorted correctly."""
    d = deposits
    checked = (await conn.execute(select(func.count()).where(
        d.c.tenant == period.tenant, d.c.correct.is_not(None), d.c.at >= period.start,
        d.c.at < period.end))).scalar_one()
    if not checked:
        return None
    correct = (await conn.execute(select(func.count()).where(
        d.c.tenant == period.tenant, d.c.correct.is_(True), d.c.at >= period.start,
        d.c.at < period.end))).scalar_one()
    return Measure(share(correct, checked), int(checked))


SOURCES: dict[str, IndicatorSource] = {"livelihood.waste_sorting_participation": participation,
                                       "livelihood.waste_sorting_accuracy": accuracy}
