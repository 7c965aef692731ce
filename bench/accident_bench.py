"""Accident detection benchmark (事故检测): injected blockages in SUMO, detection time and false alarms.

    uv run --frozen python bench/accident_bench.py [--horizon 3600] [--accidents 8] [--seed 2]

The simulated city's grid (`citynet`) runs in SUMO with its own fixed-time signals and its daily demand
from the morning peak. Every approach lane of a signalised junction at least 150 m long carries
induction loops every ~250 m (30 s aggregation, like the city's TrafficFlowObserved detectors) from
10% to 92% of the lane; the loops across a road's lanes at one position form a detector station
(occupancy averaged, vehicles summed, as on a freeway) and consecutive stations the detector pairs
(`--pairs lane` pairs loops per lane instead: it sees a blocked lane that traffic passes in another
lane, but vehicles changing lanes to turn also look like a lane that stopped flowing). Accidents are injected: at each
onset a vehicle between 15% and 85% of a lane is stopped for `--duration` seconds (the lane is
blocked; others may pass in another lane).

Each interval every pair's readings go to `cityos.traffic.accidents.AccidentDetector`. Reported: the
detection time of each accident (alarm on its lane's edge or the road section feeding it, minus the
onset), its p50/p90 and the share within 5 minutes; false alarms (alarms with no blockage there) per
detector-day. A baseline runs on the same readings in the same run: a speed-drop alarm (upstream speed
under 4 m/s with occupancy over 25% for two intervals), the simplest rule an operator would set.
One JSON line.
"""



from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityos.traffic.accidents import INTERVAL_S, AccidentDetector, StationReading
from cityos.traffic.citynet import build_network, write_demand
from cityos.traffic.sumo import sumo_binary, sumo_home

MIN_LANE_M = 150.0


@dataclass
class Accident:
    lane: str
    edge: str
    onset: float
    vehicle: str
    cleared: float


