"""IoT figures for `/metrics`: devices by status, dead letters, the device-event outbox, and the
ingest workers' counters (fed from their commit hook, so ingest.py stays free of metrics code)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.metrics import (
    INGEST_BATCHES,
    INGEST_DEAD_LETTERS,
    INGEST_READINGS,
    OUTBOX_DEPTH,
    Family,
    MetricProbe,
    Sample,
    age_seconds,
)
from cityos.iot.messages import IngestReport
from cityos.iot.models import dead_letters, devices, event_outbox


async def _read(conn: AsyncConnection) -> list[Sample]:
    samples = [Sample("cityos_devices", float(count), {"status": str(status)})
               for status, count in (await conn.execute(select(devices.c.status, func.count())
                                                        .group_by(devices.c.status))).all()]
    for status, count in (await conn.execute(select(dead_letters.c.status, func.count())
                                             .group_by(dead_letters.c.status))).all():
        samples.append(Sample("cityos_dead_letters", float(count), {"status": str(status)}))
    count, oldest = (await conn.execute(select(func.count(), func.min(event_outbox.c.created_at)))).one()
    samples.append(Sample(OUTBOX_DEPTH.name, float(count), {"outbox": "iot_events", "state": "pending"}))
    samples.append(Sample("cityos_device_event_lag_seconds", age_seconds(oldest) if count else 0.0))
    return samples


IOT_PROBE = MetricProbe((
    OUTBOX_DEPTH,
    Family("cityos_devices", "Registered devices by status", ("status",)),
    Family("cityos_dead_letters", "Device messages in the dead-letter store by status", ("status",)),
    Family("cityos_device_event_lag_seconds", "Age of the oldest device event not yet published")), _read)


def watch_ingest(workers: list[Any]) -> None:
    """Count each committed batch of these ingest workers (their `stats.on_commit` hook)."""

    def committed(envelopes: list[Any], report: IngestReport) -> None:
        INGEST_BATCHES.inc()
        INGEST_READINGS.inc(float(report.stored))
        INGEST_DEAD_LETTERS.inc(float(report.dead_letters))

    for worker in workers:
        worker.stats.on_commit.append(committed)
