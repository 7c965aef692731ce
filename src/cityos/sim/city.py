"""A synthetic, Haikou-like city built from a seed: districts, a road grid, rivers and points of interest.

The districts are a Voronoi tessellation of the city's bounding box (relaxed a little so that none
is a sliver), which makes them tile the city exactly: no gaps, no overlaps, and a neighbour graph
for pollution episodes to spread along.
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import os
import random
from collections import deque
from dataclasses import dataclass, field

import shapely
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box

# Roughly Haikou: the coast is to the north, the Nandu River runs south to north in the east.
DEFAULT_BBOX = (110.20, 19.95, 110.45, 20.10)

DISTRICT_NAMES = [
    "Xiuying", "Longhua", "Qiongshan", "Meilan", "Haidian", "Binhai", "Jinpan", "Guoxing", "Fucheng",
    "Baishamen", "Xinbu", "Lingshan", "Yehai", "Changliu", "Dongshan", "Shishan", "Yongxing", "Sanjiang",
]
NS_ROAD_NAMES = ["Xiuying Road", "Longkun Road", "Haixiu Road", "Guomao Road", "Datong Road", "Haifu Road",
                 "Qiongshan Avenue", "Lingshan Avenue", "Xinda Road", "Meilan Road", "Jiangdong Road"]
EW_ROAD_NAMES = ["Binhai Avenue", "Changdi Road", "Jinmao Road", "Nanhai Avenue", "Longhua Road",
                 "Fengxiang Road", "Baiyi Road", "Nansha Road", "Yehai Avenue", "Guoxing Avenue"]
RIVER_NAMES = ["Nandu River", "Meishe River", "Wuyuan River"]
POI_KINDS = {"school": (3, 6), "hospital": (1, 2), "carPark": (3, 6), "eldercare": (1, 2)}


@dataclass(frozen=True)
class District:
    id: str
    name: str
    polygon: Polygon
    population: int
    neighbours: tuple[str, ...] = ()


@dataclass(frozen=True)
class Road:
    id: str
    name: str
    line: LineString
    category: str  # "arterial" or "street"


@dataclass(frozen=True)
class River:
    id: str
    name: str
    line: LineString


@dataclass(frozen=True)
class PointOfInterest:
    id: str
    kind: str  # school, hospital, carPark, eldercare
    name: str
    point: Point
    district_id: str


@dataclass
class City:
    seed: int
    bbox: tuple[float, float, float, float]
    districts: list[District]
    roads: list[Road]
    rivers: list[River]
    pois: list[PointOfInterest]
    _by_id: dict[str, District] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {d.id: d for d in self.districts}

    def district(self, district_id: str) -> District:
        return self._by_id[district_id]

    def district_at(self, point: Point) -> District:
        """The district a point falls in; points on a border go to the first one found."""
        for district in self.districts:
            if district.polygon.covers(point):
                return district
        # Floating-point slivers at the bbox edge: take the nearest district.
        return min(self.districts, key=lambda d: d.polygon.distance(point))

    def hops_from(self, origin: str) -> dict[str, int]:
        """Graph distance from a district to every other one (breadth-first over shared borders)."""
        hops = {origin: 0}
        queue = deque([origin])
        while queue:
            current = queue.popleft()
            for nxt in self._by_id[current].neighbours:
                if nxt not in hops:
                    hops[nxt] = hops[current] + 1
                    queue.append(nxt)
        return hops


def shown_city_seed() -> int:
    """The seed of the city the platform shows (base map, road grid): CITYOS_MAP_SEED, else 42."""
    try:
        return int(os.environ.get("CITYOS_MAP_SEED", "42"))
    except ValueError:
        return 42


def build_city(seed: int = 42, districts: int = 10, bbox: tuple[float, float, float, float] = DEFAULT_BBOX) -> City:
    """Build the whole city from `seed`; the same seed always gives the same city."""
    if districts < 2:
        raise ValueError("a city needs at least two districts")
    rng = random.Random(seed)
    area = box(*bbox)
    polygons = _districts(rng, area, districts)
    built = _with_neighbours(rng, polygons)
    roads = _roads(rng, bbox)
    rivers = _rivers(rng, bbox)
    city = City(seed, bbox, built, roads, rivers, [])
    city.pois.extend(_pois(rng, city))
    return city


def _districts(rng: random.Random, area: Polygon, count: int) -> list[Polygon]:
    minx, miny, maxx, maxy = area.bounds
    points = [(rng.uniform(minx, maxx), rng.uniform(miny, maxy)) for _ in range(count)]
    # Two rounds of Lloyd relaxation: random Voronoi cells are often slivers, relaxed ones look like districts.
    for _ in range(3):
        cells = _voronoi(points, area)
        points = [(c.centroid.x, c.centroid.y) for c in cells]
    cells = _voronoi(points, area)
    # Order north-west to south-east so district numbers read like a map.
    return sorted(cells, key=lambda c: (-round(c.centroid.y, 2), c.centroid.x))


def _voronoi(points: list[tuple[float, float]], area: Polygon) -> list[Polygon]:
    regions = shapely.voronoi_polygons(MultiPoint(points), extend_to=area)
    cells: list[Polygon] = []
    for point in points:
        for region in regions.geoms:
            if region.covers(Point(point)):
                clipped = region.intersection(area)
                # Round the vertices so GeoJSON stays small; the tessellation stays exact because
                # neighbours share the very same vertices before and after rounding.
                cells.append(shapely.set_precision(clipped, 1e-6))
                break
    return cells


def _with_neighbours(rng: random.Random, polygons: list[Polygon]) -> list[District]:
    names = list(DISTRICT_NAMES)
    rng.shuffle(names)
    ids = [f"district-{i + 1:02d}" for i in range(len(polygons))]
    result = []
    for i, poly in enumerate(polygons):
        # Neighbours share a border line, not just a corner point.
        near = tuple(ids[j] for j, other in enumerate(polygons)
                     if j != i and poly.intersection(other).length > 1e-6)
        # About 8,000 people per km² in the centre of a Chinese city of this size; a degree is ~104 km × 111 km here.
        km2 = poly.area * 104 * 111
        population = int(km2 * rng.uniform(2_000, 9_000))
        name = names[i] if i < len(names) else f"District {i + 1}"
        result.append(District(ids[i], name, poly, population, near))
    return result


def _wiggle(rng: random.Random, start: tuple[float, float], end: tuple[float, float], parts: int,
            amplitude: float) -> LineString:
    """A polyline from start to end with its inner vertices displaced sideways: roads and rivers are not rulers."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    length = (dx * dx + dy * dy) ** 0.5
    nx, ny = -dy / length, dx / length
    coords = []
    offset = 0.0
    for k in range(parts + 1):
        t = k / parts
        # Ends stay on the grid line; inner vertices drift with memory, so the line meanders, not zigzags.
        offset = 0.6 * offset + rng.uniform(-amplitude, amplitude) if 0 < k < parts else 0.0
        coords.append((round(x0 + dx * t + nx * offset, 6), round(y0 + dy * t + ny * offset, 6)))
    return LineString(coords)


