"""Accident detection benchmark (事故检测): injected blockages in SUMO, detection time and false alarms.

    uv run --frozen python bench/accident_bench.py [--horizon 3600] [--accidents 8] [--seed 2]
        [--record readings.json.gz | --replay readings.json.gz]

The simulated city's grid (`citynet`) runs in SUMO with its own fixed-time signals and its daily demand
from the morning peak. Every approach lane of a signalised junction at least 150 m long carries
induction loops every ~250 m (30 s aggregation, like the city's TrafficFlowObserved detectors) from
10% to 92% of the lane. Accidents are injected: at each onset a vehicle between 15% and 85% of a lane
is stopped for `--duration` seconds (the lane is blocked; others may pass in another lane).

The readings are scored in two pairings, both in the same run: station pairs (the loops across a road's
lanes at one position form a station, occupancy averaged and vehicles summed, as on a freeway;
consecutive stations form the pairs) and lane pairs (consecutive loops of one lane: they see a blocked
lane that traffic passes in another lane, but vehicles changing lanes to turn also look like a lane that
stopped flowing), and both together (`both`: a station pair's or a lane pair's alarm; false alarms per
lane-pair-day). On each pairing three detectors run on the same readings:
`cityos.traffic.accidents.AccidentDetector` (`cityos`: occupancy tests and the flow-scaled conservation
test), the same detector with the earlier fixed-window interruption rule (`previous`), and a baseline
speed-drop alarm (upstream speed under 4 m/s with occupancy over 25% for two intervals), the simplest
rule an operator would set.

The `cityos` detector's `both` figures also include its lane-shift test (`observe_lanes`: a station pair
read lane by lane, a lane whose share of the downstream vehicles collapses; `--shift-p 0` turns it off,
i.e. the detector as of 2026-12-05). Probe vehicles (`--probe-share` of the fleet, chosen by id, position,
lane and speed every 10 s) are recorded with the readings for analysis; no detector uses them.

Video or radar zones (`zone`): every lane of the arterials (the two-lane roads, where loops miss blockages that
traffic passes in the other lane) is watched, as cameras or radars every ~250 m would; each interval a lane's
zone reports its standing vehicles (distance to the stop line, seconds stood: SUMO's waiting time), scored by
`cityos.traffic.stalls.StallDetector` (`--stalled-s`, `--confirm`); false alarms per camera-day, one camera per
loop position of a watched lane. `all`: the loops' tests (`both`) and the zones together, per detector-day of both;
`zoned`: the zones on the roads they watch and the loops' tests on the other roads (the live watch's default).

Reported: the detection time of each accident (an alarm on its lane's edge or a road section feeding it,
minus the onset), p50/p90 over the detected ones and over all (`p90_all_s`, a miss counting as never),
the share within 5 minutes; false alarms (alarms with no blockage there) per detector-day. `--record`
keeps the simulation's readings, `--replay` scores such a recording without SUMO (the detectors do not
act on the simulation, so a replay gives the same alarms). One JSON line.

Protocols. The original one (`--horizon 1800 --first 300`) injects the first blockage at 300 s, when the
simulated network holds a quarter of its later traffic and the detectors have learned nothing: a live
platform never sees that (it runs continuously through a network that is never empty). The warm-up
protocol discards a warm-up period, as simulation studies do (`--horizon 2400 --first 900`: the same
blockage spacing, the first one at 900 s), and gives the detectors what a running platform has learned:
`--warm-up R` first feeds them a recording R of the same network with another seed and no blockage
(`--accidents 0`), keeps each pair's learned shares and forgets its recent intervals, then scores.
"""



from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

from cityos.traffic.accidents import (
    INTERVAL_S,
    AccidentDetector,
    PairState,
    ShiftState,
    StationReading,
    Thresholds,
)
from cityos.traffic.citynet import build_network, write_demand
from cityos.traffic.stalls import StallDetector, StallThresholds, StoppedVehicle
from cityos.traffic.sumo import load_libsumo, sumo_binary, sumo_home, zone_lanes, zone_report

