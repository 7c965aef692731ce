"""Eclipse SUMO, in process (libsumo): scenarios, signal plans read from a network, and a run harness.

The harness drives every signalised intersection through the platform's `SignalSupervisor` with the
same controller code the platform runs, reads lane-area detector values (whole-lane E2 detectors, read
through libsumo) for the controllers, plus per incoming lane a stop-line detector, an approach detector
over short lanes' feeding lanes and, at the network's boundary, an entry detector (SUMO's insertion queue
on the entry edge, standing for a detector on the road beyond the modelled network; see
`ApproachReading`), and measures what the benchmark reports: delay per vehicle
(SUMO's `timeLoss` plus the insertion delay `departDelay`, unfinished trips included), trip time,
queue length and throughput.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cityos.traffic.signals import (
    GREEN_CHARS,
    ApproachReading,
    Controller,
    LaneReading,
    Movement,
    Phase,
    SignalPlan,
    SignalSupervisor,
    View,
)

YELLOW_S = 3.0
ALL_RED_S = 2.0
MIN_GREEN_S = 5.0
MAX_GREEN_S = 60.0
STOPLINE_ZONE_M = 60.0  # the stop-line (gap) detector: the last 60 m before the stop line
APPROACH_M = 150.0  # a short incoming lane's approach detector reaches this far up the lanes feeding it
# A lane longer than this gets an advance detector over its last ADVANCE_M: what a green given now serves
# (~15-18 s of travel at 50-60 km/h: the change, the minimum green and the queue's start-up).
ADVANCE_M = 250.0


def sumo_home() -> str:
    """SUMO_HOME of the eclipse-sumo wheel (set in the environment for libsumo and the tools)."""
    if not os.environ.get("SUMO_HOME"):
        import sumo

        os.environ["SUMO_HOME"] = str(sumo.SUMO_HOME)
    return os.environ["SUMO_HOME"]


def load_libsumo() -> ModuleType:
    """libsumo, imported with its import-time notices (a pyarrow version warning) sent to stderr: a
    benchmark's stdout is one JSON line."""
    with contextlib.redirect_stdout(sys.stderr):
        import libsumo
    return libsumo


def sumo_binary(name: str) -> str:
    home = Path(sumo_home())
    for candidate in (home / "bin" / name, Path(os.sys.executable).parent / name):  # type: ignore[attr-defined]
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"SUMO tool {name} not found under {home}")


@dataclass(frozen=True)
class Scenario:
    name: str
    net: Path
    routes: tuple[Path, ...]
    begin: int
    end: int
    additional: tuple[Path, ...] = ()


RESCO_WINDOWS = {  # the RESCO benchmark's one-hour windows (begin, end) in simulation seconds
    "cologne1": (25200, 28800), "cologne3": (25200, 28800), "cologne8": (25200, 28800),
    "ingolstadt1": (57600, 61200), "ingolstadt7": (57600, 61200), "ingolstadt21": (57600, 61200),
    "grid4x4": (0, 3600), "arterial4x4": (0, 3600),
}


def resco_dir() -> Path:
    """The RESCO scenarios inside the sumo-rl wheel (a dev dependency; not copied into this repository)."""
    spec = importlib.util.find_spec("sumo_rl")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("sumo-rl is not installed: `uv sync` installs it with the dev dependencies")
    return Path(spec.origin).parent / "nets" / "RESCO"


def resco_scenario(name: str, horizon: int | None = None) -> Scenario:
    base = resco_dir() / name
    begin, end = RESCO_WINDOWS[name]
    routes = tuple(sorted(base.glob("*.rou.xml")))
    if horizon is not None:
        end = min(end, begin + horizon)
    return Scenario(name, base / f"{name}.net.xml", routes, begin, end)


# ---------------------------------------------------------------------- plans from a network


@dataclass(frozen=True)
class Intersection:
    tls: str
    plan: SignalPlan
    movements: tuple[tuple[Movement, ...], ...]  # per green phase
    in_lanes: tuple[str, ...]
    out_lanes: tuple[str, ...]


def _green_phases(program: Any) -> list[tuple[str, float, float, float]]:
    phases: list[tuple[str, float, float, float]] = []
    seen: set[str] = set()
    for p in program.getPhases():
        state = p.state
        if any(c in "yYuoO" for c in state) or not any(c in GREEN_CHARS for c in state) or state in seen:
            continue
        seen.add(state)
        phases.append((state, float(p.duration), float(p.minDur or -1), float(p.maxDur or -1)))
    return phases


