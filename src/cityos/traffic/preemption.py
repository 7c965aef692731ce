"""Emergency vehicle pre-emption (应急车辆绿波、优先通行).

An emergency vehicle's route (the edges from the station to the incident) crosses signalised
intersections. For each, the green phase that serves the route's movement (its incoming edge to its
outgoing edge) is found in the signal plan. While the vehicle approaches, a signal whose stop line it
would reach within `lead_s` seconds is asked for that phase every second; once the vehicle has passed
the junction the signal's own controller takes over again (restored).

The request goes through the same safety layer as any phase command (`SignalSupervisor.command` in
the simulator, `TrafficService.command_phase` in the platform): minimum green, yellow and all-red are
still served, so pre-emption cannot show conflicting greens or cut a pedestrian crossing short. The
lead time covers that: yellow + all-red + a minimum green + the queue ahead discharging.

In the simulator (and through the platform, `TrafficService.preempt`, from the signal's stored state and its
detectors' latest readings, the fixed `LEAD_S` only without one) the lead is not fixed: as real "clear ahead"
pre-emption does, each signal's green
starts early enough for the route's phase to come up through its clearances (`seconds_to_green`) and for
the queue standing on the route's lanes ahead of the vehicle to discharge at saturation flow
(`clear_ahead_lead`), with the vehicle's arrival timed at its desired speed. Every signal on the route
is timed that way as the vehicle moves, so the greens open one after another ahead of it (a green wave),
each held until the vehicle has passed and then handed back to the signal's own controller.

Three rules came from per-second traces of the RESCO real-city runs: the route's phase is the one serving whole the
lanes the vehicle queues on (a lane empties in file: every link leaving it must be green, `phase_serving`); a route
ending at a signalised junction asks that signal for the phase discharging its last road (`phase_discharging`: the
queue there stands between the vehicle and its destination); and a green its maximum would end before the vehicle
arrives is ended early and brought back in time (`early_cycle`) instead of being held to be lost at arrival.

`SumoGreenWaves` dispatches emergency vehicles into a running SUMO scenario and, when enabled,
pre-empts their routes; the emergency benchmark runs the same dispatches with and without it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityos.traffic.signals import Movement, SignalSupervisor

LEAD_S = 25.0  # ask for green when the vehicle is this many seconds from the stop line
APPROACH_SPEED_M_S = 10.0  # ETA speed floor: a vehicle stuck in a queue is still on its way
EMERGENCY_TYPE = "cityos-emergency"
EMERGENCY_MAX_SPEED_M_S = 25.0
EMERGENCY_SPEED_FACTOR = 1.2
# Clear ahead: a queue discharges at saturation flow, ~1,800 vehicles an hour a lane (HCM), after the
# start-up lost time of the first vehicles; the margin absorbs the error of the arrival estimate.
SATURATION_HEADWAY_S = 2.0
STARTUP_LOST_S = 2.0
CLEAR_MARGIN_S = 3.0
# Never later than a detection range would trigger (~300 m at urban emergency speeds): vehicles ahead that
# cannot leave (their exit blocked by spillback) are not a queue the approach lanes show; measured on
# the RESCO arterial, a flat 20 s lead without the queue term left one emergency vehicle stuck for good.
MIN_LEAD_S = 20.0
MAX_DISCHARGE_S = 45.0  # a hold longer than this would meet the phase's maximum green (60 s) before arrival
LOOK_AHEAD_S = 120.0  # signals further than this are not measured yet
# An emergency vehicle standing this long while its phase is green is held up by something that phase does not
# serve: on real networks (RESCO Cologne), a vehicle ahead of it that must change to a lane the phase leaves red.
# The signal then shows the phase that serves the whole approach too (`RouteSignal.flush_phase`).
BLOCKED_AT_GREEN_S = 10.0


@dataclass(frozen=True)
class RouteSignal:
    """A signal on an emergency route: the phase serving the route's movement through it."""

    tls: str
    phase: int
    edge_index: int  # the route's edge that arrives at the junction
    stop_at: float  # metres along the route to the stop line
    lanes: tuple[str, ...] = ()  # the incoming lanes whose links serve the route's movement
    flush_phase: int | None = None  # serves the movement and most of the approach (None: `phase` does)


def _best_phase(movements: Sequence[Sequence[Movement]],
                score: Callable[[Sequence[Movement]], tuple[int, ...] | None]) -> int | None:
    """The phase scoring highest (the first of equals); None when no phase scores."""
    best: tuple[int, ...] | None = None
    for index, moves in enumerate(movements):
        scored = score(moves)
        if scored is not None and (best is None or (*scored, -index) > best):
            best = (*scored, -index)
    return None if best is None else -best[-1]


