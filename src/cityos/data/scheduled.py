"""The catalogue refreshes itself (自动编目): every CITYOS_DATA_HARVEST_INTERVAL_SECONDS (default 900; 0 turns
it off; the first round after CITYOS_DATA_HARVEST_FIRST_DELAY_SECONDS, 120) each tenant of
CITYOS_DATA_HARVEST_TENANTS (comma separated; default the default tenant) is harvested, so a new entity
type, district or reading appears in the catalogue and the open data without a manual call.

The same loop stores the hub's refused 一数一源 writes and reloads the declared sources (what another API
worker declared), every CITYOS_DATA_SOURCES_INTERVAL_SECONDS (default 10).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from cityos.config import env_int
from cityos.core.tasks import periodic

log = logging.getLogger(__name__)


def harvested_tenants() -> list[str]:
    raw = os.environ.get("CITYOS_DATA_HARVEST_TENANTS")
    return [t.strip() for t in raw.split(",")] if raw else [""]


async def harvest_all(catalogue: Any, tenants: list[str]) -> list[dict[str, Any]]:
    done = []
    for tenant in tenants:
        result = await catalogue.harvest(tenant)
        log.info("catalogue harvest of tenant %r: %d datasets", tenant, result["datasets"])
        done.append(result)
    return done


def start_harvest(catalogue: Any, tenants: list[str] | None = None, interval: float | None = None,
                  first: float | None = None) -> Callable[[], Awaitable[None]]:
    every = float(env_int("CITYOS_DATA_HARVEST_INTERVAL_SECONDS", 900)) if interval is None else interval
    # Not at once: a process that just started should not harvest everything before it serves.
    delay = float(env_int("CITYOS_DATA_HARVEST_FIRST_DELAY_SECONDS", 120)) if first is None else first
    chosen = harvested_tenants() if tenants is None else tenants
    return periodic("data-harvest", lambda: harvest_all(catalogue, chosen), every, delay)


def start_sources(sources: Any) -> Callable[[], Awaitable[None]]:
    every = float(env_int("CITYOS_DATA_SOURCES_INTERVAL_SECONDS", 10))

    async def step() -> None:
        await sources.flush()
        await sources.load()

    return periodic("data-sources", step, every, every)


def start_key_call_pruning(open_data: Any) -> Callable[[], Awaitable[None]]:
    """API-key call counts older than the sliding minute are dropped every few minutes."""
    every = float(env_int("CITYOS_DATA_KEY_CALLS_PRUNE_SECONDS", 300))
    return periodic("data-key-calls", open_data.prune_calls, every, every)
