"""Incident figures for `/metrics`: open incidents by category and SLA state."""

from __future__ import annotations

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.metrics import Family, MetricProbe, Sample
from cityos.ops.incidents.models import OPEN_STATUSES, incidents


async def _read(conn: AsyncConnection) -> list[Sample]:
    t = incidents
    breached = case(((t.c.response_state == "breached") | (t.c.resolution_state == "breached"), 1), else_=0)
    rows = (await conn.execute(select(t.c.category, func.count(), func.sum(breached))
                               .where(t.c.status.in_(OPEN_STATUSES)).group_by(t.c.category))).all()
    samples: list[Sample] = []
    for category, count, breaches in rows:
        samples.append(Sample("cityos_incidents_open", float(count), {"category": str(category)}))
        samples.append(Sample("cityos_incidents_sla_breached", float(breaches or 0), {"category": str(category)}))
    return samples


INCIDENT_PROBE = MetricProbe((
    Family("cityos_incidents_open", "Open incidents by category", ("category",)),
    Family("cityos_incidents_sla_breached", "Open incidents past an SLA deadline", ("category",))), _read)
