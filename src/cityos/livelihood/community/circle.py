"""The 15-minute living circle (15 分钟生活圈): what each community reaches on foot along the street network.

The street graph is built from the hub's `Road` lines, split where they cross (shapely's noding), with edge
lengths in metres; walking distances are Dijkstra distances (networkx) from the community's centre, plus the
straight walk from each point to the street. A place counts when it is reachable within the walking budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import shapely
from shapely.geometry import LineString, MultiLineString, mapping

from cityos.hub.geoquery import haversine

WALK_METRES_PER_MINUTE = 80.0  # 4.8 km/h, the planning norm for an unhurried adult
# What a community should reach (GB 50180-2018 居住区 15-minute circle), and the POI categories that serve it.
NEEDS: dict[str, tuple[str, ...]] = {
    "clinic": ("hospital", "clinic"), "school": ("school",), "market": ("market",), "park": ("park",),
    "eldercare": ("eldercare",), "busStop": ("busStop",)}
NEED_LABELS = {"clinic": "社区卫生服务 Clinic", "school": "学校 School", "market": "菜市场 Market",
               "park": "公园 Park", "eldercare": "养老服务 Elderly care", "busStop": "公交站 Bus stop"}
Node = tuple[float, float]


@dataclass(frozen=True)
class Place:
    id: str
    name: str
    category: str
    lon: float
    lat: float


def _node(x: float, y: float) -> Node:
    return (round(x, 6), round(y, 6))


def street_graph(lines: Iterable[LineString]) -> nx.Graph:
    """An undirected graph of the streets, with a node at every crossing and bend; weights in metres."""
    graph = nx.Graph()
    valid = [line for line in lines if isinstance(line, LineString) and not line.is_empty]
    if not valid:
        return graph
    noded = shapely.node(MultiLineString(valid))
    for segment in getattr(noded, "geoms", [noded]):
        coords = list(segment.coords)
        for (x1, y1), (x2, y2) in itertools.pairwise(coords):
            a, b = _node(x1, y1), _node(x2, y2)
            if a != b:
                graph.add_edge(a, b, weight=haversine(x1, y1, x2, y2))
    return graph


def nearest_node(graph: nx.Graph, lon: float, lat: float) -> tuple[Node, float]:
    """The closest street node and the straight walk to it (metres)."""
    best = min(graph.nodes, key=lambda node: (node[0] - lon) ** 2 + (node[1] - lat) ** 2)
    return best, haversine(lon, lat, best[0], best[1])


def walking_distances(graph: nx.Graph, lon: float, lat: float, minutes: float) -> dict[Node, float]:
    """Metres to every street node reachable within `minutes` from the point."""
    budget = minutes * WALK_METRES_PER_MINUTE
    start, access = nearest_node(graph, lon, lat)
    if access > budget:
        return {}
    reached: dict[Node, float] = nx.single_source_dijkstra_path_length(graph, start, cutoff=budget - access)
    return {node: metres + access for node, metres in reached.items()}


def reachable(graph: nx.Graph, reached: dict[Node, float], places: Iterable[Place],
              minutes: float) -> list[tuple[Place, float]]:
    budget = minutes * WALK_METRES_PER_MINUTE
    out = []
    for place in places:
        node, access = nearest_node(graph, place.lon, place.lat)
        if node in reached and reached[node] + access <= budget:
            out.append((place, reached[node] + access))
    return sorted(out, key=lambda item: item[1])


def isochrone(graph: nx.Graph, reached: dict[Node, float]) -> dict[str, Any] | None:
    """The area within reach, as GeoJSON: the reachable streets, buffered by a short walk to the door (~60 m)."""
    segments = [LineString([a, b]) for a, b in graph.edges if a in reached and b in reached]
    if not segments:
        return None
    area = shapely.union_all([segment.buffer(0.0006) for segment in segments])
    return dict(mapping(shapely.simplify(area, 0.0002)))


def circle_of(graph: nx.Graph, name: str, lon: float, lat: float, places: list[Place],
              minutes: float) -> dict[str, Any]:
    """One community's circle: what it reaches per need, the gaps, and the isochrone."""
    reached = walking_distances(graph, lon, lat, minutes) if graph.number_of_nodes() else {}
    found = reachable(graph, reached, places, minutes) if reached else []
    by_need: dict[str, list[dict[str, Any]]] = {need: [] for need in NEEDS}
    for place, metres in found:
        for need, categories in NEEDS.items():
            if place.category in categories:
                by_need[need].append({"id": place.id, "name": place.name, "metres": round(metres),
                                      "lon": place.lon, "lat": place.lat,
                                      "minutes": round(metres / WALK_METRES_PER_MINUTE, 1)})
    gaps = [need for need, items in by_need.items() if not items]
    return {"community": name, "centre": [lon, lat], "minutes": minutes, "reach": by_need,
            "gaps": gaps, "gapLabels": [NEED_LABELS[need] for need in gaps],
            "isochrone": isochrone(graph, reached) if reached else None}
