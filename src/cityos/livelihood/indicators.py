"""一网协同 indicators over this domain's own tables (see cityos.core.indicators).

- ``livelihood.proactive_reach``: of the people who became eligible in the period, the share reached
  proactively (a 免申即享 grant, or a 服务找人 notice);
- ``livelihood.payout_days``: the median days from the eligibility event to payment, of payouts paid
  in the period (the plans' 45 → 3 days).
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.clock import as_utc
from cityos.core.indicators import IndicatorSource, Measure, Period, share
from cityos.livelihood.models import decisions, payouts


async def proactive_reach(conn: AsyncConnection, period: Period) -> Measure | None:
    d = decisions
    rows = (await conn.execute(select(d.c.status, d.c.notified_at).where(
        d.c.tenant == period.tenant, d.c.eligible.is_(True), d.c.evaluated_at >= period.start,
        d.c.evaluated_at < period.end))).all()
    if not rows:
        return None
    reached = sum(1 for r in rows if r.status == "granted" or r.notified_at is not None)
    return Measure(share(reached, len(rows)), len(rows))


async def payout_days(conn: AsyncConnection, period: Period) -> Measure | None:
    p = payouts
    rows = (await conn.execute(select(p.c.department, p.c.eligible_at, p.c.paid_at).where(
        p.c.tenant == period.tenant, p.c.status == "paid", p.c.paid_at >= period.start,
        p.c.paid_at < period.end))).all()
    if not rows:
        return None
    days = defaultdict(list)
    for row in rows:
        days[row.department].append((as_utc(row.paid_at) - as_utc(row.eligible_at)).total_seconds() / 86400)
    every = [v for values in days.values() for v in values]
    return Measure(round(statistics.median(every), 2), len(every),
                   by_department={k: round(statistics.median(v), 2) for k, v in days.items()})


SOURCES: dict[str, IndicatorSource] = {"livelihood.proactive_reach": proactive_reach,
                                       "livelihood.payout_days": payout_days}
