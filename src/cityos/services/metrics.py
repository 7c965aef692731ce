"""一网通办 figures for `/metrics`: the workflow backlog (open tasks, overdue ones) and the notify outbox."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.metrics import Sample
from cityos.services.models import tasks
from cityos.services.notify.models import outbox


async def services_samples(conn: AsyncConnection) -> list[Sample]:
    now = datetime.now(UTC)
    overdue = case((tasks.c.due_at < now, 1), else_=0)
    rows = (await conn.execute(select(tasks.c.department, func.count(), func.sum(overdue))
                               .where(tasks.c.status == "open").group_by(tasks.c.department))).all()
    samples: list[Sample] = []
    for department, count, late in rows:
        labels = {"department": str(department or "")}
        samples.append(Sample("cityos_workflow_tasks_open", "Open approval tasks by department", float(count), labels))
        samples.append(Sample("cityos_workflow_tasks_overdue", "Open approval tasks past their due time",
                              float(late or 0), labels))
    for status, count in (await conn.execute(select(outbox.c.status, func.count())
                                             .group_by(outbox.c.status))).all():
        samples.append(Sample("cityos_outbox_depth", "Rows waiting in an outbox", float(count),
                              {"outbox": "service_notifications", "state": str(status)}))
    return samples