def plans_from_net(net_file: Path) -> dict[str, SignalPlan]:
    """Each traffic light's plan: the green phases of its first program with the platform's clearance times.

    The fixed-time green is the scenario's own; minimum green is 5 s (or the scenario's, if shorter),
    maximum green 60 s (or the scenario's longer fixed green). The conflict matrix holds the links the
    network marks as foes that the scenario's own program never shows protected green together
    (merges that the right of way resolves are not conflicts).
    """
    import sumolib

    net = sumolib.net.readNet(str(net_file), withPrograms=True)
    plans: dict[str, SignalPlan] = {}
    for tls in net.getTrafficLights():
        programs = tls.getPrograms()
        if not programs:
            continue
        program = programs[sorted(programs)[0]]
        greens = _green_phases(program)
        if not greens:
            continue
        phases = []
        for state, duration, _min_dur, _max_dur in greens:
            fixed = max(1.0, duration)
            min_green = min(MIN_GREEN_S, fixed)
            phases.append(Phase(state=state, min_green=min_green, max_green=max(MAX_GREEN_S, fixed),
                                fixed_green=fixed))
        conflicts: set[tuple[int, int]] = set()
        connections = [c for c in tls.getConnections()]
        for i, (in_a, _out_a, link_a) in enumerate(connections):
            for in_b, _out_b, link_b in connections[i + 1:]:
                if link_a == link_b:
                    continue
                node = in_a.getEdge().getToNode()
                if node is not in_b.getEdge().getToNode():
                    continue
                conn_a = _connection(in_a, _out_a)
                conn_b = _connection(in_b, _out_b)
                if conn_a is None or conn_b is None:
                    continue
                try:
                    foes = node.areFoes(node.getLinkIndex(conn_a), node.getLinkIndex(conn_b))
                except (IndexError, KeyError, ValueError):
                    continue
                pair = (min(link_a, link_b), max(link_a, link_b))
                if foes and not any(s[pair[0]] == "G" and s[pair[1]] == "G" for s, *_ in greens):
                    conflicts.add(pair)
        plans[tls.getID()] = SignalPlan(phases=tuple(phases), yellow=YELLOW_S, all_red=ALL_RED_S,
                                        conflicts=frozenset(conflicts))
    return plans


def _connection(in_lane: Any, out_lane: Any) -> Any:
    for conn in in_lane.getOutgoing():
        if conn.getToLane() is out_lane:
            return conn
    return None


