"""Signal plans and the platform's safety layer (信号安全层).

A signal plan lists an intersection's green phases as SUMO-style link state strings (one character
per controlled link: `G` protected green, `g` permissive green that yields, `r` red) with their
minimum and maximum green, the pedestrian minimum (walk + clearance) where a phase serves a crossing,
and the intersection's yellow and all-red times. A plan is checked against the intersection's
conflict matrix when it is registered: no phase may show protected green to two conflicting links.

The `SignalSupervisor` is the only thing that decides what the lamps show. A controller only asks for
a green phase by index; the supervisor holds the current phase until its minimum green (and
pedestrian minimum) has passed, ends it at its maximum green, and always inserts yellow and then
all-red before the next green, keeping green only the links that are green on both sides of the
change. A controller that raises or answers nonsense is replaced by the fixed-time fallback for that
intersection, and the event is counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("cityos.traffic.signals")

GREEN_CHARS = frozenset("Gg")
STATE_CHARS = frozenset("GgrRyYosuO")
MAX_LINKS = 256
MAX_PHASES = 16


class PlanError(ValueError):
    """A signal plan or a phase command that the safety rules refuse."""


@dataclass(frozen=True)
class Phase:
    state: str  # one character per controlled link
    min_green: float = 5.0
    max_green: float = 60.0
    pedestrian_min: float = 0.0  # walk + flashing don't-walk for a crossing served by this phase
    fixed_green: float = 30.0  # duration in the fixed-time plan (the fallback)

    @property
    def earliest_end(self) -> float:
        return max(self.min_green, self.pedestrian_min)

    def green_links(self) -> frozenset[int]:
        return frozenset(i for i, c in enumerate(self.state) if c in GREEN_CHARS)


@dataclass(frozen=True)
class SignalPlan:
    phases: tuple[Phase, ...]
    yellow: float = 3.0
    all_red: float = 2.0
    conflicts: frozenset[tuple[int, int]] = frozenset()  # pairs (i < j) of links that must never be green together
    offset: float = 0.0  # start of the fixed-time cycle, for coordination along an arterial

    @property
    def links(self) -> int:
        return len(self.phases[0].state) if self.phases else 0

    @property
    def cycle(self) -> float:
        return sum(p.fixed_green + self.yellow + self.all_red for p in self.phases)


def validate_plan(plan: SignalPlan) -> None:
    """Refuse a plan the lamps could not safely show; the message says what is wrong."""
    if not 1 <= len(plan.phases) <= MAX_PHASES:
        raise PlanError(f"a plan needs 1 to {MAX_PHASES} green phases, got {len(plan.phases)}")
    width = plan.links
    if not 1 <= width <= MAX_LINKS:
        raise PlanError(f"a phase state needs 1 to {MAX_LINKS} links, got {width}")
    for name, value in (("yellow", plan.yellow), ("all_red", plan.all_red), ("offset", plan.offset)):
        if not math.isfinite(value) or value < 0:
            raise PlanError(f"{name} must be a finite number ≥ 0")
    if plan.yellow < 2.0:
        raise PlanError("yellow must last at least 2 s")
    for i, phase in enumerate(plan.phases):
        if len(phase.state) != width:
            raise PlanError(f"phase {i} has {len(phase.state)} links, phase 0 has {width}")
        bad = set(phase.state) - STATE_CHARS
        if bad or set(phase.state) & set("yYuoO"):
            raise PlanError(f"phase {i} is not a green phase state: {phase.state!r}")
        if not phase.green_links():
            raise PlanError(f"phase {i} shows no green")
        for name, value in (("min_green", phase.min_green), ("max_green", phase.max_green),
                            ("pedestrian_min", phase.pedestrian_min), ("fixed_green", phase.fixed_green)):
            if not math.isfinite(value) or value < 0:
                raise PlanError(f"phase {i}: {name} must be a finite number ≥ 0")
        if phase.min_green < 1.0:
            raise PlanError(f"phase {i}: min_green must be at least 1 s")
        if phase.max_green < phase.earliest_end:
            raise PlanError(f"phase {i}: max_green is shorter than its minimum green or pedestrian minimum")
        if not phase.earliest_end <= phase.fixed_green <= phase.max_green:
            raise PlanError(f"phase {i}: fixed_green must lie between its minimum and maximum green")
        protected = [k for k, c in enumerate(phase.state) if c == "G"]
        greens = phase.green_links()
        for a, b in plan.conflicts:
            # A permissive green (g) yields by law; two protected greens, or a protected green and any
            # green on a conflicting link that may not yield, are never shown together.
            if a in greens and b in greens and (a in protected and b in protected):
                raise PlanError(f"phase {i} shows conflicting greens on links {a} and {b}")
    for a, b in plan.conflicts:
        if not (0 <= a < width and 0 <= b < width):
            raise PlanError(f"conflict ({a}, {b}) names a link outside the plan")


def transition_states(old: str, new: str) -> tuple[str, str]:
    """The yellow and all-red states between two greens: links green in both stay green, others clear."""
    yellow = "".join(o if (o in GREEN_CHARS and n in GREEN_CHARS) else ("y" if o in GREEN_CHARS else "r")
                     for o, n in zip(old, new, strict=True))
    all_red = "".join(o if (o in GREEN_CHARS and n in GREEN_CHARS) else "r" for o, n in zip(old, new, strict=True))
    return yellow, all_red


@dataclass
class View:
    """What a controller sees of one intersection at a decision time."""

    now: float
    phase: int  # the green phase now shown, or the one the change leads to
    green_elapsed: float  # seconds the current green has shown (0 during a change)
    lanes: Mapping[str, LaneReading]
    movements: tuple[tuple[Movement, ...], ...]  # per phase: the links it serves
    # Per incoming lane, where the intersection has them: the stop-line and approach detectors (empty
    # when only the whole-lane detectors report, as through the API).
    approaches: Mapping[str, ApproachReading] = field(default_factory=dict)


@dataclass(frozen=True)
class Movement:
    link: int
    in_lane: str
    out_lane: str
    protected: bool


@dataclass(frozen=True)
class LaneReading:
    """One lane-area detector's reading (SUMO E2-like): all finite, counts ≥ 0, occupancy in [0, 1]."""

    vehicles: float = 0.0  # vehicles on the detector
    halting: float = 0.0  # of which stopped (speed < 0.1 m/s)
    mean_speed: float = 0.0  # m/s
    occupancy: float = 0.0  # share of the lane length covered by vehicles
    waiting: float = 0.0  # accumulated waiting seconds of the vehicles on it
    length: float = 100.0  # detector length, m
    entered: float = 0.0  # vehicles that entered since the previous reading (for flow)


