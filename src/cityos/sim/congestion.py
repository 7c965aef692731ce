"""Simulated road speeds on the city's grid for the demo (路况): every segment's mean speed follows the
city's daily traffic pattern, each segment with its own sensitivity to demand, plus seeded incidents
that jam a segment for half an hour. Reported through the congestion service as a detector gateway
would, so the index, its history, the forecast and the cockpit's traffic layer all have data.

With `cityos demo --traffic sumo` the live speeds and flows come from SUMO's run of the same grid instead
(`sumo_readings`: each segment's two directed edges, averaged since the last report); the three hours of
history before the demo started stay the daily pattern's. Without it SUMO is not run for the roads: it
would take a core of a laptop for the whole session.
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from cityos.core import clock
from cityos.sim.signals import traffic_factor
from cityos.traffic.congestion.forecast import SLOT_S
from cityos.traffic.congestion.grid import FREE_SPEED_KMH, Section, city_sections

log = logging.getLogger("cityos.sim")

BACKFILL_SLOTS = 36          # three hours of history before the demo starts, for the first forecast model
INCIDENT_S = 1800.0
INCIDENTS_PER_HOUR = 3.0


def _unit(*parts: object) -> float:
    """A reproducible number in [0, 1) from its parts."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def segment_speed(section: Section, ts: float, seed: int) -> float:
    """The segment's mean speed (km/h) at `ts`: slower with demand, some segments much more than others."""
    free = FREE_SPEED_KMH.get(section.road_class, 50.0) * (0.85 + 0.15 * _unit(seed, section.id, "free"))
    sensitivity = 0.35 + 0.6 * _unit(seed, section.id, "sensitivity") ** 2
    slot = int(ts // SLOT_S)
    noise = 0.06 * (2 * _unit(seed, section.id, slot) - 1)
    speed = free * max(0.08, 1 - sensitivity * traffic_factor(ts) + noise)
    hour = int(ts // 3600)
    for h in (hour - 1, hour):  # an incident started in this hour or the last still blocking
        if _unit(seed, "incident", h, section.id) < INCIDENTS_PER_HOUR / 120:
            start = h * 3600 + 3600 * _unit(seed, "incident-start", h, section.id)
            if start <= ts < start + INCIDENT_S:
                speed = min(speed, free * 0.15)
    return round(min(200.0, max(0.0, speed)), 1)


def readings(sections: tuple[Section, ...], at: datetime, seed: int) -> list[dict[str, Any]]:
    ts = at.timestamp()
    return [{"segmentId": s.id, "speedKmh": segment_speed(s, ts, seed),
             "flowVph": round(1800 * traffic_factor(ts) * (2.0 if s.road_class == "arterial" else 1.0)),
             "observedAt": clock.iso(at)} for s in sections]


EdgeTraffic = Mapping[str, tuple[float, float]]  # SUMO edge `a--b` → (mean speed km/h, flow veh/h)


def sumo_readings(sections: tuple[Section, ...], edges: EdgeTraffic, at: datetime) -> list[dict[str, Any]]:
    """The segments' readings from SUMO's edges: speed averaged over both directions, flow added up.
    A segment whose edges SUMO did not sample is left out (it keeps its last reading)."""
    out = []
    for s in sections:
        both = [edges[e] for e in (f"{s.start}--{s.end}", f"{s.end}--{s.start}") if e in edges]
        if not both:
            continue
        speed = sum(speed for speed, _flow in both) / len(both)
        out.append({"segmentId": s.id, "speedKmh": round(min(200.0, max(0.0, speed)), 1),
                    "flowVph": round(min(20_000.0, sum(flow for _speed, flow in both))),
                    "observedAt": clock.iso(at)})
    return out


async def run_live(app: Any, seed: int, every_s: float = 60.0,
                   live_traffic: Callable[[], EdgeTraffic | None] | None = None) -> None:
    """Register the grid, backfill three hours, train the first model, then report every `every_s`:
    from `live_traffic()` (SUMO's edges) when it gives something, else from the daily pattern."""
    from cityos.security.policy import Principal

    gateway = Principal("cityos-demo-detectors", kind="service", role="sys_admin")
    congestion, forecasts = app.state.congestion, app.state.congestion_forecast
    sections = city_sections(seed)
    await congestion.register_grid(gateway, "", seed)
    now = clock.now()
    start = datetime.fromtimestamp(math.floor(now.timestamp() / SLOT_S) * SLOT_S, now.tzinfo)
    for k in range(BACKFILL_SLOTS, 0, -1):
        await congestion.report(gateway, "", {"readings": readings(sections, start - timedelta(seconds=k * SLOT_S),
                                                                   seed)})
    await forecasts.retrain(gateway, "", 1)
    rng = random.Random(seed)
    while True:
        try:
            now = clock.now()
            edges = live_traffic() if live_traffic is not None else None
            rows = sumo_readings(sections, edges, now) if edges else readings(sections, now, seed)
            if rows:
                await congestion.report(gateway, "", {"readings": rows})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("simulated road speeds not reported")
        await asyncio.sleep(every_s * (0.9 + 0.2 * rng.random()))