def actuated_programs(plans: dict[str, SignalPlan], path: Path) -> Path:
    """An additional file with SUMO actuated programs built from the plans (same greens and clearances)."""
    root = ET.Element("additional")
    for tls, plan in plans.items():
        logic = ET.SubElement(root, "tlLogic", id=tls, type="actuated", programID="cityos-actuated", offset="0")
        for i, phase in enumerate(plan.phases):
            nxt = plan.phases[(i + 1) % len(plan.phases)]
            ET.SubElement(logic, "phase", duration=f"{phase.fixed_green:g}", state=phase.state,
                          minDur=f"{phase.earliest_end:g}", maxDur=f"{phase.max_green:g}")
            yellow = "".join(o if (o in GREEN_CHARS and n in GREEN_CHARS) else ("y" if o in GREEN_CHARS else "r")
                             for o, n in zip(phase.state, nxt.state, strict=True))
            red = "".join(o if (o in GREEN_CHARS and n in GREEN_CHARS) else "r"
                          for o, n in zip(phase.state, nxt.state, strict=True))
            ET.SubElement(logic, "phase", duration=f"{plan.yellow:g}", state=yellow)
            if plan.all_red > 0:
                ET.SubElement(logic, "phase", duration=f"{plan.all_red:g}", state=red)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def separate_junctions(base: Path, count: int, period_ew: float,
                       period_ns: float | None = None, arm_m: float = 100.0) -> tuple[Path, Path]:
    """`count` signalised four-arm junctions of `arm_m` (100 m) single-lane roads, unconnected, and their traffic.

    Junction i is the traffic light `j<i>`; its roads are `j<i>_{n,s,e,w}_{in,out}` (lanes `..._0`, also
    valid IoT device names). Vehicles arrive east-west every `period_ew` seconds each way and, with
    `period_ns`, north-south. For the control loop's test and benchmark (the field for N signals).
    """
    import subprocess

    arms = {"n": (0, arm_m), "s": (0, -arm_m), "e": (arm_m, 0), "w": (-arm_m, 0)}
    nodes, edges, flows = [], [], []
    for i in range(count):
        x0 = i * 4 * arm_m
        nodes.append(f'<node id="j{i}" x="{x0}" y="0" type="traffic_light"/>')
        for arm, (dx, dy) in arms.items():
            nodes.append(f'<node id="j{i}_{arm}" x="{x0 + dx}" y="{dy}" type="priority"/>')
            edges.append(f'<edge id="j{i}_{arm}_in" from="j{i}_{arm}" to="j{i}" numLanes="1" speed="13.89"/>')
            edges.append(f'<edge id="j{i}_{arm}_out" from="j{i}" to="j{i}_{arm}" numLanes="1" speed="13.89"/>')
        for (a, b), period in ((("w", "e"), period_ew), (("n", "s"), period_ns)):
            if period is None:
                continue
            flows.append(f'<flow id="j{i}_{a}{b}" type="car" from="j{i}_{a}_in" to="j{i}_{b}_out" begin="0" '
                         f'end="86400" period="{period:g}"/>')
            flows.append(f'<flow id="j{i}_{b}{a}" type="car" from="j{i}_{b}_in" to="j{i}_{a}_out" begin="0" '
                         f'end="86400" period="{period:g}"/>')
    (base / "j.nod.xml").write_text("<nodes>" + "".join(nodes) + "</nodes>")
    (base / "j.edg.xml").write_text("<edges>" + "".join(edges) + "</edges>")
    net = base / "j.net.xml"
    subprocess.run([sumo_binary("netconvert"), "-n", str(base / "j.nod.xml"),  # noqa: S603
                    "-e", str(base / "j.edg.xml"), "-o", str(net), "--no-turnarounds", "true",
                    "--no-left-connections", "true", "--no-warnings", "true"], check=True, capture_output=True)
    routes = base / "j.rou.xml"
    routes.write_text('<routes><vType id="car" length="5" minGap="2.5"/>' + "".join(flows) + "</routes>")
    return net, routes

# ---------------------------------------------------------------------- approach detectors


@dataclass(frozen=True)
class ApproachSpec:
    """Where one incoming lane's extra detectors lie (see `ApproachReading`)."""

    stopline_detector: str  # a lane-area detector over the last `STOPLINE_ZONE_M` of the lane
    upstream: tuple[tuple[str, float], ...]  # feeding lanes within `APPROACH_M`, with the share counted here
    entry_edges: tuple[tuple[str, float], ...]  # network entry edges the approach reaches, with the share
    # On a lane longer than `ADVANCE_M`: a lane-area detector over its last `ADVANCE_M` (advance detector)
    advance_detector: str | None = None


def approach_specs(net_file: Path) -> dict[str, ApproachSpec]:
    """Per signalised incoming lane: its stop-line detector and the upstream lanes its approach covers.

    The approach follows feeding lanes up to `APPROACH_M` from the stop line and stops at another
    signalised junction (what queues there waits for that junction's signal). A lane fed by several
    incoming lanes of the same junction counts for each a share, so nothing is counted twice.
    """
    import sumolib

    net = sumolib.net.readNet(str(net_file), withPrograms=True)
    reach: dict[str, dict[str, set[str]]] = {}  # tls -> upstream lane -> incoming lanes it feeds
    entries: dict[str, dict[str, set[str]]] = {}  # tls -> entry edge -> incoming lanes it feeds
    in_lanes: dict[str, str] = {}
    for tls in net.getTrafficLights():
        for lane, _out, _link in tls.getConnections():
            in_lanes[lane.getID()] = tls.getID()
            feeds = reach.setdefault(tls.getID(), {})
            fed_entries = entries.setdefault(tls.getID(), {})
            frontier = [(lane, float(lane.getLength()))]
            seen = {lane.getID()}
            while frontier:
                current, distance = frontier.pop()
                edge = current.getEdge()
                if not edge.getIncoming():
                    fed_entries.setdefault(edge.getID(), set()).add(lane.getID())
                if distance >= APPROACH_M or edge.getFromNode().getType() == "traffic_light":
                    continue
                for upstream in current.getIncoming(onlyDirect=True):
                    if upstream.getID() in seen or upstream.getEdge().getFunction() == "internal":
                        continue
                    seen.add(upstream.getID())
                    feeds.setdefault(upstream.getID(), set()).add(lane.getID())
                    frontier.append((upstream, distance + float(upstream.getLength())))
    specs: dict[str, ApproachSpec] = {}
    for lane_id, tls_id in in_lanes.items():
        upstream = tuple(sorted((up, 1.0 / len(fed)) for up, fed in reach[tls_id].items() if lane_id in fed))
        entry = tuple(sorted((e, 1.0 / len(fed)) for e, fed in entries[tls_id].items() if lane_id in fed))
        long_lane = float(net.getLane(lane_id).getLength()) > ADVANCE_M
        specs[lane_id] = ApproachSpec(f"cityos-stopline:{lane_id}", upstream, entry,
                                      f"cityos-advance:{lane_id}" if long_lane else None)
    return specs