def _along(moves: Sequence[Movement], in_edge: str, out_edge: str) -> list[Movement]:
    return [m for m in moves if lane_edge(m.in_lane) == in_edge and lane_edge(m.out_lane) == out_edge]


def _lane_links(movements: Sequence[Sequence[Movement]]) -> dict[str, set[int]]:
    """{incoming lane: every signal link leaving it, in any phase}."""
    out: dict[str, set[int]] = {}
    for moves in movements:
        for m in moves:
            out.setdefault(m.in_lane, set()).add(m.link)
    return out


def _whole_lanes(moves: Sequence[Movement], lanes: set[str], lane_links: Mapping[str, set[int]]) -> int:
    """How many of `lanes` the phase `moves` serves whole (every link leaving the lane green): a lane is a queue in
    file, so the vehicles ahead of an emergency vehicle on it leave only if each of their links is green too."""
    green = {m.link for m in moves}
    return sum(lane_links.get(lane, set()) <= green for lane in lanes)


def phase_serving(movements: Sequence[Sequence[Movement]], in_edge: str, out_edge: str) -> int | None:
    """The green phase serving the movement from `in_edge` to `out_edge` best: the one serving whole most of the
    lanes the movement leaves from (RESCO Cologne's phases split a lane's links: a vehicle ahead turning where the
    phase shows red held the emergency vehicle at its own green), then the one with most protected links of the
    movement, then most links of it."""
    lane_links = _lane_links(movements)

    def score(moves: Sequence[Movement]) -> tuple[int, int, int] | None:
        links = _along(moves, in_edge, out_edge)
        if not links:
            return None
        whole = _whole_lanes(moves, {m.in_lane for m in links}, lane_links)
        return whole, sum(m.protected for m in links), len(links)
    return _best_phase(movements, score)


def phase_discharging(movements: Sequence[Sequence[Movement]], in_edge: str) -> int | None:
    """The green phase discharging the approach `in_edge` best (most of its lanes whole, then most of its links,
    then most protected): for a route ending at the junction, the queue standing between the vehicle and it."""
    lane_links = _lane_links(movements)
    lanes = {lane for lane in lane_links if lane_edge(lane) == in_edge}

    def score(moves: Sequence[Movement]) -> tuple[int, int, int] | None:
        links = [m for m in moves if m.in_lane in lanes]
        if not links:
            return None
        return _whole_lanes(moves, lanes, lane_links), len(links), sum(m.protected for m in links)
    return _best_phase(movements, score)


def phase_flushing(movements: Sequence[Sequence[Movement]], in_edge: str, out_edge: str) -> int | None:
    """Of the phases serving the movement from `in_edge` to `out_edge`, the one serving most of the approach's
    links (every lane of `in_edge`): it lets the vehicles queued ahead of an emergency vehicle leave whichever
    way they turn."""
    def score(moves: Sequence[Movement]) -> tuple[int, int] | None:
        if not _along(moves, in_edge, out_edge):
            return None
        return sum(lane_edge(m.in_lane) == in_edge for m in moves), sum(m.protected for m in moves)
    return _best_phase(movements, score)


def lane_edge(lane: str) -> str:
    """The edge of a SUMO lane id (`edge_index`)."""
    return lane.rsplit("_", 1)[0]


def route_signals(edges: Sequence[str], edge_length: Mapping[str, float],
                  movements_by_tls: Mapping[str, Sequence[Sequence[Movement]]]) -> list[RouteSignal]:
    """The signals along a route, in driving order, with the phase each must show."""
    out: list[RouteSignal] = []
    travelled = 0.0
    for index, (in_edge, out_edge) in enumerate(itertools.pairwise(edges)):
        travelled += edge_length.get(in_edge, 0.0)
        for tls, movements in movements_by_tls.items():
            phase = phase_serving(movements, in_edge, out_edge)
            if phase is not None:
                lanes = tuple(dict.fromkeys(m.in_lane for m in _along(movements[phase], in_edge, out_edge)))
                flush = phase_flushing(movements, in_edge, out_edge)
                out.append(RouteSignal(tls, phase, index, travelled, lanes, None if flush == phase else flush))
                break
    if edges:  # the destination: the junction the route ends at, whose queue stands between the vehicle and it
        last = edges[-1]
        travelled += edge_length.get(last, 0.0)
        for tls, movements in movements_by_tls.items():
            phase = phase_discharging(movements, last)
            if phase is not None:
                lanes = tuple(dict.fromkeys(m.in_lane for m in movements[phase] if lane_edge(m.in_lane) == last))
                out.append(RouteSignal(tls, phase, len(edges) - 1, travelled, lanes))
                break
    return out


