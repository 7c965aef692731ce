"""Accident and stalled-vehicle detection from detector readings (事故检测).

A California-style comparative algorithm (Payne & Tignor's TSC #7 family) on a pair of detector
stations on the same lane: an upstream loop near the start of the road section and a downstream loop
near its stop line. Every interval (30 s) each station reports its occupancy (share of time a vehicle
is over the loop) and mean speed, as `TrafficFlowObserved` does.

A blockage between the two stations shows as a queue upstream (occupancy up, speed down) while the
lane downstream empties (occupancy down): the spatial occupancy difference OCCDF = occ_up − occ_down,
its relative value OCCRDF = OCCDF / occ_up, and a low downstream occupancy DOCC hold together. A
queue from a red light covers the downstream loop first, so normal signal operation keeps OCCDF low or
negative; a queue long enough to reach the upstream loop also covers the downstream one (OCCRDF
small). The three tests must hold for `persistence` consecutive intervals before an incident is
declared (filtering a platoon that just passed), and it is cleared once OCCDF falls back.

On a multi-lane road traffic changes lanes around a blocked lane instead of queueing in it, so a
second test watches the lane's flow: vehicles keep passing the upstream loop while none passes the
downstream one for four intervals (two minutes: longer than a red light holds the lane).

`alarm_event` turns a detection into the `ops.alarm.raised` payload the incident domain listens to
(category `traffic.accident`, routed to the transport department; deduplicated by the alarm id, which
names the detector pair: one open incident per location). `accident_watch` runs it on live hub readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cityos.core.messages import local_time

INTERVAL_S = 30.0


@dataclass(frozen=True)
class Thresholds:
    occdf: float = 0.25  # upstream occupancy exceeds downstream by 25 percentage points
    occrdf: float = 0.6  # … which is most of the upstream occupancy
    docc: float = 0.08  # downstream nearly empty
    upstream_speed_m_s: float = 4.0  # the upstream queue crawls
    persistence: int = 2  # consecutive intervals
    # Flow interruption (a blocked lane on a multi-lane road, where traffic changes lanes around the
    # blockage instead of queueing): vehicles keep passing upstream while none passes downstream.
    interrupted_upstream: int = 3  # vehicles upstream in the window (its last interval left out: travel time)
    interrupted_window: int = 4  # intervals with no vehicle downstream (2 min: longer than a red light)


@dataclass(frozen=True)
class StationReading:
    occupancy: float  # share of the interval, 0..1
    speed: float  # mean speed of the vehicles that passed, m/s (0 when none passed)
    vehicles: int = 0


class ReadingError(ValueError):
    """An impossible detector reading (never fed to the detector)."""


def check_station(reading: StationReading) -> StationReading:
    if not (math.isfinite(reading.occupancy) and math.isfinite(reading.speed)):
        raise ReadingError("occupancy and speed must be finite")
    if not 0.0 <= reading.occupancy <= 1.0:
        raise ReadingError("occupancy is a share in [0, 1]")
    if not 0.0 <= reading.speed <= 70.0:
        raise ReadingError("speed must be between 0 and 70 m/s")
    if reading.vehicles < 0:
        raise ReadingError("vehicle count cannot be negative")
    return reading


@dataclass
class PairState:
    tentative: int = 0  # consecutive intervals meeting the occupancy tests
    up_counts: list[int] = field(default_factory=list)  # the last intervals' upstream vehicle counts
    down_counts: list[int] = field(default_factory=list)
    active_since: float | None = None  # time the incident was declared


@dataclass
class Detection:
    pair: str
    at: float  # time of the interval that confirmed it
    occdf: float
    occrdf: float
    docc: float


@dataclass
class AccidentDetector:
    """Runs the comparative tests on every station pair, one interval at a time."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    states: dict[str, PairState] = field(default_factory=dict)

    def observe(self, pair: str, up: StationReading, down: StationReading, at: float) -> Detection | None:
        """Feed one interval of a pair; returns a Detection when an incident is declared (once per episode)."""
        check_station(up)
        check_station(down)
        t = self.thresholds
        state = self.states.setdefault(pair, PairState())
        occdf = up.occupancy - down.occupancy
        occrdf = occdf / up.occupancy if up.occupancy > 0 else 0.0
        slow = up.vehicles == 0 or up.speed <= t.upstream_speed_m_s
        queued = occdf >= t.occdf and occrdf >= t.occrdf and down.occupancy <= t.docc and slow
        state.up_counts = [*state.up_counts, up.vehicles][-t.interrupted_window - 1:]
        state.down_counts = [*state.down_counts, down.vehicles][-t.interrupted_window:]
        cut = (len(state.down_counts) == t.interrupted_window and sum(state.down_counts) == 0
               and sum(state.up_counts[:-1]) >= t.interrupted_upstream)
        state.tentative = state.tentative + 1 if queued else 0
        if not (queued or cut):
            if state.active_since is not None and occdf < t.occdf / 2 and down.vehicles > 0:
                state.active_since = None  # cleared: the next blockage is a new incident
            return None
        if state.active_since is None and (state.tentative >= t.persistence or cut):
            state.active_since = at
            return Detection(pair, at, round(occdf, 3), round(occrdf, 3), round(down.occupancy, 3))
        return None

    def active(self) -> dict[str, float]:
        return {pair: s.active_since for pair, s in self.states.items() if s.active_since is not None}


def alarm_event(tenant: str, detection: Detection, when: datetime, *, location: dict[str, Any] | None = None,
                entity_id: str | None = None) -> dict[str, Any]:
    """The `ops.alarm.raised` payload for a detection: the incident domain opens a `traffic.accident`."""
    stamp = local_time(when, "%Y-%m-%d %H:%M:%S")  # the city's zone, as operators read it
    message = (f"疑似交通事故 Suspected accident on {detection.pair} at {stamp}: upstream occupancy exceeds "
               f"downstream by {detection.occdf:.0%}, downstream {detection.docc:.0%}")
    # The id names the place, not the moment: while its incident is open, a repeated detection there (a
    # restart that forgot the detector's state, a replayed reading) folds into it: one incident per episode.
    return {"tenant": tenant, "alarm": {
        "id": f"traffic-accident:{detection.pair}"[:200], "ruleId": "traffic.accident-detection",
        "severity": "major", "message": message, "entityId": entity_id, "location": location,
        "department": "transport", "category": "traffic",
        "incident": {"category": "traffic.accident", "level": "general"}}}