class SpeedDrop:
    """The baseline: an upstream speed drop with some occupancy, persisting two intervals."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.active: set[str] = set()

    def observe(self, pair: str, up: StationReading, at: float) -> bool:
        hit = up.occupancy >= 0.25 and up.vehicles > 0 and up.speed < 4.0
        self.count[pair] = self.count.get(pair, 0) + 1 if hit else 0
        if not hit:
            self.active.discard(pair)
            return False
        if self.count[pair] >= 2 and pair not in self.active:
            self.active.add(pair)
            return True
        return False


SPACING_M = 250.0


def loops_file(sim_net: Path, path: Path) -> dict[str, list[str]]:
    """Induction loops every ~250 m on long signalised approach lanes; returns {lane: loop ids in order}."""
    import sumolib

    net = sumolib.net.readNet(str(sim_net))
    root = ET.Element("additional")
    lanes: dict[str, list[str]] = {}
    for edge in net.getEdges():
        if edge.getFunction() != "" or not edge.getToNode().getType().startswith("traffic_light"):
            continue
        for lane in edge.getLanes():
            length = lane.getLength()
            if length < MIN_LANE_M:
                continue
            first, last = 0.1 * length, 0.92 * length
            count = max(2, 1 + round((last - first) / SPACING_M))
            ids = lanes[lane.getID()] = []
            for k in range(count):
                ids.append(f"loop{k}:{lane.getID()}")
                ET.SubElement(root, "inductionLoop", id=ids[-1], lane=lane.getID(),
                              pos=f"{first + k * (last - first) / (count - 1):.1f}", period=f"{INTERVAL_S:g}",
                              file="NUL")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return lanes


def reading(sim: Any, loop: str) -> StationReading:
    speed = float(sim.inductionloop.getLastIntervalMeanSpeed(loop))
    return StationReading(occupancy=min(1.0, max(0.0, float(sim.inductionloop.getLastIntervalOccupancy(loop)) / 100)),
                          speed=max(0.0, speed), vehicles=int(sim.inductionloop.getLastIntervalVehicleNumber(loop)))


def station(sim: Any, loops: list[str]) -> StationReading:
    """A detector station: the loops across all lanes at one position (occupancy averaged, counts summed)."""
    readings = [reading(sim, loop) for loop in loops]
    vehicles = sum(r.vehicles for r in readings)
    speed = sum(r.speed * r.vehicles for r in readings) / vehicles if vehicles else 0.0
    return StationReading(sum(r.occupancy for r in readings) / len(readings), speed, vehicles)


def inject(sim: Any, rng: random.Random, lanes: dict[str, list[str]], used: set[str], now: float,
           duration: float) -> Accident | None:
    """Stop a vehicle in the middle of a random busy lane not used before."""
    candidates = []
    for lane in lanes:
        edge = lane.rsplit("_", 1)[0]
        if edge in used:
            continue
        length = float(sim.lane.getLength(lane))
        for vehicle in sim.lane.getLastStepVehicleIDs(lane):
            if 0.15 * length <= float(sim.vehicle.getLanePosition(vehicle)) <= 0.85 * length:
                candidates.append((lane, vehicle))
                break
    if not candidates:
        return None
    lane, vehicle = rng.choice(sorted(candidates))
    sim.vehicle.setLaneChangeMode(vehicle, 0)
    sim.vehicle.setSpeed(vehicle, 0.0)
    edge = lane.rsplit("_", 1)[0]
    used.add(edge)
    return Accident(lane, edge, now, vehicle, now + duration)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--horizon", type=int, default=3600)
    parser.add_argument("--accidents", type=int, default=8)
    parser.add_argument("--first", type=float, default=600.0)
    parser.add_argument("--duration", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--pairs", choices=("station", "lane"), default="station",
                        help="detector pairs across a road's lanes (default) or per lane")
    args = parser.parse_args()
    import libsumo as sim
    import sumolib

    sumo_home()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cityos-accident-bench-") as tmp:
        work = Path(tmp)
        net = build_network(work)
        routes = write_demand(net, work / "demand.rou.xml", seed=args.seed, horizon=args.horizon)
        lanes = loops_file(net, work / "loops.add.xml")
        feeds: dict[str, set[str]] = {}  # edge → edges feeding it (a queue may spill back into them)
        for edge in sumolib.net.readNet(str(net)).getEdges():
            feeds[edge.getID()] = {e.getID() for e in edge.getIncoming()}
        sim.start([sumo_binary("sumo"), "-n", str(net), "-r", str(routes), "-a", str(work / "loops.add.xml"),
                   "-e", str(args.horizon), "--seed", str(args.seed), "--no-step-log", "true",
                   "--no-warnings", "true", "--time-to-teleport", "600", "--ignore-route-errors", "true"])
        stations: dict[str, list[list[str]]] = {}  # edge → per position, the loops across its lanes
        for lane, loops in lanes.items():
            key = lane.rsplit("_", 1)[0] if args.pairs == "station" else lane
            positions = stations.setdefault(key, [[] for _ in loops])
            for k, loop in enumerate(loops):
                positions[k].append(loop)
        detector, baseline = AccidentDetector(), SpeedDrop()
        rng = random.Random(args.seed)
        gap = (args.horizon - args.first - args.duration / 2) / max(1, args.accidents)
        onsets = [args.first + k * gap for k in range(args.accidents)]
        accidents: list[Accident] = []
        used: set[str] = set()
        alarms: list[tuple[str, float, str]] = []  # (lane, time, which)
        try:
            now = 0.0
            while now < args.horizon:
                sim.simulationStep()
                now = float(sim.simulation.getTime())
                if onsets and now >= onsets[0]:
                    accident = inject(sim, rng, lanes, used, now, args.duration)
                    if accident is not None:
                        accidents.append(accident)
                        onsets.pop(0)
                for accident in accidents:
                    if accident.cleared <= now < accident.cleared + 1 and accident.vehicle in sim.vehicle.getIDList():
                        sim.vehicle.setSpeed(accident.vehicle, -1)
                if int(now) % int(INTERVAL_S) == 0:
                    for key, positions in stations.items():
                        where = f"{key}_all" if args.pairs == "station" else key  # a lane id: edge_index
                        values = [station(sim, loops) for loops in positions]
                        for k in range(len(positions) - 1):
                            pair = f"{key}#{k}"
                            if detector.observe(pair, values[k], values[k + 1], now) is not None:
                                alarms.append((where, now, "cityos"))
                            if baseline.observe(pair, values[k], now):
                                alarms.append((where, now, "baseline"))
        finally:
            sim.close()
    pairs = sum(len(positions) - 1 for positions in stations.values())
    detector_days = pairs * args.horizon / 86400.0
    report: dict[str, Any] = {}
    for which in ("cityos", "baseline"):
        times: list[float | None] = []
        false_alarms = 0
        for lane, at, who in alarms:
            if who != which:
                continue
            edge = lane.rsplit("_", 1)[0]
            if not any((edge == a.edge or edge in feeds.get(a.edge, set())) and a.onset <= at <= a.cleared + 300
                       for a in accidents):
                false_alarms += 1
        for a in accidents:
            hits = [at - a.onset for lane, at, who in alarms if who == which and a.onset <= at <= a.cleared
                    and (lane.rsplit("_", 1)[0] == a.edge or lane.rsplit("_", 1)[0] in feeds.get(a.edge, set()))]
            times.append(min(hits) if hits else None)
        found = [t for t in times if t is not None]
        report[which] = {"detected": len(found), "accidents": len(accidents),
                         "detection_s": times, "p50_s": percentile(found, 0.5), "p90_s": percentile(found, 0.9),
                         "within_5_min": sum(t <= 300 for t in found) / max(1, len(accidents)),
                         "false_alarms": false_alarms,
                         "false_alarms_per_detector_day": round(false_alarms / detector_days, 3)}
        print(f"{which:8s} detected {len(found)}/{len(accidents)}  p90 {report[which]['p90_s']} s  "
              f"false alarms {false_alarms} ({report[which]['false_alarms_per_detector_day']}/detector-day)",
              file=sys.stderr)
    print(json.dumps({"bench": "accident_detection", "horizon_s": args.horizon, "seed": args.seed, "pairs": args.pairs,
                      "detector_pairs": pairs, "detector_days": round(detector_days, 2),
                      "accidents": [{"lane": a.lane, "onset": a.onset} for a in accidents], **report,
                      "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
