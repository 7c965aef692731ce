"""The hub's figures for `/metrics`: notification outbox depth and lag, subscriptions by status."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.metrics import OUTBOX_DEPTH, Family, MetricProbe, Sample, age_seconds
from cityos.hub.subscriptions.models import outbox, subscriptions


async def _read(conn: AsyncConnection) -> list[Sample]:
    rows = (await conn.execute(select(outbox.c.state, func.count(), func.min(outbox.c.created_at))
                               .group_by(outbox.c.state))).all()
    samples: list[Sample] = []
    lag = 0.0
    for state, count, oldest in rows:
        samples.append(Sample(OUTBOX_DEPTH.name, float(count), {"outbox": "hub_notifications", "state": str(state)}))
        if state == "pending":
            lag = age_seconds(oldest)
    samples.append(Sample("cityos_notification_lag_seconds", lag))
    for status, count in (await conn.execute(select(subscriptions.c.status, func.count())
                                             .group_by(subscriptions.c.status))).all():
        samples.append(Sample("cityos_subscriptions", float(count), {"status": str(status)}))
    return samples


HUB_PROBE = MetricProbe((OUTBOX_DEPTH,
                         Family("cityos_notification_lag_seconds", "Age of the oldest notification not yet delivered"),
                         Family("cityos_subscriptions", "NGSI-LD subscriptions by status", ("status",))), _read)