def _roads(rng: random.Random, bbox: tuple[float, float, float, float]) -> list[Road]:
    minx, miny, maxx, maxy = bbox
    roads: list[Road] = []
    ns_count, ew_count = 9, 6
    for i in range(ns_count):
        x = minx + (maxx - minx) * (i + 0.5) / ns_count + rng.uniform(-0.004, 0.004)
        category = "arterial" if i % 3 == 1 else "street"
        line = _wiggle(rng, (x, miny), (x, maxy), 12, 0.0015)
        roads.append(Road(f"road-ns-{i + 1:02d}", NS_ROAD_NAMES[i % len(NS_ROAD_NAMES)], line, category))
    for i in range(ew_count):
        y = miny + (maxy - miny) * (i + 0.5) / ew_count + rng.uniform(-0.003, 0.003)
        category = "arterial" if i % 2 == 0 else "street"
        line = _wiggle(rng, (minx, y), (maxx, y), 16, 0.0012)
        roads.append(Road(f"road-ew-{i + 1:02d}", EW_ROAD_NAMES[i % len(EW_ROAD_NAMES)], line, category))
    return roads


def _rivers(rng: random.Random, bbox: tuple[float, float, float, float]) -> list[River]:
    minx, miny, maxx, maxy = bbox
    width = maxx - minx
    # Rivers run from the southern hills north to the sea, like the Nandu and Meishe rivers.
    starts = [minx + width * rng.uniform(0.70, 0.85), minx + width * rng.uniform(0.20, 0.40)]
    rivers = []
    for i, x in enumerate(starts):
        end_x = x + width * rng.uniform(-0.08, 0.08)
        line = _wiggle(rng, (x, miny), (end_x, maxy), 20, 0.004)
        rivers.append(River(f"river-{i + 1}", RIVER_NAMES[i], line))
    return rivers


def random_point_in(rng: random.Random, polygon: Polygon) -> Point:
    minx, miny, maxx, maxy = polygon.bounds
    while True:
        p = Point(round(rng.uniform(minx, maxx), 6), round(rng.uniform(miny, maxy), 6))
        if polygon.contains(p):
            return p


def _pois(rng: random.Random, city: City) -> list[PointOfInterest]:
    pois: list[PointOfInterest] = []
    counters = dict.fromkeys(POI_KINDS, 0)
    labels = {"school": "School", "hospital": "Hospital", "carPark": "Car Park", "eldercare": "Elderly Care Centre"}
    for district in city.districts:
        for kind, (low, high) in POI_KINDS.items():
            for n in range(rng.randint(low, high)):
                counters[kind] += 1
                point = random_point_in(rng, district.polygon)
                name = f"{district.name} {labels[kind]} No. {n + 1}"
                pois.append(PointOfInterest(f"{kind.lower()}-{counters[kind]:03d}", kind, name, point, district.id))
    return pois