def lane_end_detectors(net_file: Path, zones: Iterable[tuple[str, str, float]], path: Path) -> Path:
    """An additional file with a lane-area detector per (id, lane, metres) over the lane's last metres (no output
    file is written)."""
    import sumolib

    net = sumolib.net.readNet(str(net_file))
    root = ET.Element("additional")
    for detector, lane_id, metres in zones:
        length = float(net.getLane(lane_id).getLength())
        ET.SubElement(root, "laneAreaDetector", id=detector, lane=lane_id,
                      pos=f"{max(0.0, length - metres):.2f}", endPos=f"{length:.2f}", freq="86400", file=os.devnull)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def zone_lanes(lanes: Iterable[str]) -> list[str]:
    """The lanes video/radar zones watch: every lane of the arterials (roads with two lanes or more), where loops
    miss a blocked lane (traffic passes it in the next one); SUMO names a lane `<edge>_<index>`."""
    edges: dict[str, list[str]] = {}
    for lane in lanes:
        edges.setdefault(lane.rsplit("_", 1)[0], []).append(lane)
    return sorted(lane for group in edges.values() if len(group) > 1 for lane in group)


def zone_report(sim: Any, lane: str, length: float | None = None) -> list[tuple[float, float]]:
    """What a zone detector sees on a lane: each vehicle standing still (SUMO's waiting time counts while a vehicle
    is below 0.1 m/s and is 0 once it moves), as its distance to the stop line (the lane's end) and how long it has
    stood, nearest the line first."""
    length = float(sim.lane.getLength(lane)) if length is None else length
    standing = []
    for vehicle in sim.lane.getLastStepVehicleIDs(lane):
        waited = float(sim.vehicle.getWaitingTime(vehicle))
        if waited > 0:
            standing.append((round(max(0.0, length - float(sim.vehicle.getLanePosition(vehicle))), 1),
                             round(waited, 1)))
    return sorted(standing)


def stopline_detectors(net_file: Path, specs: Mapping[str, ApproachSpec], path: Path) -> Path:
    """An additional file with the stop-line and advance lane-area detectors."""
    zones: list[tuple[str, str, float]] = []
    for lane_id, spec in specs.items():
        zones.append((spec.stopline_detector, lane_id, STOPLINE_ZONE_M))
        if spec.advance_detector is not None:
            zones.append((spec.advance_detector, lane_id, ADVANCE_M))
    return lane_end_detectors(net_file, zones, path)