MIN_LANE_M = 150.0
PAIRINGS = ("station", "lane")


@dataclass
class Accident:
    lane: str
    edge: str
    onset: float
    vehicle: str
    cleared: float
    position: float = 0.0  # m from the lane's start


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
PROBE_EVERY_S = 10


def is_probe(vehicle: str, share: float) -> bool:
    """A fixed share of the fleet reports as probes (taxis, buses, fleet vehicles), chosen by id."""
    return zlib.crc32(vehicle.encode()) % 1000 < share * 1000


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


def station(readings: list[StationReading]) -> StationReading:
    """A detector station: the loops across all lanes at one position (occupancy averaged, counts summed)."""
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
    position = round(float(sim.vehicle.getLanePosition(vehicle)), 1)
    sim.vehicle.setLaneChangeMode(vehicle, 0)
    sim.vehicle.setSpeed(vehicle, 0.0)
    edge = lane.rsplit("_", 1)[0]
    used.add(edge)
    return Accident(lane, edge, now, vehicle, now + duration, position)


def probe_report(sim: Any, vehicle: str) -> tuple[str, str, float, float]:
    return (vehicle, str(sim.vehicle.getLaneID(vehicle)), round(float(sim.vehicle.getLanePosition(vehicle)), 1),
            round(float(sim.vehicle.getSpeed(vehicle)), 2))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def score(alarms: list[tuple[str, float]], accidents: list[Accident], feeds: dict[str, set[str]],
          detector_days: float) -> dict[str, Any]:
    """Detection time of each accident (an alarm on its edge or one feeding it) and the other alarms."""
    def near(edge: str, a: Accident) -> bool:
        return edge == a.edge or edge in feeds.get(a.edge, set())

    false_alarms = sum(not any(near(edge, a) and a.onset <= at <= a.cleared + 300 for a in accidents)
                       for edge, at in alarms)
    times: list[float | None] = []
    for a in accidents:
        hits = [at - a.onset for edge, at in alarms if near(edge, a) and a.onset <= at <= a.cleared]
        times.append(min(hits) if hits else None)
    found = [t for t in times if t is not None]
    p90_all = percentile([t if t is not None else math.inf for t in times], 0.9)
    return {"detected": len(found), "accidents": len(accidents), "detection_s": times,
            "p50_s": percentile(found, 0.5), "p90_s": percentile(found, 0.9),
            "p90_all_s": p90_all if p90_all is None or math.isfinite(p90_all) else None,  # a miss counts as never
            "within_5_min": round(sum(t <= 300 for t in found) / max(1, len(accidents)), 3),
            "false_alarms": false_alarms, "false_alarms_per_detector_day": round(false_alarms / detector_days, 3)}


@dataclass
class Recording:
    """What the simulation saw: every loop's reading each interval, the stations, the accidents."""

    positions_of: dict[str, list[list[str]]]  # edge → per position, the loops across its lanes
    feeds: dict[str, list[str]]  # edge → edges feeding it (a queue may spill back into them)
    accidents: list[Accident]
    frames: list[tuple[float, dict[str, tuple[float, float, int]]]]  # (time, loop → occupancy, speed, vehicles)
    # Probe vehicles (a share of the fleet, e.g. taxis, reporting every PROBE_EVERY_S): (time, [(vehicle, lane,
    # position m, speed m/s)]); empty in recordings made before probes were recorded.
    probes: list[tuple[float, list[tuple[str, str, float, float]]]] = field(default_factory=list)
    # Video/radar zones on the arterials' lanes (two-lane roads), every interval: (time, lane → [(distance to the
    # stop line m, seconds stood still)] of the vehicles standing in it); empty in recordings made before zones.
    zones: list[tuple[float, dict[str, list[tuple[float, float]]]]] = field(default_factory=list)


