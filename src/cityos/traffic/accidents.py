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

In light traffic the queue behind a stopped vehicle takes many minutes to reach the upstream loop,
and on a multi-lane road traffic changes lanes around a blocked lane instead of queueing in it, so a
second test watches vehicle conservation: a vehicle that passed the upstream loop passes the downstream
one unless it leaves the lane in between. The pair learns the share of its upstream vehicles that show
up downstream (about 1 on a through lane, lower on a lane vehicles leave to turn; a Beta distribution,
so that a pair that saw few vehicles stays uncertain), and counts the intervals in which the downstream
loop saw no vehicle and none stood on it (a red-light queue or a spill-back stands on the loop; the
lane below a blockage is empty). The vehicles that passed upstream during that silence (the last
interval left out: they may still be on their way) each had the learned chance of arriving; when the
probability that none did falls below `false_alarm_p` (`all_lanes_false_alarm_p` for stations across
all of a road's lanes, where lane changes cannot look like vanishing vehicles), the lane is declared
blocked: on a through lane after three or four vehicles, whatever the time that takes, on a lane vehicles
often leave after many more. The share is learned with a delay (intervals join it `learn_delay`
intervals later, and none while an incident is open), so a blockage teaches the pair little that
vehicles vanish (only the few intervals before it was declared), while a lane that alarms because its
vehicles do leave learns so. `flow_scaled=False` keeps the earlier fixed rule (no vehicle downstream for
four intervals after three upstream) for comparison.

A blocked lane that traffic passes in the next lane may get its vehicles back before the downstream loop,
so neither test above sees it; read lane by lane, though, a station pair shows the vehicles moving over: the
blocked lane's share of the vehicles passing downstream collapses below the share its upstream count
predicts (times the lane's learned ratio of the two shares: a lane that vehicles leave to turn learns its
habit). `observe_lanes` tests this on windows of 4 to 12 intervals (a beta-binomial lower tail, the share
itself Beta-distributed with `shift_concentration`, Bonferroni over the windows, below `shift_p`), once per
episode; it learns like a pair (late, nothing while a lane of the section is declared) and clears when the
lane carries half its expected share again. In the SUMO bench it finds blockages the other tests miss at
four times their false alarms (bench/RESULTS.md, 2026-12-06).

`alarm_event` turns a detection into the `ops.alarm.raised` payload the incident domain listens to
(category `traffic.accident`, routed to the transport department; deduplicated by the alarm id, which
names the detector pair: one open incident per location). `accident_watch` runs it on live hub readings.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cityos.core.messages import local_time

INTERVAL_S = 30.0


# The lane-shift test's operating point measured first (bench/accident_bench.py, tuning seeds 2–8, cold start); with
# the warm-up protocol (detectors that have learned the network, as a running platform's have) 1e-6 halves its false
# alarms for little loss (bench/RESULTS.md, 2026-12-06 15:00). The platform's live watch leaves the test off unless
# CITYOS_TRAFFIC_ACCIDENT_LANE_SHIFT_P sets it (traffic/api.py).
LANE_SHIFT_P = 1e-5


@dataclass(frozen=True)
class Thresholds:
    occdf: float = 0.25  # upstream occupancy exceeds downstream by 25 percentage points
    occrdf: float = 0.6  # … which is most of the upstream occupancy
    docc: float = 0.08  # downstream nearly empty
    upstream_speed_m_s: float = 4.0  # the upstream queue crawls
    persistence: int = 2  # consecutive intervals
    # Flow interruption (a blocked lane on a multi-lane road, where traffic changes lanes around the
    # blockage instead of queueing): vehicles keep passing upstream while none passes downstream.
    flow_scaled: bool = True  # the conservation test; False: the fixed window below
    # P(no vehicle downstream | the upstream flow) that declares a blockage. 1e-4, not 1e-3: a lane pair that has
    # learned for a while is sure its vehicles arrive (lane changes into the lane hide those out of it), and at 1e-3
    # two vehicles missing on a quiet lane were an alarm: three times the false alarms of a cold start in the bench.
    false_alarm_p: float = 1e-4
    # A pair of stations across all the road's lanes: vehicles changing lanes stay counted, so the share is
    # about 1 and silence is stronger evidence (no false alarm at 1e-2 in the SUMO bench, bench/RESULTS.md).
    all_lanes_false_alarm_p: float = 1e-2
    min_silence: int = 3  # intervals with no vehicle downstream, at least (1.5 min: a red light's queue is gone)
    max_silence: int = 20  # intervals of upstream counts weighed, at most (10 min: light traffic takes long)
    # Before anything is learned a pair counts as if it had seen 7 vehicles pass upstream and 6.5 of them
    # downstream: most lanes are through lanes, but a few vehicles' evidence is enough to learn otherwise.
    prior_arrived: float = 6.5
    prior_left: float = 0.5
    learn_delay: int = 6  # intervals before one joins the learned share (a blockage is declared sooner)
    memory_vehicles: float = 400.0  # the learned counts are halved beyond this (recent traffic weighs more)
    # Lane shift, on a road whose stations have a loop in every lane: over the last intervals the blocked lane's
    # share of the vehicles passing downstream falls below the share its upstream count predicts, because
    # traffic moved into the next lane to pass (even when it moves back before the next station, which no
    # single lane's count shows). Each of the windows `shift_windows` (in intervals) is tested; the smallest
    # probability times their number (a Bonferroni bound) must fall below `shift_p`. 0 turns the test off.
    shift_p: float = LANE_SHIFT_P
    shift_windows: tuple[int, int] = (4, 12)
    shift_concentration: float = 30.0  # how much a lane's share wanders by itself (a Beta's a + b)
    # The earlier fixed rule (flow_scaled=False):
    interrupted_upstream: int = 3  # vehicles upstream in the window (its last interval left out: travel time)
    interrupted_window: int = 4  # intervals with no vehicle downstream (2 min: longer than a red light)


@dataclass(frozen=True)
class StationReading:
    occupancy: float  # share of the interval, 0..1
    speed: float  # mean speed of the vehicles that passed, m/s (0 when none passed)
    vehicles: int = 0


class ReadingError(ValueError):
    """An impossible detector reading (never fed to the detector)."""


def is_number(raw: object) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)