class ApproachReader(Mapping[str, ApproachReading]):
    """The approach readings of one step, for all signalised incoming lanes, each read when asked for."""

    def __init__(self, sim: Any, lanes: LaneReader, specs: Mapping[str, ApproachSpec]) -> None:
        self.sim = sim
        self.lanes = lanes
        self.specs = specs
        for spec in specs.values():
            sim.lanearea.subscribe(spec.stopline_detector, [0x10])
            if spec.advance_detector is not None:
                sim.lanearea.subscribe(spec.advance_detector, [0x10])
        self._stopline: dict[str, Any] = {}
        self._cache: dict[str, ApproachReading] = {}
        self._pending: dict[str, float] = {}

    def refresh(self) -> None:
        self._stopline = self.sim.lanearea.getAllSubscriptionResults()
        self._cache = {}
        self._pending = {}

    def _backlog(self, edge: str) -> float:
        if edge not in self._pending:
            self._pending[edge] = float(len(self.sim.edge.getPendingVehicles(edge)))
        return self._pending[edge]

    def __getitem__(self, lane: str) -> ApproachReading:
        cached = self._cache.get(lane)
        if cached is not None:
            return cached
        spec = self.specs[lane]
        own = self.lanes.read(lane)
        vehicles, halting, waiting = own.vehicles, own.halting, own.waiting
        for upstream, share in spec.upstream:
            fed = self.lanes.read(upstream)
            vehicles += share * fed.vehicles
            halting += share * fed.halting
            waiting += share * fed.waiting
        stopline = float((self._stopline.get(spec.stopline_detector) or {}).get(0x10, 0.0))
        backlog = sum(share * self._backlog(edge) for edge, share in spec.entry_edges)
        arriving = vehicles  # a lane up to `ADVANCE_M` long: its approach is what a green serves soon
        if spec.advance_detector is not None:
            arriving = float((self._stopline.get(spec.advance_detector) or {}).get(0x10, 0.0))
        approach = ApproachReading(stopline=max(0.0, stopline), vehicles=vehicles, halting=halting,
                                   waiting=waiting, backlog=backlog, arriving=max(0.0, arriving))
        self._cache[lane] = approach
        return approach

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


# ---------------------------------------------------------------------- the run harness

ControllerFactory = Callable[[Intersection], Controller]
BeforeTick = Callable[[Any, float, Mapping[str, SignalSupervisor]], None]


@dataclass
class RunResult:
    scenario: str
    controller: str
    seed: int
    horizon_s: int
    vehicles: int = 0
    arrived: int = 0
    mean_delay_s: float = 0.0
    mean_trip_s: float = 0.0
    mean_queue: float = 0.0  # halting vehicles per signalised intersection, sampled every 5 s
    throughput_veh_h: float = 0.0
    teleports: int = 0
    controller_failures: int = 0
    refused: int = 0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


# libsumo variable ids (constants in traci.constants): vehicles, mean speed, occupancy, halting, waiting time
_VARS = (0x10, 0x11, 0x13, 0x14, 0x7A)


class LaneReader:
    """Lane-area detector values for all watched lanes, fetched once per step through a libsumo subscription.

    Also counts the vehicles entering each approach lane (for flow measurement) when asked to.
    """

    def __init__(self, sim: Any, lanes: set[str]) -> None:
        self.sim = sim
        self.length = {lane: float(sim.lane.getLength(lane)) for lane in lanes}
        self._seen: dict[str, set[str]] = {lane: set() for lane in lanes}
        self.entered: dict[str, float] = dict.fromkeys(lanes, 0.0)
        for lane in lanes:
            sim.lane.subscribe(lane, list(_VARS))
        self._values: dict[str, Any] = {}
        self._cache: dict[str, LaneReading] = {}

    def refresh(self) -> None:
        self._values = self.sim.lane.getAllSubscriptionResults()
        self._cache = {}

    def track_entries(self, lanes: set[str]) -> None:
        for lane in lanes:
            ids = set(self.sim.lane.getLastStepVehicleIDs(lane))
            self.entered[lane] += len(ids - self._seen[lane])
            self._seen[lane] = ids

    def read(self, lane: str) -> LaneReading:
        cached = self._cache.get(lane)
        if cached is not None:
            return cached
        values = self._values.get(lane) or {}
        vehicles = float(values.get(0x10, 0.0))
        reading = LaneReading(vehicles=vehicles, halting=min(vehicles, float(values.get(0x14, 0.0))),
                              mean_speed=min(70.0, max(0.0, float(values.get(0x11, 0.0)))),
                              occupancy=min(1.0, max(0.0, float(values.get(0x13, 0.0)) / 100.0)),
                              waiting=max(0.0, float(values.get(0x7A, 0.0))), length=self.length[lane],
                              entered=self.entered.get(lane, 0.0))
        self._cache[lane] = reading
        return reading

    def halting(self, lane: str) -> float:
        return float((self._values.get(lane) or {}).get(0x14, 0.0))


