"""The simulated city's road grid cut into road segments (路段) between intersections, with geometry.

The same crossings the SUMO network (`cityos.traffic.citynet`) and the cockpit's base map come from:
every north–south road meets every east–west road once, and a road's segments run from crossing to
crossing (and out to its two ends). Each segment keeps its two end nodes, so the segments form the
undirected road graph that diversion advice routes on.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from shapely.geometry import LineString, Point
from shapely.ops import substring

from cityos.sim.basemap import zh_name
from cityos.sim.city import City, build_city

# Free-flow speeds (km/h) the advice's travel times start from, as the SUMO network sets them.
FREE_SPEED_KMH = {"arterial": 60.0, "secondary": 50.0}
METRES_PER_DEGREE_LON = 111_320.0  # at the equator
METRES_PER_DEGREE_LAT = 110_540.0


@dataclass(frozen=True)
class Section:
    id: str
    name: str
    road: str
    road_class: str   # arterial | secondary (GB/T 33171 classes)
    district: str
    length_m: float
    line: LineString  # lon/lat
    start: str        # node names: J{i}_{j} at a crossing, {road}-s / {road}-e at a road's ends
    end: str

    @property
    def minutes(self) -> float:
        return self.length_m / 1000.0 / FREE_SPEED_KMH.get(self.road_class, 50.0) * 60.0

    def geojson(self) -> dict[str, object]:
        return {"type": "LineString", "coordinates": [[round(x, 6), round(y, 6)] for x, y in self.line.coords]}


def grid_nodes(city: City) -> tuple[dict[str, tuple[float, float, str]], dict[str, list[tuple[float, str]]]]:
    """Nodes {name: (lon, lat, kind)} and, per road, its nodes with their position along it (degrees)."""
    ns_roads = [r for r in city.roads if r.id.startswith("road-ns-")]
    ew_roads = [r for r in city.roads if r.id.startswith("road-ew-")]
    nodes: dict[str, tuple[float, float, str]] = {}
    along: dict[str, list[tuple[float, str]]] = {r.id: [] for r in city.roads}
    for i, ns in enumerate(ns_roads):
        for j, ew in enumerate(ew_roads):
            crossing = ns.line.intersection(ew.line)
            point = crossing if isinstance(crossing, Point) else crossing.centroid
            node = f"J{i}_{j}"
            nodes[node] = (point.x, point.y, "traffic_light")
            along[ns.id].append((ns.line.project(point), node))
            along[ew.id].append((ew.line.project(point), node))
    for road in city.roads:
        start, end = road.line.coords[0], road.line.coords[-1]
        for tag, (lon, lat), position in (("s", start, 0.0), ("e", end, road.line.length)):
            node = f"{road.id}-{tag}"
            nodes[node] = (lon, lat, "priority")
            along[road.id].append((position, node))
    for chain in along.values():
        chain.sort()
    return nodes, along


def _metres(line: LineString) -> float:
    """Length in metres on the local plane (the projection `citynet` gives SUMO)."""
    coslat = math.cos(math.radians(line.centroid.y))
    return sum(math.hypot((b[0] - a[0]) * METRES_PER_DEGREE_LON * coslat, (b[1] - a[1]) * METRES_PER_DEGREE_LAT)
               for a, b in itertools.pairwise(line.coords))


def sections(city: City) -> list[Section]:
    """Every segment of the grid, in road order."""
    _nodes, along = grid_nodes(city)
    out: list[Section] = []
    for road in city.roads:
        road_class = "arterial" if road.category == "arterial" else "secondary"
        name = zh_name(road.name) or road.name
        for k, ((a_pos, a), (b_pos, b)) in enumerate(itertools.pairwise(along[road.id])):
            if b_pos - a_pos <= 1e-9:
                continue
            line = substring(road.line, a_pos, b_pos)
            if not isinstance(line, LineString) or line.length == 0:
                continue
            district = city.district_at(line.interpolate(0.5, normalized=True)).name
            out.append(Section(f"{road.id}-{k:02d}", f"{name} {k + 1}段", road.id, road_class, district,
                               round(_metres(line), 1), line, a, b))
    return out


@functools.lru_cache(maxsize=4)
def city_sections(seed: int) -> tuple[Section, ...]:
    return tuple(sections(build_city(seed)))


def road_graph(items: Mapping[str, Section] | list[Section] | tuple[Section, ...]
               ) -> dict[str, dict[str, tuple[str, float]]]:
    """{node: {next node: (segment id, free-flow minutes)}}, both directions of every segment."""
    graph: dict[str, dict[str, tuple[str, float]]] = {}
    for section in (items.values() if isinstance(items, Mapping) else items):
        graph.setdefault(section.start, {})[section.end] = (section.id, section.minutes)
        graph.setdefault(section.end, {})[section.start] = (section.id, section.minutes)
    return graph
