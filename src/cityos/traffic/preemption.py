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

`SumoGreenWaves` dispatches emergency vehicles into a running SUMO scenario and, when enabled,
pre-empts their routes; the emergency benchmark runs the same dispatches with and without it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityos.traffic.signals import Movement, SignalSupervisor

LEAD_S = 25.0  # ask for green when the vehicle is this many seconds from the stop line
APPROACH_SPEED_M_S = 10.0  # ETA speed floor: a vehicle stuck in a queue is still on its way
EMERGENCY_TYPE = "cityos-emergency"


@dataclass(frozen=True)
class RouteSignal:
    """A signal on an emergency route: the phase serving the route's movement through it."""

    tls: str
    phase: int
    edge_index: int  # the route's edge that arrives at the junction
    stop_at: float  # metres along the route to the stop line


def phase_serving(movements: Sequence[Sequence[Movement]], in_edge: str, out_edge: str) -> int | None:
    """The green phase with most links from `in_edge` to `out_edge` (protected links count first)."""
    best: tuple[int, int, int] | None = None
    for index, moves in enumerate(movements):
        links = [m for m in moves if lane_edge(m.in_lane) == in_edge and lane_edge(m.out_lane) == out_edge]
        if not links:
            continue
        key = (sum(m.protected for m in links), len(links), -index)
        if best is None or key > best:
            best = key
    return None if best is None else -best[2]


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
                out.append(RouteSignal(tls, phase, index, travelled))
                break
    return out


@dataclass
class GreenWave:
    """One emergency vehicle's pre-emption: which signals to ask for which phase, given its progress."""

    vehicle: str
    signals: list[RouteSignal]
    lead_s: float = LEAD_S
    served: set[str] = field(default_factory=set)  # signals pre-empted at least once

    def requests(self, edge_index: int, travelled: float, speed: float) -> dict[str, tuple[int, float]]:
        """{signal: (phase, eta seconds)} for the signals ahead that the vehicle reaches within the lead."""
        out: dict[str, tuple[int, float]] = {}
        pace = max(speed, APPROACH_SPEED_M_S)
        for signal in self.signals:
            if signal.edge_index < edge_index:  # passed: its controller is back in charge
                continue
            eta = max(0.0, signal.stop_at - travelled) / pace
            if eta <= self.lead_s:
                out[signal.tls] = (signal.phase, eta)
        return out


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
    """A `before_tick` hook for `run_scenario`: dispatches emergency vehicles and pre-empts their routes."""

    net: Path
    dispatches: list[Dispatch]
    enabled: bool = True
    lead_s: float = LEAD_S
    waves: dict[str, GreenWave] = field(default_factory=dict)
    preempted: int = 0  # signal-seconds under pre-emption
    _movements: dict[str, tuple[tuple[Movement, ...], ...]] | None = None
    _lengths: dict[str, float] | None = None
    _pending: list[Dispatch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pending = sorted(self.dispatches, key=lambda d: d.depart)

    def _prepare(self, sim: Any) -> None:
        from cityos.traffic.sumo import intersections_of, plans_from_net

        self._movements = {x.tls: x.movements for x in intersections_of(sim, plans_from_net(self.net))}
        self._lengths = {e: float(sim.lane.getLength(f"{e}_0")) for e in sim.edge.getIDList() if not e.startswith(":")}
        sim.vehicletype.copy("DEFAULT_VEHTYPE", EMERGENCY_TYPE)
        sim.vehicletype.setVehicleClass(EMERGENCY_TYPE, "emergency")
        sim.vehicletype.setColor(EMERGENCY_TYPE, (255, 0, 0, 255))
        sim.vehicletype.setMaxSpeed(EMERGENCY_TYPE, 25.0)
        sim.vehicletype.setSpeedFactor(EMERGENCY_TYPE, 1.2)  # drives above the limit, as allowed

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
                                                                                  self._movements), self.lead_s)

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
            wanted = wave.requests(index, travelled, float(sim.vehicle.getSpeed(vehicle)))
            wave.served.update(wanted)
            requests.append(wanted)
        for tls, phase in merge_requests(requests).items():
            supervisor = supervisors.get(tls)
            if supervisor is not None:
                supervisor.command(phase)
                self.preempted += 1