class LazyLanes(Mapping[str, LaneReading]):
    """An intersection's detector readings, read only when a controller looks at them."""

    def __init__(self, reader: LaneReader, lanes: tuple[str, ...]) -> None:
        self.reader = reader
        self.lanes = lanes
        self._known = frozenset(lanes)

    def __getitem__(self, lane: str) -> LaneReading:
        if lane not in self._known:
            raise KeyError(lane)
        return self.reader.read(lane)

    def __iter__(self) -> Iterator[str]:
        return iter(self.lanes)

    def __len__(self) -> int:
        return len(self.lanes)

    def __contains__(self, lane: object) -> bool:
        return lane in self._known


def intersections_of(sim: Any, plans: dict[str, SignalPlan], every_connection: bool = False) -> list[Intersection]:
    """The signalised junctions of the running net, each phase's green movements one per signal link (the link's
    first lane-to-lane connection), or with `every_connection` one per connection: on real networks one signal head
    often serves several connections (RESCO Ingolstadt), and a route taking another than the first one would not
    find its signal."""
    out = []
    for tls, plan in plans.items():
        links = sim.trafficlight.getControlledLinks(tls)
        if len(links) != plan.links:
            continue
        movements = []
        for phase in plan.phases:
            moves = []
            for index, char in enumerate(phase.state):
                if char in GREEN_CHARS and links[index]:
                    for in_lane, out_lane, _via in links[index] if every_connection else links[index][:1]:
                        moves.append(Movement(index, in_lane, out_lane, char == "G"))
            movements.append(tuple(moves))
        in_lanes = tuple(sorted({m.in_lane for ms in movements for m in ms}))
        out_lanes = tuple(sorted({m.out_lane for ms in movements for m in ms}))
        out.append(Intersection(tls, plan, tuple(movements), in_lanes, out_lanes))
    return out


def run_scenario(scenario: Scenario, controller: str, factory: ControllerFactory | None, *, seed: int = 1,
                 track_flows: bool = False, queue_every: int = 5,
                 on_step: Callable[[Any, float], None] | None = None,
                 before_tick: BeforeTick | None = None, step_length: float = 1.0) -> RunResult:
    """Run one scenario with one controller in libsumo. `factory` None means SUMO's actuated programs.
    `step_length`: SUMO's step (the platform's SUMO field steps 0.5 s); the signals tick every step.

    `before_tick(sim, now, supervisors)` runs every second before the signals decide (pre-emption
    commands phases there); `on_step(sim, now)` runs just before each simulation step.
    """
    import time

    libsumo = load_libsumo()
    sumo_home()
    plans = plans_from_net(scenario.net)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cityos-sumo-") as tmp:
        tripinfo = Path(tmp) / "tripinfo.xml"
        additional = list(scenario.additional)
        specs: dict[str, ApproachSpec] = {}
        if factory is None:
            additional.append(actuated_programs(plans, Path(tmp) / "actuated.add.xml"))
        else:
            specs = approach_specs(scenario.net)
            additional.append(stopline_detectors(scenario.net, specs, Path(tmp) / "stopline.add.xml"))
        args = [sumo_binary("sumo"), "-n", str(scenario.net), "-r", ",".join(str(r) for r in scenario.routes),
                "-b", str(scenario.begin), "-e", str(scenario.end), "--seed", str(seed),
                "--tripinfo-output", str(tripinfo), "--tripinfo-output.write-unfinished", "true",
                "--tripinfo-output.write-undeparted", "true",
                "--no-step-log", "true", "--no-warnings", "true", "--duration-log.disable", "true",
                "--time-to-teleport", "300", "--ignore-route-errors", "true",
                "--device.rerouting.adaptation-steps", "0", "--step-length", f"{step_length:g}"]
        if additional:
            args += ["-a", ",".join(str(a) for a in additional)]
        libsumo.start(args)
        try:
            result = _drive(libsumo, scenario, controller, factory, plans, seed, track_flows, queue_every, on_step,
                            before_tick, specs)
        finally:
            libsumo.close()
        _read_tripinfo(tripinfo, result, scenario.end)
    result.wall_s = time.perf_counter() - started
    return result