@dataclass
class GreenWave:
    """One emergency vehicle's pre-emption: which signals to ask for which phase, given its progress."""

    vehicle: str
    signals: list[RouteSignal]
    lead_s: float = LEAD_S
    served: set[str] = field(default_factory=set)  # signals pre-empted at least once
    flushing: set[str] = field(default_factory=set)  # signals asked for their flush phase (vehicle held at green)

    def requests(self, edge_index: int, travelled: float, speed: float, cruise: float = APPROACH_SPEED_M_S,
                 lead_of: Callable[[RouteSignal, float], float] | None = None,
                 shown: Callable[[str], SignalSupervisor | None] | None = None,
                 now: float = 0.0) -> dict[str, tuple[int, float]]:
        """{signal: (phase, eta seconds)} for the signals ahead that the vehicle reaches within the lead.

        The arrival is timed at the faster of the vehicle's speed and `cruise` (its desired speed: a
        vehicle slowed by a queue that is being cleared speeds up again). `lead_of(signal, eta)` gives a
        signal's own lead (clear ahead); without it every signal has the fixed `lead_s`. `shown(signal)`, the
        signal's state at `now`, lets a green that its maximum would end before the arrival be cycled early
        (`early_cycle`).
        """
        out: dict[str, tuple[int, float]] = {}
        pace = max(speed, cruise, 1.0)
        for signal in self.signals:
            if signal.edge_index < edge_index:  # passed: its controller is back in charge
                continue
            if signal.tls in out:
                # One signal controlling a cluster of junctions (real networks) is crossed twice, with another
                # phase the second time: the nearest crossing is the one to serve now.
                continue
            eta = max(0.0, signal.stop_at - travelled) / pace
            lead = self.lead_s if lead_of is None or eta > LOOK_AHEAD_S else lead_of(signal, eta)
            if eta <= lead:
                flush = signal.flush_phase if signal.tls in self.flushing else None
                phase = signal.phase if flush is None else flush
                cycle = early_cycle(shown(signal.tls), phase, eta, now) if shown is not None else None
                out[signal.tls] = (phase if cycle is None else cycle, eta)
        return out

    def held_up(self, signal: RouteSignal, shown: SignalSupervisor | None, stood_s: float) -> None:
        """The vehicle has stood `stood_s` while `signal` shows `shown`: held up at its own green by something that
        phase does not serve, it gets the signal's flush phase from now on (the simulator and the platform alike)."""
        if (signal.flush_phase is not None and shown is not None and shown.stage == "green"
                and shown.phase == signal.phase and stood_s >= BLOCKED_AT_GREEN_S):
            self.flushing.add(signal.tls)


def early_cycle(supervisor: SignalSupervisor | None, phase: int, eta: float, now: float) -> int | None:
    """The phase to ask instead of `phase` now, or None: `phase` itself.

    A green held from its start until the vehicle arrives `eta` seconds from `now` is cut by its maximum green
    first when the two add up to more: the safety layer then forces the next phase, and the vehicle meets its
    minimum green and clearances at red (traced on RESCO Ingolstadt: clear ahead holds a green up to ~70 s ahead,
    and two vehicles in turn hold it longer). Such a green is ended now instead, for the other phase with the
    shortest minimum green, when `phase` can come back through it before the arrival; held otherwise.
    """
    if supervisor is None or supervisor.stage != "green" or supervisor.phase != phase:
        return None
    plan = supervisor.plan
    if now - supervisor.stage_start + eta < plan.phases[phase].max_green:
        return None
    others = [(p.earliest_end, index) for index, p in enumerate(plan.phases) if index != phase]
    if not others:
        return None
    shortest, other = min(others)
    if eta < 2 * (plan.yellow + plan.all_red) + shortest + CLEAR_MARGIN_S:
        return None
    return other


def clear_ahead_lead(queue_ahead: float, to_green: float) -> float:
    """Seconds before the vehicle's arrival to ask for its phase: the time for the phase to come up
    through the clearances, then for the `queue_ahead` vehicles to discharge at saturation flow (at
    least `MIN_LEAD_S`)."""
    discharge = STARTUP_LOST_S + max(0.0, queue_ahead) * SATURATION_HEADWAY_S if queue_ahead > 0 else 0.0
    return max(MIN_LEAD_S, max(0.0, to_green) + min(discharge, MAX_DISCHARGE_S) + CLEAR_MARGIN_S)


