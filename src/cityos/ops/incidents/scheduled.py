"""Background loops: the SLA sweep and the hub publisher (outbox of `Incident` entities).

Both are safe to run in several processes: the sweep re-reads each row under its lock and acts
only on a change of colour; publishing is an idempotent upsert, and a row's flag is cleared only
if its version did not move meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from cityos.config import env_float
from cityos.core.tasks import StepGuard
from cityos.ops.incidents.service import IncidentService

log = logging.getLogger(__name__)


async def sweep_loop(service: IncidentService, interval: float, steps: StepGuard) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await steps.step(service.tick())
        except Exception:
            log.exception("SLA sweep failed")


async def hub_loop(service: IncidentService, steps: StepGuard, idle: float = 30.0, gather: float = 0.2) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.hub_wake.wait(), idle)
        await asyncio.sleep(gather)  # let a burst of changes gather into one batch (one hub transaction)
        service.hub_wake.clear()
        try:
            await steps.step(service.sync_hub())
        except Exception:
            log.exception("publishing incidents to the hub failed")
            await asyncio.sleep(1.0)


def start_loops(service: IncidentService) -> Callable[[], Awaitable[None]]:
    """Start both loops; the function returned stops them, letting a step in flight finish."""
    interval = env_float("CITYOS_INCIDENT_SWEEP_SECONDS", 30.0)
    sweep, publish = StepGuard("incident SLA sweep"), StepGuard("incident hub publisher")
    # 0 turns the SLA sweep off (tests run `service.tick()` when they mean to); the hub publisher always runs.
    sweeper = (asyncio.create_task(sweep_loop(service, interval, sweep), name="incidents-sla-sweep")
               if interval > 0 else None)
    publisher = asyncio.create_task(
        hub_loop(service, publish, gather=env_float("CITYOS_INCIDENT_HUB_BATCH_SECONDS", 0.2)),
        name="incidents-hub-publisher")

    async def stop() -> None:
        await sweep.stop([sweeper])
        await publish.stop([publisher])

    return stop
