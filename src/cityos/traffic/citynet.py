"""The simulated city's road grid (9 north–south × 6 east–west roads) as a SUMO network, with demand.

The roads of `cityos.sim.city` are projected to metres, cut where they cross (54 signalised
intersections) and written as plain nodes and edges for `netconvert` (from the eclipse-sumo wheel).
Arterials get two lanes at 60 km/h, streets one lane at 50 km/h. Demand is a seeded stream of trips
between random road sections whose rate follows the city's daily traffic pattern
(`cityos.sim.signals.traffic_factor`), starting at a weekday morning peak by default.
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import itertools
import math
import random
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import networkx as nx

from cityos.sim.city import City, build_city
from cityos.sim.signals import traffic_factor
from cityos.traffic.congestion.grid import grid_nodes
from cityos.traffic.sumo import Scenario, sumo_binary

PEAK_VEHICLES_PER_HOUR = 9000.0  # trips starting per hour at the weekday peak (traffic_factor = 1)
# Monday 2026-03-02 07:30 in Haikou (UTC+8) = 23:30 UTC the day before.
MORNING_PEAK_UTC = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


def _metres(city: City) -> tuple[float, float, float]:
    minx, miny, _maxx, _maxy = city.bbox
    return minx, miny, math.cos(math.radians((city.bbox[1] + city.bbox[3]) / 2))


def _xy(lon: float, lat: float, origin: tuple[float, float, float]) -> tuple[float, float]:
    minx, miny, coslat = origin
    return round((lon - minx) * 111_320.0 * coslat, 1), round((lat - miny) * 110_540.0, 1)


def grid(city: City) -> tuple[dict[str, tuple[float, float, str]], dict[str, list[str]]]:
    """The grid's nodes {id: (lon, lat, kind)} (crossings `J{i}_{j}` are signalised) and each road's
    chain of nodes in order; an edge `a--b` joins neighbours of a chain, both ways."""
    nodes, along = grid_nodes(city)
    return nodes, {road: [n for _, n in sorted(chain)] for road, chain in along.items()}


def road_graph(city: City) -> nx.DiGraph:
    """The grid as a directed graph: nodes with `lon`/`lat`, edges with the SUMO edge `id` and `length` (m)."""
    nodes, chains = grid(city)
    origin = _metres(city)
    g = nx.DiGraph()
    for node, (lon, lat, _kind) in nodes.items():
        g.add_node(node, lon=lon, lat=lat)
    for chain in chains.values():
        for a, b in itertools.pairwise(chain):
            (xa, ya), (xb, yb) = _xy(*nodes[a][:2], origin), _xy(*nodes[b][:2], origin)
            length = math.hypot(xb - xa, yb - ya)
            for src, dst in ((a, b), (b, a)):
                g.add_edge(src, dst, id=f"{src}--{dst}", length=length)
    return g


def write_plain_network(city: City, directory: Path) -> tuple[Path, Path]:
    """Plain XML nodes and edges of the city's road grid; returns their paths."""
    origin = _metres(city)
    nodes, chains = grid(city)
    node_root = ET.Element("nodes")
    for node, (lon, lat, kind) in nodes.items():
        x, y = _xy(lon, lat, origin)
        ET.SubElement(node_root, "node", id=node, x=f"{x}", y=f"{y}", type=kind)
    edge_root = ET.Element("edges")
    for road in city.roads:
        chain = chains[road.id]
        lanes, speed = ("2", "16.67") if road.category == "arterial" else ("1", "13.89")
        for a, b in itertools.pairwise(chain):
            for src, dst in ((a, b), (b, a)):
                ET.SubElement(edge_root, "edge", id=f"{src}--{dst}", attrib={"from": src, "to": dst},
                              numLanes=lanes, speed=speed, priority="2" if road.category == "arterial" else "1")
    nod, edg = directory / "city.nod.xml", directory / "city.edg.xml"
    ET.ElementTree(node_root).write(nod, encoding="utf-8", xml_declaration=True)
    ET.ElementTree(edge_root).write(edg, encoding="utf-8", xml_declaration=True)
    return nod, edg


def build_network(directory: Path, seed: int = 42) -> Path:
    """netconvert the city's grid into `city.net.xml` in `directory` (cached by seed)."""
    directory.mkdir(parents=True, exist_ok=True)
    net = directory / f"city-{seed}.net.xml"
    if net.exists():
        return net
    nod, edg = write_plain_network(build_city(seed), directory)
    subprocess.run([sumo_binary("netconvert"), "--node-files", str(nod), "--edge-files", str(edg),  # noqa: S603
                    "-o", str(net), "--no-turnarounds", "true", "--tls.default-type", "static",
                    "--tls.yellow.time", "3", "--no-warnings", "true"], check=True, capture_output=True)
    return net


def write_demand(net: Path, path: Path, *, seed: int, horizon: int, start: datetime = MORNING_PEAK_UTC,
                 peak_per_hour: float = PEAK_VEHICLES_PER_HOUR) -> Path:
    """Seeded trips between road sections; the arrival rate follows the city's daily pattern."""
    import sumolib

    network = sumolib.net.readNet(str(net))
    edges = [e for e in network.getEdges() if e.getFunction() == ""]
    origins = sorted(e.getID() for e in edges if e.getOutgoing())  # not into a dead end
    destinations = sorted(e.getID() for e in edges if e.getIncoming())
    rng = random.Random(seed)
    root = ET.Element("routes")
    ET.SubElement(root, "vType", id="car", accel="2.6", decel="4.5", sigma="0.5", length="5", maxSpeed="20")
    t, n = 0.0, 0
    base = start.timestamp()
    while True:
        rate = peak_per_hour * traffic_factor(base + t) / 3600.0
        t += rng.expovariate(max(rate, 1e-6))
        if t >= horizon:
            break
        origin, destination = rng.choice(origins), rng.choice(destinations)
        if origin == destination:
            continue
        ET.SubElement(root, "trip", id=f"t{n}", type="car", depart=f"{t:.1f}",
                      attrib={"from": origin, "to": destination}, departLane="best", departSpeed="max")
        n += 1
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def city_scenario(directory: Path, *, seed: int = 1, horizon: int = 3600, city_seed: int = 42,
                  peak_per_hour: float = PEAK_VEHICLES_PER_HOUR) -> Scenario:
    net = build_network(directory, city_seed)
    routes = write_demand(net, directory / f"city-{city_seed}-{seed}-{horizon}.rou.xml", seed=seed,
                          horizon=horizon, peak_per_hour=peak_per_hour)
    return Scenario("city9x6", net, (routes,), 0, horizon)