def seconds_to_green(supervisor: SignalSupervisor, phase: int, now: float) -> float:
    """How long, at the earliest, until the supervisor shows `phase` green if asked now.

    Served minimum green, yellow and all-red count as the safety layer applies them. A signal already
    showing the phase counts as if its controller were to leave it now (a clearance, the next phase's
    minimum green, a clearance back): asked that early, the green is held instead of lost and regained.
    """
    plan = supervisor.plan
    clearance = plan.yellow + plan.all_red
    elapsed = now - supervisor.stage_start
    if supervisor.stage == "green":
        if supervisor.phase == phase:
            others = [p.earliest_end for i, p in enumerate(plan.phases) if i != phase]
            return 2 * clearance + min(others, default=0.0)
        return max(0.0, plan.phases[supervisor.phase].earliest_end - elapsed) + clearance
    left = clearance - elapsed if supervisor.stage == "yellow" else plan.all_red - elapsed
    if supervisor.target == phase:
        return max(0.0, left)
    return max(0.0, left) + plan.phases[supervisor.target].earliest_end + clearance


def merge_requests(waves: Sequence[dict[str, tuple[int, float]]]) -> dict[str, int]:
    """Several vehicles asking the same signal: the one arriving first wins."""
    best: dict[str, tuple[float, int]] = {}
    for wave in waves:
        for tls, (phase, eta) in wave.items():
            if tls not in best or eta < best[tls][0]:
                best[tls] = (eta, phase)
    return {tls: phase for tls, (_eta, phase) in best.items()}


@dataclass(frozen=True)
class Dispatch:
    vehicle: str
    depart: float
    origin: str
    destination: str


