"""Compute the indicators on schedule (周调度、月通报、季评估).

Every CITYOS_EVALUATION_INTERVAL_SECONDS (default 3600; 0 turns it off; the first round after
CITYOS_EVALUATION_FIRST_DELAY_SECONDS, 60) the current day, week, month and quarter of each evaluated
tenant (CITYOS_EVALUATION_TENANTS, comma separated; default the default tenant) are recomputed, so the
cockpit and the reports show the period so far, and a closed period keeps its last computation."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from cityos.config import env_int
from cityos.core.tasks import StepGuard
from cityos.evaluation.models import PERIOD_KINDS
from cityos.evaluation.reports import archive_closed_period
from cityos.evaluation.service import EvaluationService

log = logging.getLogger(__name__)


def evaluated_tenants() -> list[str]:
    raw = os.environ.get("CITYOS_EVALUATION_TENANTS")
    return [t.strip() for t in raw.split(",")] if raw else [""]


async def compute_all(service: EvaluationService) -> None:
    for tenant in evaluated_tenants():
        for kind in PERIOD_KINDS:
            await service.compute(tenant, kind)
        for kind in ("week", "month", "quarter"):  # 周调度、月通报、季评估: a report when the period closes
            for path in await archive_closed_period(service, tenant, kind):
                log.info("evaluation report written: %s", path)


def start_schedule(service: EvaluationService) -> Callable[[], Awaitable[None]]:
    interval = env_int("CITYOS_EVALUATION_INTERVAL_SECONDS", 3600)
    # Not at once: a process that just started (or restarts in a loop) should not recompute everything.
    first = env_int("CITYOS_EVALUATION_FIRST_DELAY_SECONDS", 60)
    steps = StepGuard("evaluation")

    async def loop() -> None:
        await asyncio.sleep(first)
        while True:
            try:
                await steps.step(compute_all(service))
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed round is retried at the next one
                log.exception("evaluation round failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="evaluation") if interval > 0 else None

    async def stop() -> None:
        await steps.stop([task])

    return stop
