"""Stalled-vehicle detection from video or radar zones (停驶车辆检测), beside the loops' tests.

Loops 250 m apart do not see a blocked lane of a two-lane arterial in time: traffic passes the stopped
vehicle in the other lane and is back in its own before the next loop (bench/RESULTS.md, 2026-12-06). A
zone detector does: a video-analytics camera or a traffic radar watching a stretch of lane, as cities
mount them along arterials, tracks each vehicle and reports every interval the vehicles standing still in
each lane, each as its distance to the lane's stop line and how long it has stood (`StoppedVehicle`).

Standing long is normal in a queue: at a red light, or behind the vehicles ahead. A vehicle is taken for
stalled (an accident, a breakdown) when three things hold together:
- it heads its own standstill: no standing vehicle within `queue_gap_m` ahead of it (in a queue the one
  ahead stands too);
- it stands at least `clear_of_stop_line_m` before the stop line (a queue's head at a red light, or a
  vehicle waiting at the lane's end to change lanes, stands at the line);
- it has stood `stalled_s` or longer, and was such a head at the same place (within `same_place_m`) in the
  `confirm` readings before: the rear of an oversaturated queue can head a standstill for a moment, when
  the vehicles ahead have moved on and the start-up wave has not reached it yet, but not for a whole interval.
One alarm per zone and episode; the zone is clear again once a reading shows no such vehicle.

`StallDetector.observe` takes one zone's reading; `accident_watch` feeds it from `TrafficFlowObserved`
entities carrying `stoppedVehicles`, and the alarm goes the loops' way (`accidents.alarm_event`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from cityos.traffic.accidents import Detection, ReadingError, is_number

MAX_STOPPED = 2_000  # vehicles standing in one zone's reading (a 3 km lane holds about 400)
MAX_DISTANCE_M = 20_000.0
MAX_STOOD_S = 86_400.0


@dataclass(frozen=True)
class StoppedVehicle:
    distance_m: float  # from the lane's stop line, upstream
    stood_s: float  # how long it has stood still so far


@dataclass(frozen=True)
class StallThresholds:
    # Longer than a red light (the controller's maximum red is 90 s) and the start-up wave that frees a long
    # queue's rear: chosen on the bench's tuning seeds (bench/RESULTS.md, 2026-12-06 evening).
    stalled_s: float = 90.0
    queue_gap_m: float = 20.0  # a standing vehicle closer than this behind another stands in its queue
    clear_of_stop_line_m: float = 30.0
    same_place_m: float = 3.0
    confirm: int = 2  # consecutive readings that show the same stalled head


def check_stopped(stopped: Sequence[StoppedVehicle]) -> list[StoppedVehicle]:
    """A zone's reading as the detector can trust it, or ReadingError (never half taken)."""
    if len(stopped) > MAX_STOPPED:
        raise ReadingError(f"at most {MAX_STOPPED} standing vehicles in one reading")
    for vehicle in stopped:
        if not (is_number(vehicle.distance_m) and is_number(vehicle.stood_s)):
            raise ReadingError("a standing vehicle's distance and time must be numbers")
        if not (math.isfinite(vehicle.distance_m) and 0.0 <= vehicle.distance_m <= MAX_DISTANCE_M):
            raise ReadingError(f"distance to the stop line must be between 0 and {MAX_DISTANCE_M:g} m")
        if not (math.isfinite(vehicle.stood_s) and 0.0 <= vehicle.stood_s <= MAX_STOOD_S):
            raise ReadingError(f"standing time must be between 0 and {MAX_STOOD_S:g} s")
    return sorted(stopped, key=lambda v: v.distance_m)


def stalled_heads(stopped: Sequence[StoppedVehicle], t: StallThresholds) -> list[StoppedVehicle]:
    """The vehicles that head their own standstill, clear of the stop line, and have stood `stalled_s`."""
    heads = []
    ahead: float | None = None  # the nearest standing vehicle ahead (closer to the stop line)
    for vehicle in stopped:  # nearest the stop line first
        leads = ahead is None or vehicle.distance_m - ahead > t.queue_gap_m
        if leads and vehicle.distance_m >= t.clear_of_stop_line_m and vehicle.stood_s >= t.stalled_s:
            heads.append(vehicle)
        ahead = vehicle.distance_m
    return heads


@dataclass
class ZoneState:
    heads: list[tuple[float, int]] = field(default_factory=list)  # (distance m, readings in a row there)
    active_since: float | None = None


@dataclass
class StallDetector:
    """Runs the stalled-vehicle test on every zone (a lane watched by a camera or radar), a reading at a time."""

    thresholds: StallThresholds = field(default_factory=StallThresholds)
    zones: dict[str, ZoneState] = field(default_factory=dict)

    def observe(self, zone: str, stopped: Sequence[StoppedVehicle], at: float) -> Detection | None:
        """Feed one reading of a zone; returns a Detection when a stalled vehicle is declared (once per episode)."""
        t = self.thresholds
        heads = stalled_heads(check_stopped(stopped), t)
        state = self.zones.setdefault(zone, ZoneState())
        streaks = []
        for head in heads:
            before = [n for d, n in state.heads if abs(d - head.distance_m) <= t.same_place_m]
            streaks.append((head.distance_m, 1 + max(before, default=0)))
        state.heads = streaks
        if not heads:
            state.active_since = None  # cleared: the next stalled vehicle is a new incident
            return None
        confirmed = [(d, n) for d, n in streaks if n >= t.confirm]
        if state.active_since is not None or not confirmed:
            return None
        state.active_since = at
        distance = confirmed[0][0]
        stood = max(h.stood_s for h in heads if h.distance_m == distance)
        return Detection(zone, at, 0.0, 0.0, 0.0, test="stalled-vehicle", distance_m=round(distance, 1),
                         stood_s=round(stood, 1))

    def active(self) -> dict[str, float]:
        return {zone: s.active_since for zone, s in self.zones.items() if s.active_since is not None}
