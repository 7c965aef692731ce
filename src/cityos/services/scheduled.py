"""Background work of 一网通办: the timer sweep that fires due BPMN timer events (escalations).

Every process may run it: each step is guarded by the workflow row's version, so two sweepers
racing on one application make one step and one harmless 409.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cityos.core.tasks import StepGuard
from cityos.services.service import ServiceDesk

log = logging.getLogger(__name__)


def start_sweeper(desk: ServiceDesk) -> Callable[[], Awaitable[None]]:
    """Run `desk.sweep()` every `settings.sweep_seconds` (0 disables it); returns the stop function."""
    interval = desk.settings.sweep_seconds
    if interval <= 0:
        async def noop() -> None:
            return None
        return noop

    steps = StepGuard("services timer sweep")

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                moved = await steps.step(desk.sweep())
                if moved:
                    log.info("timer sweep moved %d application(s)", moved)
            except Exception:
                log.exception("timer sweep failed")

    task = asyncio.create_task(loop(), name="services-timer-sweep")

    async def stop() -> None:
        await steps.stop([task])

    return stop
