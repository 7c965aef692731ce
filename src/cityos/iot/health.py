"""The scheduled device-health loop.

Every `CITYOS_IOT_HEALTH_SECONDS` (default 30) it:
- marks offline the active devices silent for more than `CITYOS_IOT_OFFLINE_INTERVALS` (default 3)
  times their profile's `intervalSeconds` (their Device entity's `deviceState` becomes "offline",
  and `iot.device.offline` goes on the bus); a device is back `active` with its next reading;
- times out RPC requests past their deadline.

Battery alarms (`iot.device.alarm`, battery ≤ 20 %) and data-quality flags (`iot.data.quality`:
spike, frozen) are raised by the ingest itself, in order, when the readings commit. Time comes
from `cityos.core.clock`, so tests move it instead of sleeping; `run_once` is the unit of work.
Several processes may run the loop: the offline UPDATE only takes rows that are still active
(`SKIP LOCKED` on PostgreSQL), so a device goes offline once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from cityos.core.tasks import StepGuard
from cityos.iot.service import IotService

log = logging.getLogger("cityos.iot.health")


async def run_once(service: IotService) -> dict[str, Any]:
    went = await service.mark_offline()
    expired = await service.expire_rpcs()
    recovered = await service.outbox.recover()
    return {"offline": [d.id for d in went], "rpcTimedOut": expired, "eventsRecovered": recovered}


def start_health(service: IotService, interval: float | None = None) -> Callable[[], Awaitable[None]]:
    seconds = interval if interval is not None else float(os.environ.get("CITYOS_IOT_HEALTH_SECONDS", "30"))

    steps = StepGuard("device health")

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await steps.step(run_once(service))
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not end the loop
                log.exception("device health round failed; next round in %.0fs", seconds)

    task = asyncio.create_task(loop(), name="iot-health") if seconds > 0 else None

    async def stop() -> None:
        await steps.stop([task])

    return stop