def simulate(args: argparse.Namespace) -> Recording:
    import sumolib

    sim = load_libsumo()
    sumo_home()
    with tempfile.TemporaryDirectory(prefix="cityos-accident-bench-") as tmp:
        work = Path(tmp)
        net = build_network(work)
        routes = write_demand(net, work / "demand.rou.xml", seed=args.seed, horizon=args.horizon)
        lanes = loops_file(net, work / "loops.add.xml")
        feeds = {edge.getID(): sorted(e.getID() for e in edge.getIncoming())
                 for edge in sumolib.net.readNet(str(net)).getEdges()}
        sim.start([sumo_binary("sumo"), "-n", str(net), "-r", str(routes), "-a", str(work / "loops.add.xml"),
                   "-e", str(args.horizon), "--seed", str(args.seed), "--no-step-log", "true",
                   "--no-warnings", "true", "--time-to-teleport", "600", "--ignore-route-errors", "true"])
        positions_of: dict[str, list[list[str]]] = {}
        for lane, loops in sorted(lanes.items()):
            positions = positions_of.setdefault(lane.rsplit("_", 1)[0], [[] for _ in loops])
            for k, loop in enumerate(loops):
                positions[k].append(loop)
        rng = random.Random(args.seed)
        gap = (args.horizon - args.first - args.duration / 2) / max(1, args.accidents)
        onsets = [args.first + k * gap for k in range(args.accidents)]
        accidents: list[Accident] = []
        used: set[str] = set()
        frames: list[tuple[float, dict[str, tuple[float, float, int]]]] = []
        probes: list[tuple[float, list[tuple[str, str, float, float]]]] = []
        zones: list[tuple[float, dict[str, list[tuple[float, float]]]]] = []
        watched = zone_lanes(lanes)
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
                if int(now) % PROBE_EVERY_S == 0:
                    probes.append((now, [probe_report(sim, v) for v in sim.vehicle.getIDList()
                                         if is_probe(v, args.probe_share)]))
                if int(now) % int(INTERVAL_S) == 0:
                    frames.append((now, {loop: astuple(reading(sim, loop)) for loops in lanes.values()
                                         for loop in loops}))
                    zones.append((now, {lane: seen for lane in watched if (seen := zone_report(sim, lane))}))
        finally:
            sim.close()
    return Recording(positions_of, feeds, accidents, frames, probes, zones)


Detectors = dict[tuple[str, str], AccidentDetector]


def new_detectors(thresholds: Thresholds) -> Detectors:
    return {(pairs, rule): AccidentDetector(replace(thresholds, flow_scaled=rule == "cityos"))
            for pairs in PAIRINGS for rule in ("cityos", "previous")}


def keep_learned(detectors: Detectors) -> None:
    """After a warm-up recording: keep what each pair learned (its shares), forget its recent intervals and open
    episodes, as a detector that ran through the night before the morning's traffic would have."""
    for detector in detectors.values():
        for pair, state in detector.states.items():
            detector.states[pair] = PairState(seen_up=state.seen_up, seen_down=state.seen_down)
        for pair, shift in detector.shifts.items():
            detector.shifts[pair] = ShiftState(shift.lanes, seen_up=list(shift.seen_up),
                                               seen_down=list(shift.seen_down))


def detect(recording: Recording, thresholds: Thresholds,
           detectors: Detectors | None = None) -> list[tuple[str, str, float, str]]:
    """Every interval, each pair's readings to the detectors: the alarms (pairing, edge, time, which)."""
    detectors = new_detectors(thresholds) if detectors is None else detectors
    baselines = {pairs: SpeedDrop() for pairs in PAIRINGS}
    alarms: list[tuple[str, str, float, str]] = []
    for now, frame in recording.frames:
        for edge, positions in recording.positions_of.items():
            per_lane = [[StationReading(*frame[loop]) for loop in loops] for loops in positions]
            series = {"station": {f"{edge}_all": [station(values) for values in per_lane]},
                      "lane": {loops[0].split(":", 1)[1]: [values[i] for values in per_lane]
                               for i, loops in enumerate(zip(*positions, strict=True))}}
            if len(per_lane[0]) > 1:  # the lane-shift test: a station pair read lane by lane (cityos only)
                for k in range(len(per_lane) - 1):
                    if detectors["station", "cityos"].observe_lanes(f"{edge}#{k}", per_lane[k], per_lane[k + 1], now):
                        alarms.append(("shift", edge, now, "cityos"))
            for pairs, keyed in series.items():
                for key, values in keyed.items():
                    for k in range(len(values) - 1):
                        pair = f"{key}#{k}"
                        for rule in ("cityos", "previous"):
                            if detectors[pairs, rule].observe(pair, values[k], values[k + 1], now,
                                                              all_lanes=pairs == "station"):
                                alarms.append((pairs, edge, now, rule))
                        if baselines[pairs].observe(pair, values[k], now):
                            alarms.append((pairs, edge, now, "baseline"))
    return alarms