@dataclass
class SumoGreenWaves:
    """A `before_tick` hook for `run_scenario`: dispatches emergency vehicles and pre-empts their routes.

    `lead_s` None (the default) times each signal by clear ahead (its clearances and the queue measured
    on the route's lanes ahead of the vehicle); a number asks every signal that many seconds ahead.
    `yielding` gives the emergency vehicles SUMO's bluelight device (other traffic moves aside, a rescue
    lane forms); it changes the vehicles, not the signals, so a fair comparison sets it on both runs.
    """

    net: Path
    dispatches: list[Dispatch]
    enabled: bool = True
    lead_s: float | None = None
    yielding: bool = False
    waves: dict[str, GreenWave] = field(default_factory=dict)
    preempted: int = 0  # signal-seconds under pre-emption
    _movements: dict[str, tuple[tuple[Movement, ...], ...]] | None = None
    _lengths: dict[str, float] | None = None
    _pending: list[Dispatch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pending = sorted(self.dispatches, key=lambda d: d.depart)

    def _prepare(self, sim: Any) -> None:
        from cityos.traffic.sumo import intersections_of, plans_from_net

        self._movements = {x.tls: x.movements
                           for x in intersections_of(sim, plans_from_net(self.net), every_connection=True)}
        self._lengths = {e: float(sim.lane.getLength(f"{e}_0")) for e in sim.edge.getIDList() if not e.startswith(":")}
        sim.vehicletype.copy("DEFAULT_VEHTYPE", EMERGENCY_TYPE)
        sim.vehicletype.setVehicleClass(EMERGENCY_TYPE, "emergency")
        sim.vehicletype.setColor(EMERGENCY_TYPE, (255, 0, 0, 255))
        sim.vehicletype.setMaxSpeed(EMERGENCY_TYPE, EMERGENCY_MAX_SPEED_M_S)
        sim.vehicletype.setSpeedFactor(EMERGENCY_TYPE, EMERGENCY_SPEED_FACTOR)  # drives above the limit, as allowed
        if self.yielding:
            sim.vehicletype.setParameter(EMERGENCY_TYPE, "has.bluelight.device", "true")

    def _insert(self, sim: Any, dispatch: Dispatch) -> None:
        assert self._movements is not None and self._lengths is not None
        found = sim.simulation.findRoute(dispatch.origin, dispatch.destination, vType=EMERGENCY_TYPE)
        edges = list(found.edges)
        if len(edges) < 2:
            return
        route_id = f"route-{dispatch.vehicle}"
        sim.route.add(route_id, edges)
        sim.vehicle.add(dispatch.vehicle, route_id, typeID=EMERGENCY_TYPE, depart="now", departLane="best",
                        departSpeed="max")
        self.waves[dispatch.vehicle] = GreenWave(dispatch.vehicle, route_signals(edges, self._lengths,
                                                                                  self._movements),
                                                 LEAD_S if self.lead_s is None else self.lead_s)

    def _queue_ahead(self, sim: Any, vehicle: str, signal: RouteSignal, edge_index: int) -> float:
        """Vehicles that must cross `signal`'s stop line before the emergency vehicle: those ahead of it
        on its lane once it is on the approach, else the fullest of the lanes serving its movement.
        Moving ones count too: in a dense platoon they are a queue that has not stopped yet."""
        if signal.edge_index == edge_index and not sim.vehicle.getRoadID(vehicle).startswith(":"):
            position = float(sim.vehicle.getLanePosition(vehicle))
            return float(sum(v != vehicle and float(sim.vehicle.getLanePosition(v)) > position
                             for v in sim.lane.getLastStepVehicleIDs(sim.vehicle.getLaneID(vehicle))))
        return float(max((sim.lane.getLastStepVehicleNumber(lane) for lane in signal.lanes), default=0))

    def _clear_ahead(self, sim: Any, vehicle: str, edge_index: int, now: float,
                     supervisors: Mapping[str, SignalSupervisor]) -> Callable[[RouteSignal, float], float]:
        """The clear-ahead lead of each signal ahead of `vehicle`, from the signal's state and its queue."""
        def lead_of(signal: RouteSignal, _eta: float) -> float:
            supervisor = supervisors.get(signal.tls)
            to_green = seconds_to_green(supervisor, signal.phase, now) if supervisor else 0.0
            return clear_ahead_lead(self._queue_ahead(sim, vehicle, signal, edge_index), to_green)
        return lead_of

    @staticmethod
    def _held_at_green(sim: Any, vehicle: str, wave: GreenWave, edge_index: int,
                       supervisors: Mapping[str, SignalSupervisor]) -> None:
        """The vehicle stands while the next signal shows its phase: from now on that signal flushes the
        approach (the request takes effect from the next second)."""
        # Asking the next signal early as well when even the flush does not move the vehicle (the exit blocked by
        # the next signal's queue) was tried: on RESCO Ingolstadt 21 it doubled the others' delay for nothing.
        ahead = next((s for s in wave.signals if s.edge_index >= edge_index), None)
        if ahead is not None and ahead.flush_phase is not None and ahead.tls not in wave.flushing:
            wave.held_up(ahead, supervisors.get(ahead.tls), float(sim.vehicle.getWaitingTime(vehicle)))

    def __call__(self, sim: Any, now: float, supervisors: Mapping[str, SignalSupervisor]) -> None:
        if self._movements is None:
            self._prepare(sim)
        while self._pending and self._pending[0].depart <= now:
            self._insert(sim, self._pending.pop(0))
        if not self.enabled:
            return
        active = set(sim.vehicle.getIDList())
        requests = []
        for vehicle, wave in self.waves.items():
            if vehicle not in active:
                continue
            index = int(sim.vehicle.getRouteIndex(vehicle))
            lengths = self._lengths or {}
            route = sim.vehicle.getRoute(vehicle)
            travelled = sum(lengths.get(e, 0.0) for e in route[:index]) + float(sim.vehicle.getLanePosition(vehicle))
            if sim.vehicle.getRoadID(vehicle).startswith(":"):  # inside a junction: just past the stop line
                travelled = sum(lengths.get(e, 0.0) for e in route[:index + 1])
                index += 1
            cruise = min(EMERGENCY_MAX_SPEED_M_S,
                         float(sim.vehicle.getAllowedSpeed(vehicle)) * float(sim.vehicle.getSpeedFactor(vehicle)))
            if self.lead_s is None:
                wanted = wave.requests(index, travelled, float(sim.vehicle.getSpeed(vehicle)), cruise,
                                       self._clear_ahead(sim, vehicle, index, now, supervisors),
                                       supervisors.get, now)
            else:
                wanted = wave.requests(index, travelled, float(sim.vehicle.getSpeed(vehicle)))
            self._held_at_green(sim, vehicle, wave, index, supervisors)
            wave.served.update(wanted)
            requests.append(wanted)
        for tls, phase in merge_requests(requests).items():
            supervisor = supervisors.get(tls)
            if supervisor is not None:
                supervisor.command(phase)
                self.preempted += 1