@dataclass(frozen=True)
class ApproachReading:
    """An incoming lane's stop-line and approach detectors, beside its whole-lane detector.

    - `stopline`: vehicles on a short detector just before the stop line (the gap detector of actuated
      control): what a green can still serve in the next seconds;
    - `vehicles`, `halting`, `waiting`: a detector over the whole approach, the lane and, where the lane
      is short, the lanes feeding it up to an approach length (a camera's or a chain of loops' field);
    - `backlog`: vehicles queued upstream of the network's edge, for a lane fed from outside the modelled
      network (an entry detector upstream of the boundary);
    - `arriving`: on a long lane, the vehicles on an advance detector over its last few hundred metres,
      those a green given now would serve (on a 2 km link most of the lane's vehicles are minutes away);
      None where there is no such reading (then `vehicles` stands for it).
    """

    stopline: float = 0.0
    vehicles: float = 0.0
    halting: float = 0.0
    waiting: float = 0.0
    backlog: float = 0.0
    arriving: float | None = None

    @property
    def near(self) -> float:
        """Vehicles a green given now would serve soon: those near the stop line, or the standing queue where
        it reaches back beyond the advance detector, and the entry backlog."""
        if self.arriving is None:
            return self.vehicles + self.backlog
        return max(self.arriving, self.halting) + self.backlog


MAX_SPEED_M_S = 70.0  # 252 km/h: faster is a broken detector


def check_reading(reading: LaneReading) -> LaneReading:
    """Refuse an impossible detector reading (a broken or spoofed detector must not steer a junction)."""
    values = (reading.vehicles, reading.halting, reading.mean_speed, reading.occupancy, reading.waiting,
              reading.length, reading.entered)
    if not all(math.isfinite(v) for v in values):
        raise PlanError("a detector reading must be finite numbers")
    if min(values) < 0:
        raise PlanError("a detector reading cannot be negative")
    if reading.halting > reading.vehicles:
        raise PlanError("more halting vehicles than vehicles")
    if reading.occupancy > 1.0:
        raise PlanError("occupancy is a share in [0, 1]")
    if reading.mean_speed > MAX_SPEED_M_S:
        raise PlanError(f"speed above {MAX_SPEED_M_S} m/s")
    if reading.length <= 0:
        raise PlanError("detector length must be positive")
    return reading


class Controller:
    """A signal controller: asks for a green phase. The supervisor decides whether and when it shows."""

    name = "controller"
    interval = 5.0  # seconds between decisions

    def decide(self, view: View) -> int:
        raise NotImplementedError


class FixedTimeController(Controller):
    """The plan's fixed-time cycle: each phase for its `fixed_green`, in order. Also the fallback."""

    name = "fixed"
    interval = 1.0

    def __init__(self, plan: SignalPlan) -> None:
        self.plan = plan

    def green_of(self, phase: int) -> float:
        return self.plan.phases[phase].fixed_green

    def decide(self, view: View) -> int:
        if view.green_elapsed + 1e-9 < self.green_of(view.phase):
            return view.phase
        return (view.phase + 1) % len(self.plan.phases)


Stage = Literal["green", "yellow", "all_red"]


@dataclass
class SupervisorStats:
    switches: int = 0
    refused: int = 0  # requests the safety rules refused (unknown phase, wrong type)
    failures: int = 0  # controller exceptions
    forced_max_green: int = 0
    fallback_since: float | None = None