def check_station(reading: StationReading) -> StationReading:
    # Readings come from devices and integrators: a missing field (None) or a string is refused, not crashed on.
    if not (is_number(reading.occupancy) and is_number(reading.speed)):
        raise ReadingError("occupancy and speed must be numbers")
    if not isinstance(reading.vehicles, int) or isinstance(reading.vehicles, bool):
        raise ReadingError("the vehicle count must be a whole number")
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
    silence: int = 0  # consecutive intervals with no vehicle passing or standing on the downstream loop
    pending: deque[tuple[int, int]] = field(default_factory=deque)  # (up, down) intervals not learned yet
    seen_up: float = 0.0  # learned upstream vehicles …
    seen_down: float = 0.0  # … and those of them seen downstream
    active_since: float | None = None  # time the incident was declared

    def beta(self, t: Thresholds) -> tuple[float, float]:
        """What is known of the share of upstream vehicles that pass downstream: Beta(arrived, left)."""
        arrived = min(self.seen_down, self.seen_up)  # more downstream is lane changes in: a share of at most 1
        return t.prior_arrived + arrived, t.prior_left + self.seen_up - arrived

    def ratio(self, t: Thresholds) -> float:
        arrived, left = self.beta(t)
        return arrived / (arrived + left)

    def none_arrive(self, vehicles: int, t: Thresholds) -> float:
        """P(none of `vehicles` passes downstream): E[(1 − share)^vehicles] over what is known of the share."""
        arrived, left = self.beta(t)
        probability = 1.0
        for i in range(vehicles):
            probability *= (left + i) / (arrived + left + i)
        return probability

    def learn(self, up: int, down: int, t: Thresholds) -> None:
        if self.active_since is not None:
            return  # nothing is learned while an incident is open
        self.pending.append((up, down))
        if len(self.pending) <= t.learn_delay:
            return
        old_up, old_down = self.pending.popleft()
        self.seen_up += old_up
        self.seen_down += old_down
        if self.seen_up > t.memory_vehicles:
            self.seen_up, self.seen_down = self.seen_up / 2, self.seen_down / 2


def at_most(count: int, trials: int, share: float, concentration: float) -> float:
    """P(X ≤ count) for X beta-binomial: `trials` vehicles, each in the lane with a share that itself varies
    as Beta(share·concentration, (1 − share)·concentration)."""
    a, b = max(1e-6, share * concentration), max(1e-6, (1.0 - share) * concentration)
    log_norm = (math.lgamma(trials + 1) + math.lgamma(a + b) - math.lgamma(a + b + trials)
                - math.lgamma(a) - math.lgamma(b))
    total = 0.0
    for x in range(min(count, trials) + 1):
        total += math.exp(log_norm - math.lgamma(x + 1) - math.lgamma(trials - x + 1) + math.lgamma(x + a)
                          + math.lgamma(trials - x + b))
    return min(1.0, total)