def looped_lanes(positions_of: dict[str, list[list[str]]]) -> list[str]:
    """The lanes carrying loops, from a recording's stations (each loop id is `loop<k>:<lane>`)."""
    return [loops[0].split(":", 1)[1] for positions in positions_of.values() for loops in zip(*positions, strict=True)]


def detect_zones(recording: Recording, thresholds: StallThresholds) -> list[tuple[str, str, float, str]]:
    """Every interval, each watched lane's standing vehicles to the stalled-vehicle test: its alarms."""
    detector = StallDetector(thresholds)
    alarms: list[tuple[str, str, float, str]] = []
    watched = zone_lanes(looped_lanes(recording.positions_of))
    for now, seen in recording.zones:
        for lane in watched:
            stopped = [StoppedVehicle(distance, stood) for distance, stood in seen.get(lane, [])]
            if detector.observe(lane, stopped, now):
                alarms.append(("zone", lane.rsplit("_", 1)[0], now, "cityos"))
    return alarms


def load(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as source:
        saved: dict[str, Any] = json.load(source)
    return saved


def as_recording(saved: dict[str, Any]) -> Recording:
    return Recording(saved["positions_of"], saved["feeds"], [Accident(**a) for a in saved["accidents"]],
                     [(now, {loop: tuple(v) for loop, v in frame.items()}) for now, frame in saved["frames"]],
                     [(now, [tuple(p) for p in seen]) for now, seen in saved.get("probes", [])],
                     [(now, {lane: [tuple(v) for v in seen] for lane, seen in zone.items()})
                      for now, zone in saved.get("zones", [])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--horizon", type=int, default=3600)
    parser.add_argument("--accidents", type=int, default=8)
    parser.add_argument("--first", type=float, default=600.0)
    parser.add_argument("--duration", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--probe-share", type=float, default=0.1,
                        help="share of vehicles recorded as probes (position and speed every 10 s)")
    parser.add_argument("--record", type=Path, help="also write the simulation's readings here (JSON, gzip)")
    parser.add_argument("--replay", type=Path, help="score readings recorded earlier instead of simulating")
    parser.add_argument("--false-alarm-p", type=float, default=Thresholds().false_alarm_p,
                        help="the conservation test's threshold on lane pairs (another operating point)")
    parser.add_argument("--shift-p", type=float, default=Thresholds().shift_p,
                        help="the lane-shift test's threshold (0: off, the detector as of 2026-12-05)")
    parser.add_argument("--all-lanes-false-alarm-p", type=float, default=Thresholds().all_lanes_false_alarm_p,
                        help="… and on station pairs")
    parser.add_argument("--stalled-s", type=float, default=StallThresholds().stalled_s,
                        help="zones: seconds a vehicle heading its own standstill must have stood")
    parser.add_argument("--confirm", type=int, default=StallThresholds().confirm,
                        help="zones: readings in a row that show the same stalled vehicle")
    parser.add_argument("--warm-up", type=Path,
                        help="a recording of the same network (another seed) the detectors learn from first")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.replay:
        saved = load(args.replay)
        args.horizon, args.seed = saved["horizon"], saved["seed"]
        recording = as_recording(saved)
    else:
        recording = simulate(args)
    if args.record:
        with gzip.open(args.record, "wt") as sink:
            json.dump({"horizon": args.horizon, "seed": args.seed, "positions_of": recording.positions_of,
                       "feeds": recording.feeds, "accidents": [asdict(a) for a in recording.accidents],
                       "frames": recording.frames, "probes": recording.probes,
                       "zones": recording.zones}, sink)
    thresholds = Thresholds(false_alarm_p=args.false_alarm_p, shift_p=args.shift_p,
                            all_lanes_false_alarm_p=args.all_lanes_false_alarm_p)
    detectors = new_detectors(thresholds)
    if args.warm_up:
        # The warm-up protocol: the detectors first see another day's recording of the same network (its own
        # seed, no blockage), as a platform that runs continuously has; its alarms are not scored.
        before = as_recording(load(args.warm_up))
        if before.positions_of != recording.positions_of:
            parser.error("the warm-up recording is of another network or other loops")
        detect(before, thresholds, detectors)
        keep_learned(detectors)
    alarms = detect(recording, thresholds, detectors)
    alarms += detect_zones(recording, StallThresholds(stalled_s=args.stalled_s, confirm=args.confirm))
    positions_of, accidents = recording.positions_of, recording.accidents
    feeds = {edge: set(sources) for edge, sources in recording.feeds.items()}
    counts = {"station": sum(len(positions) - 1 for positions in positions_of.values()),
              "lane": sum((len(positions) - 1) * len(positions[0]) for positions in positions_of.values())}
    # "both": the station pairs' alarms and the lane pairs' together (a deployment with both kinds of pairs
    # on the same loops), per lane-pair-day (the loops are the lane pairs'; a station pair adds none).
    counts["both"] = counts["lane"]
    # Zones: the arterials' lanes, a camera or radar per ~250 m of lane (one per loop position, as the loops);
    # "all": the loops' tests and the zones together, per detector-day of both kinds; "zoned": the live watch's
    # default where zones report (`accident_watch`): the zones decide on the roads they watch, the loops' tests
    # on the others.
    watched = set(zone_lanes(looped_lanes(positions_of)))
    zoned = {lane.rsplit("_", 1)[0] for lane in watched}
    counts["zone"] = sum(len(positions) * len(positions[0]) for edge, positions in positions_of.items()
                         if edge in zoned)
    counts["all"] = counts["lane"] + counts["zone"]
    counts["zoned"] = counts["zone"] + sum((len(positions) - 1) * len(positions[0])
                                           for edge, positions in positions_of.items() if edge not in zoned)
    report: dict[str, Any] = {}
    for pairs in (*PAIRINGS, "both", "zone", "all", "zoned"):
        detector_days = counts[pairs] * args.horizon / 86400.0
        report[pairs] = {"detector_pairs": counts[pairs], "detector_days": round(detector_days, 2)}
        for which in ("cityos", "previous", "baseline"):
            mine = [(edge, at) for pairing, edge, at, who in alarms if who == which and (
                pairs in (pairing, "all") or (pairs == "both" and pairing != "zone")
                or (pairs == "zoned" and (pairing == "zone" or edge not in zoned)))]
            report[pairs][which] = score(mine, accidents, feeds, detector_days)
            print(f"{pairs:7s} {which:8s} detected {report[pairs][which]['detected']}/{len(accidents)}  "
                  f"p90 {report[pairs][which]['p90_s']} s  false alarms {report[pairs][which]['false_alarms']} "
                  f"({report[pairs][which]['false_alarms_per_detector_day']}/detector-day)", file=sys.stderr)
    print(json.dumps({"bench": "accident_detection", "horizon_s": args.horizon, "seed": args.seed,
                      "replayed": bool(args.replay), "false_alarm_p": args.false_alarm_p,
                      "all_lanes_false_alarm_p": args.all_lanes_false_alarm_p, "shift_p": args.shift_p,
                      "warm_up": str(args.warm_up) if args.warm_up else None,
                      "accidents": [{"lane": a.lane, "onset": a.onset, "position_m": a.position}
                                    for a in accidents], **report,
                      "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