@dataclass
class SignalSupervisor:
    """The safety layer of one intersection. `tick(now)` once a second returns the state to show."""

    plan: SignalPlan
    controller: Controller
    view_of: Callable[[float, int, float], View] | None = None
    failure_limit: int = 3  # consecutive controller failures before the fallback takes over for good
    phase: int = 0
    stage: Stage = "green"
    stage_start: float = 0.0
    target: int = 0
    last_decision: float = -math.inf
    pending_command: int | None = None
    stats: SupervisorStats = field(default_factory=SupervisorStats)
    # Set while the controller's inputs are missing or stale (a detector feed lost): the fixed-time plan
    # runs until they are fresh again. Unlike a failing controller, this ends when the data returns.
    inputs_lost_since: float | None = None
    _consecutive_failures: int = 0
    _fallback: FixedTimeController | None = None

    def __post_init__(self) -> None:
        validate_plan(self.plan)
        self.target = self.phase
        self._fallback = FixedTimeController(self.plan)

    @property
    def in_fallback(self) -> bool:
        return self.stats.fallback_since is not None

    def state(self) -> str:
        current = self.plan.phases[self.phase].state
        if self.stage == "green":
            return current
        yellow, all_red = transition_states(current, self.plan.phases[self.target].state)
        return yellow if self.stage == "yellow" else all_red

    def command(self, phase: object) -> int:
        """An operator's or remote controller's phase request; applied at the first safe moment.

        Refused (PlanError) when it is not a phase of the plan. Returns the phase index accepted.
        """
        index = self._valid_phase(phase)
        if index is None:
            self.stats.refused += 1
            raise PlanError(f"phase must be an integer in 0..{len(self.plan.phases) - 1}")
        self.pending_command = index
        return index

    def _valid_phase(self, phase: object) -> int | None:
        if isinstance(phase, bool) or not isinstance(phase, int):
            return None
        return phase if 0 <= phase < len(self.plan.phases) else None

    @property
    def runs_fixed_time(self) -> bool:
        """Whether the fixed-time fallback answers now (a failed controller, or its inputs lost)."""
        return self.in_fallback or self.inputs_lost_since is not None

    def inputs_lost(self, now: float, reason: str) -> None:
        """The controller's detector data is missing or stale: fixed time until `inputs_restored`."""
        if self.inputs_lost_since is None:
            log.warning("signal controller %s has no fresh detector data (%s): fixed-time fallback",
                        self.controller.name, reason)
            self.inputs_lost_since = now

    def inputs_restored(self) -> None:
        self.inputs_lost_since = None

    def fall_back(self, now: float, reason: str) -> None:
        if self.stats.fallback_since is None:
            log.warning("signal controller %s failed (%s): fixed-time fallback", self.controller.name, reason)
            self.stats.fallback_since = now

    def _ask(self, now: float, green_elapsed: float) -> int:
        """The controller's request, or the fallback's when the controller failed."""
        if self.pending_command is not None:
            request, self.pending_command = self.pending_command, None
            return request
        active: Controller = self._fallback if self.runs_fixed_time and self._fallback else self.controller
        if active is self.controller and now - self.last_decision + 1e-9 < self.controller.interval:
            return self.phase
        view = (self.view_of(now, self.phase, green_elapsed) if self.view_of
                else View(now, self.phase, green_elapsed, {}, ()))
        try:
            answer = active.decide(view)
        except Exception as exc:  # any controller fault: count it, and keep the lamps safe
            self.stats.failures += 1
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.failure_limit:
                self.fall_back(now, repr(exc))
            assert self._fallback is not None
            return self._fallback.decide(view)
        if active is self.controller:
            self.last_decision = now
        index = self._valid_phase(answer)
        if index is None:
            self.stats.refused += 1
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.failure_limit:
                self.fall_back(now, f"invalid answer {answer!r}")
            assert self._fallback is not None
            return self._fallback.decide(view)
        if active is self.controller:
            self._consecutive_failures = 0
        return index

    def tick(self, now: float) -> str:
        """Advance to `now` (called once per second) and return the state the lamps show."""
        if self.stage == "yellow" and now - self.stage_start + 1e-9 >= self.plan.yellow:
            self.stage, self.stage_start = "all_red", now
        if self.stage == "all_red" and now - self.stage_start + 1e-9 >= self.plan.all_red:
            self.phase, self.stage, self.stage_start = self.target, "green", now
        if self.stage != "green":
            return self.state()
        elapsed = now - self.stage_start
        phase = self.plan.phases[self.phase]
        if elapsed + 1e-9 < phase.earliest_end:
            return self.state()
        request = self._ask(now, elapsed)
        if elapsed + 1e-9 >= phase.max_green and request == self.phase:
            self.stats.forced_max_green += 1
            request = (self.phase + 1) % len(self.plan.phases)
        if request != self.phase:
            self.target, self.stage, self.stage_start = request, "yellow", now
            self.stats.switches += 1
            if self.plan.yellow == 0:
                self.stage = "all_red"
        return self.state()


def shown_greens_conflict(state: str, conflicts: Sequence[tuple[int, int]] | frozenset[tuple[int, int]]) -> bool:
    """Whether a shown state has protected green on two conflicting links (used by the tests)."""
    return any(state[a] == "G" and state[b] == "G" for a, b in conflicts)
