"""一网通办 figures for `/metrics`: the workflow backlog (open tasks, overdue ones) and the notify outbox."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.metrics import OUTBOX_DEPTH, Family, MetricProbe, Sample
from cityos.services.models import tasks
from cityos.services.notify.models import outbox


async def _read(conn: AsyncConnection) -> list[Sample]:
    overdue = case((tasks.c.due_at < datetime.now(UTC), 1), else_=0)
    rows = (await conn.execute(select(tasks.c.department, func.count(), func.sum(overdue))
                               .where(tasks.c.status == "open").group_by(tasks.c.department))).all()
    samples: list[Sample] = []
    for department, count, late in rows:
        labels = {"department": str(department or "")}
        samples.append(Sample("cityos_workflow_tasks_open", float(count), labels))
        samples.append(Sample("cityos_workflow_tasks_overdue", float(late or 0), labels))
    for status, count in (await conn.execute(select(outbox.c.status, func.count())
                                             .group_by(outbox.c.status))).all():
        samples.append(Sample(OUTBOX_DEPTH.name, float(count), {"outbox": "service_notifications",
                                                                 "state": str(status)}))
    return samples


SERVICES_PROBE = MetricProbe((
    OUTBOX_DEPTH,
    Family("cityos_workflow_tasks_open", "Open approval tasks by department", ("department",)),
    Family("cityos_workflow_tasks_overdue", "Open approval tasks past their due time", ("department",))), _read)