@dataclass
class ShiftState:
    """A station pair read lane by lane: recent counts per lane and what is learned of how they carry over."""

    lanes: int
    ups: list[list[int]] = field(default_factory=list)  # the last intervals' upstream counts, per lane
    downs: list[list[int]] = field(default_factory=list)
    pending: deque[tuple[list[int], list[int]]] = field(default_factory=deque)  # not learned yet
    seen_up: list[float] = field(default_factory=list)
    seen_down: list[float] = field(default_factory=list)
    active: dict[int, float] = field(default_factory=dict)  # lane → time declared blocked

    def __post_init__(self) -> None:
        self.seen_up = self.seen_up or [0.0] * self.lanes
        self.seen_down = self.seen_down or [0.0] * self.lanes

    def ratio(self, lane: int) -> float:
        """The lane's learned share downstream over its share upstream (1 before anything is learned: a prior
        of two vehicles a lane at each station)."""
        up_total, down_total = sum(self.seen_up) + 2 * self.lanes, sum(self.seen_down) + 2 * self.lanes
        return ((self.seen_down[lane] + 2) / down_total) / ((self.seen_up[lane] + 2) / up_total)

    def observe(self, ups: list[int], downs: list[int], at: float, t: Thresholds) -> list[int]:
        shortest, longest = t.shift_windows
        self.ups = [*self.ups, ups][-longest - 1:]
        self.downs = [*self.downs, downs][-longest:]
        windows = range(shortest, min(longest, len(self.ups) - 1) + 1)
        found: list[int] = []
        for lane in range(self.lanes):
            least, back = 1.0, False
            for n in windows:
                # Upstream counts one interval earlier than downstream: the travel between the stations.
                up = [sum(row[j] for row in self.ups[-n - 1:-1]) for j in range(self.lanes)]
                down = [sum(row[j] for row in self.downs[-n:]) for j in range(self.lanes)]
                expected = self.ratio(lane) * (up[lane] + 0.5) / (sum(up) + 0.5 * self.lanes)
                expected = min(0.99, max(0.01, expected))
                if sum(down) > 0:
                    least = min(least, at_most(down[lane], sum(down), expected, t.shift_concentration))
                if n == shortest:
                    # Cleared once the lane carries half its expected share again (a lane vehicles habitually
                    # leave clears too, and learns so: while any lane is open the section learns nothing).
                    back = down[lane] >= 0.5 * expected * sum(down)
            blocked = len(windows) > 0 and least * len(windows) < t.shift_p
            if blocked and lane not in self.active:
                self.active[lane] = at
                found.append(lane)
            elif not blocked and back:
                self.active.pop(lane, None)  # the lane carries its share again: the next drop is a new episode
        self.learn(ups, downs, t)
        return found

    def learn(self, ups: list[int], downs: list[int], t: Thresholds) -> None:
        if self.active:
            return  # as for a pair: nothing is learned while a blockage is open
        self.pending.append((ups, downs))
        if len(self.pending) <= t.learn_delay:
            return
        old_up, old_down = self.pending.popleft()
        for lane in range(self.lanes):
            self.seen_up[lane] += old_up[lane]
            self.seen_down[lane] += old_down[lane]
        if sum(self.seen_up) > t.memory_vehicles:
            self.seen_up = [v / 2 for v in self.seen_up]
            self.seen_down = [v / 2 for v in self.seen_down]


@dataclass
class Detection:
    pair: str
    at: float  # time of the interval that confirmed it
    occdf: float
    occrdf: float
    docc: float
    test: str = "occupancy"  # "lane-shift" or "stalled-vehicle": which test declared it (the alarm says why)
    distance_m: float | None = None  # a stalled vehicle's distance to the stop line (zones, `stalls`)
    stood_s: float | None = None  # … and how long it had stood