def _drive(sim: Any, scenario: Scenario, controller: str, factory: ControllerFactory | None,
           plans: dict[str, SignalPlan], seed: int, track_flows: bool, queue_every: int,
           on_step: Callable[[Any, float], None] | None, before_tick: BeforeTick | None,
           specs: Mapping[str, ApproachSpec]) -> RunResult:
    intersections = intersections_of(sim, plans)
    lanes = {lane for x in intersections for lane in (*x.in_lanes, *x.out_lanes)}
    watched = {lane for x in intersections for lane in x.in_lanes if lane in specs}
    lanes |= {up for lane in watched for up, _share in specs[lane].upstream}
    reader = LaneReader(sim, lanes)
    approaches = ApproachReader(sim, reader, {lane: specs[lane] for lane in sorted(watched)})
    in_lanes = {lane for x in intersections for lane in x.in_lanes}
    supervisors: list[tuple[Intersection, SignalSupervisor]] = []
    shown: dict[str, str] = {}
    if factory is None:
        for x in intersections:
            sim.trafficlight.setProgram(x.tls, "cityos-actuated")
    else:
        for x in intersections:
            def view_of(now: float, phase: int, elapsed: float, x: Intersection = x) -> View:
                lanes = LazyLanes(reader, tuple(dict.fromkeys((*x.in_lanes, *x.out_lanes))))
                return View(now, phase, elapsed, lanes, x.movements, approaches)

            supervisors.append((x, SignalSupervisor(plan=x.plan, controller=factory(x), view_of=view_of)))
    by_tls = {x.tls: supervisor for x, supervisor in supervisors}
    result = RunResult(scenario.name, controller, seed, scenario.end - scenario.begin)
    queue_sum, queue_samples = 0.0, 0
    now = float(scenario.begin)
    reader.refresh()
    approaches.refresh()
    while now < scenario.end:
        if track_flows:
            reader.track_entries(in_lanes)
        if before_tick is not None:
            before_tick(sim, now, by_tls)
        for x, supervisor in supervisors:
            state = supervisor.tick(now)
            if shown.get(x.tls) != state:
                sim.trafficlight.setRedYellowGreenState(x.tls, state)
                shown[x.tls] = state
        if on_step is not None:
            on_step(sim, now)
        sim.simulationStep()
        now = float(sim.simulation.getTime())
        reader.refresh()
        approaches.refresh()
        if int(now) % queue_every == 0 and intersections:
            queue_sum += sum(reader.halting(lane) for lane in in_lanes) / len(intersections)
            queue_samples += 1
        result.teleports += sim.simulation.getStartingTeleportNumber()
    result.mean_queue = queue_sum / max(1, queue_samples)
    result.controller_failures = sum(s.stats.failures for _, s in supervisors)
    result.refused = sum(s.stats.refused for _, s in supervisors)
    return result


def _read_tripinfo(path: Path, result: RunResult, end: float) -> None:
    if not path.exists():
        return
    delays, trips = [], []
    arrived = 0
    for _event, element in ET.iterparse(path):  # noqa: S314  (SUMO's own output file)
        if element.tag != "tripinfo":
            continue
        if element.get("vType", "").startswith("cityos-emergency"):  # reported apart, not in others' delay
            result.extra.setdefault("emergency_trips", []).append({
                "id": element.get("id"), "depart": float(element.get("depart", "-1")),
                "arrival": float(element.get("arrival", "-1")), "duration": float(element.get("duration", "-1")),
                "time_loss": float(element.get("timeLoss", "0")), "waiting": float(element.get("waitingTime", "0"))})
            element.clear()
            continue
        time_loss = float(element.get("timeLoss", "0"))
        depart_delay = float(element.get("departDelay", "0"))
        depart = float(element.get("depart", "-1"))
        arrival = float(element.get("arrival", "-1"))
        if depart < 0:  # never inserted: the whole wait is delay
            delays.append(max(0.0, depart_delay))
        else:
            delays.append(max(0.0, time_loss) + max(0.0, depart_delay))
        if 0 <= arrival <= end:
            arrived += 1
            trips.append(float(element.get("duration", "0")))
        element.clear()
    result.vehicles = len(delays)
    result.arrived = arrived
    result.mean_delay_s = sum(delays) / len(delays) if delays else 0.0
    result.mean_trip_s = sum(trips) / len(trips) if trips else 0.0
    result.throughput_veh_h = arrived * 3600.0 / max(1, result.horizon_s)
    if not math.isfinite(result.mean_delay_s):
        result.mean_delay_s = 0.0