@dataclass
class AccidentDetector:
    """Runs the comparative tests on every station pair, one interval at a time."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    states: dict[str, PairState] = field(default_factory=dict)
    shifts: dict[str, ShiftState] = field(default_factory=dict)

    def observe(self, pair: str, up: StationReading, down: StationReading, at: float, *,
                all_lanes: bool = False) -> Detection | None:
        """Feed one interval of a pair; returns a Detection when an incident is declared (once per episode).
        `all_lanes`: the pair's stations count every lane of the road (not one lane)."""
        check_station(up)
        check_station(down)
        t = self.thresholds
        state = self.states.setdefault(pair, PairState())
        occdf = up.occupancy - down.occupancy
        occrdf = occdf / up.occupancy if up.occupancy > 0 else 0.0
        slow = up.vehicles == 0 or up.speed <= t.upstream_speed_m_s
        queued = occdf >= t.occdf and occrdf >= t.occrdf and down.occupancy <= t.docc and slow
        cut = self.flow_cut(state, up, down, all_lanes) if t.flow_scaled else self.fixed_cut(state, up, down)
        state.learn(up.vehicles, down.vehicles, t)
        state.tentative = state.tentative + 1 if queued else 0
        if not (queued or cut):
            if state.active_since is not None and occdf < t.occdf / 2 and down.vehicles > 0:
                state.active_since = None  # cleared: the next blockage is a new incident
            return None
        if state.active_since is None and (state.tentative >= t.persistence or cut):
            state.active_since = at
            return Detection(pair, at, round(occdf, 3), round(occrdf, 3), round(down.occupancy, 3))
        return None

    def flow_cut(self, state: PairState, up: StationReading, down: StationReading, all_lanes: bool) -> bool:
        """Vehicle conservation: none of the vehicles expected downstream came, and none stands there."""
        t = self.thresholds
        state.up_counts = [*state.up_counts, up.vehicles][-t.max_silence:]
        empty = down.vehicles == 0 and down.occupancy <= t.docc
        state.silence = state.silence + 1 if empty else 0
        n = min(state.silence, t.max_silence)
        if n < t.min_silence:
            return False
        # The vehicles that passed upstream since the downstream loop fell silent, but for the last interval's
        # (they may still be on their way): each should have passed downstream unless it left the lane.
        vehicles = sum(state.up_counts[-n:-1])
        return state.none_arrive(vehicles, t) < (t.all_lanes_false_alarm_p if all_lanes else t.false_alarm_p)

    def fixed_cut(self, state: PairState, up: StationReading, down: StationReading) -> bool:
        """The earlier rule: no vehicle downstream for a fixed window after a few upstream."""
        t = self.thresholds
        state.up_counts = [*state.up_counts, up.vehicles][-t.interrupted_window - 1:]
        state.down_counts = [*state.down_counts, down.vehicles][-t.interrupted_window:]
        return (len(state.down_counts) == t.interrupted_window and sum(state.down_counts) == 0
                and sum(state.up_counts[:-1]) >= t.interrupted_upstream)

    def observe_lanes(self, pair: str, ups: list[StationReading], downs: list[StationReading],
                      at: float) -> list[int]:
        """Feed one interval of a station pair read lane by lane (`ups[i]` and `downs[i]`: lane i's loops);
        returns the lanes declared blocked by the lane-shift test in this interval (once per episode)."""
        for reading in (*ups, *downs):
            check_station(reading)
        if len(ups) != len(downs):
            raise ReadingError("both stations must read the same lanes")
        if self.thresholds.shift_p <= 0 or len(ups) < 2:
            return []  # one lane: nothing to shift to
        state = self.shifts.get(pair)
        if state is None or state.lanes != len(ups):
            state = self.shifts[pair] = ShiftState(len(ups))
        return state.observe([u.vehicles for u in ups], [d.vehicles for d in downs], at, self.thresholds)

    def active(self) -> dict[str, float]:
        return {pair: s.active_since for pair, s in self.states.items() if s.active_since is not None}


def alarm_event(tenant: str, detection: Detection, when: datetime, *, location: dict[str, Any] | None = None,
                entity_id: str | None = None) -> dict[str, Any]:
    """The `ops.alarm.raised` payload for a detection: the incident domain opens a `traffic.accident`."""
    stamp = local_time(when, "%Y-%m-%d %H:%M:%S")  # the city's zone, as operators read it
    if detection.test == "lane-shift":
        message = (f"疑似交通事故 Suspected accident on {detection.pair} at {stamp}: traffic leaves the lane "
                   f"(its share of the vehicles downstream fell: they pass in the next lane)")
    elif detection.test == "stalled-vehicle":
        message = (f"疑似交通事故 Suspected accident on {detection.pair} at {stamp}: a vehicle has stood "
                   f"{detection.stood_s:.0f} s, {detection.distance_m:.0f} m before the stop line, with the lane "
                   f"ahead of it clear")
    else:
        message = (f"疑似交通事故 Suspected accident on {detection.pair} at {stamp}: upstream occupancy exceeds "
                   f"downstream by {detection.occdf:.0%}, downstream {detection.docc:.0%}")
    # The id names the place, not the moment: while its incident is open, a repeated detection there (a
    # restart that forgot the detector's state, a replayed reading) folds into it: one incident per episode.
    return {"tenant": tenant, "alarm": {
        "id": f"traffic-accident:{detection.pair}"[:200], "ruleId": "traffic.accident-detection",
        "severity": "major", "message": message, "entityId": entity_id, "location": location,
        "department": "transport", "category": "traffic",
        "incident": {"category": "traffic.accident", "level": "general"}}}
