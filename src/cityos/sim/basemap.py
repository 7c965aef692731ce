"""The simulated city as a base map: what a topographic map of it shows, layer by layer.

`build_city` gives districts, roads, rivers and points of interest; a map also needs the sea and its
coast, land outside the districts, building blocks between the streets and a few parks. They are
derived here from the city and its seed with their own random stream, so `build_city` (and every
device placement and reading that depends on its random sequence) stays exactly as it was.

Every feature carries `name_zh` (Chinese, from the message catalogue) and `name_en` (pinyin/English).
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import shapely
from shapely.geometry import LineString, Polygon, box
from shapely.geometry.base import BaseGeometry

from cityos.core.messages import PLACES
from cityos.sim.city import City

# Layers of the base map, bottom to top; the cockpit's style draws them in this order.
LAYERS = ("land", "water", "park", "building", "district", "river", "road", "coastline", "poi")

POI_ZH = {"school": "学校", "hospital": "医院", "carPark": "停车场", "eldercare": "养老院"}
COAST_WIGGLE_DEG = 0.006  # the shore meanders this far north of the city's bounding box
SEA_DEPTH_DEG = 0.12  # how much sea the map shows north of the shore
BLOCK_DEG = 0.0032  # one building block's grid step (~330 m)


@dataclass(frozen=True)
class MapFeature:
    layer: str
    geometry: BaseGeometry
    properties: dict[str, Any]


@dataclass(frozen=True)
class MapLabel:
    """A label the cockpit draws as text: the base map's tiles carry geometry only (no glyph server offline)."""

    kind: str  # district, road, river, sea
    name_zh: str
    name_en: str
    lon: float
    lat: float
    min_zoom: float


def zh_name(name: str) -> str:
    """A place's Chinese name from the message catalogue ("Binhai Avenue" → "滨海大道"); '' when unknown."""
    return PLACES.get(name, "")


def basemap_features(city: City) -> list[MapFeature]:
    """Every feature of the base map, from `city` and its seed (the same city always gives the same map)."""
    rng = random.Random(city.seed * 7919 + 1)
    minx, miny, maxx, maxy = city.bbox
    width, height = maxx - minx, maxy - miny
    shore = _shoreline(rng, city.bbox)
    sea = _sea(shore, city.bbox)
    frame = box(minx - width * 0.4, miny - height * 0.6, maxx + width * 0.4, maxy + SEA_DEPTH_DEG)
    features = [MapFeature("land", frame.difference(sea), {"kind": "land"}),
                MapFeature("water", sea, {"kind": "sea", "name_zh": "琼州海峡", "name_en": "Qiongzhou Strait"}),
                MapFeature("coastline", shore, {"kind": "coast"})]
    for river in city.rivers:
        # The rivers end at the bbox's top edge; carry them on to the shore so they reach the sea.
        end = river.line.coords[-1]
        mouth = LineString([end, (end[0], maxy + COAST_WIGGLE_DEG * 1.5)])
        line = shapely.line_merge(shapely.union(river.line, mouth))
        features.append(MapFeature("river", line, {"kind": "river", "id": river.id, "name_en": river.name,
                                                   "name_zh": zh_name(river.name)}))
        # Wide enough at street zooms to read as water, not as a road.
        features.append(MapFeature("water", river.line.buffer(0.0009, cap_style="flat"),
                                   {"kind": "river", "name_zh": zh_name(river.name), "name_en": river.name}))
    for district in city.districts:
        features.append(MapFeature("district", district.polygon, {
            "id": district.id, "name_en": district.name, "name_zh": zh_name(district.name),
            "population": district.population}))
    for road in city.roads:
        features.append(MapFeature("road", road.line, {"id": road.id, "class": road.category, "name_en": road.name,
                                                       "name_zh": zh_name(road.name)}))
    blocks, parks = _blocks(rng, city)
    features += [MapFeature("building", b, {"kind": "block"}) for b in blocks]
    features += [MapFeature("park", p, {"kind": "park", "name_zh": "公园", "name_en": "Park"}) for p in parks]
    districts_zh = {d.id: zh_name(d.name) or d.name for d in city.districts}
    for poi in city.pois:
        number = poi.name.rsplit(" ", 1)[-1]
        name_zh = f"{districts_zh[poi.district_id]}{POI_ZH.get(poi.kind, '')}{number}号"
        features.append(MapFeature("poi", poi.point, {"id": poi.id, "kind": poi.kind, "name_en": poi.name,
                                                      "name_zh": name_zh}))
    return features


def basemap_labels(city: City) -> list[MapLabel]:
    """Text labels for roads, rivers and the sea (districts are labelled by the cockpit with live data).

    `min_zoom` is MapLibre's zoom (512-pixel tiles: one less than the XYZ tile zoom of the same scale)."""
    minx, _, maxx, maxy = city.bbox
    labels = [MapLabel("sea", "琼州海峡", "Qiongzhou Strait", (minx + maxx) / 2, maxy + 0.014, 9.5)]
    for river in city.rivers:
        point = river.line.interpolate(0.62, normalized=True)
        labels.append(MapLabel("river", zh_name(river.name), river.name, point.x, point.y, 10.5))
    for road in city.roads:
        # Arterials are named from city zooms on; streets only close up. Place names off the middle,
        # so crossing roads do not write over each other.
        point = road.line.interpolate(0.27 if road.id.startswith("road-ns") else 0.71, normalized=True)
        labels.append(MapLabel("road", zh_name(road.name), road.name, point.x, point.y,
                               11.5 if road.category == "arterial" else 13.0))
    return labels


def _shoreline(rng: random.Random, bbox: tuple[float, float, float, float]) -> LineString:
    minx, _, maxx, maxy = bbox
    width = maxx - minx
    points = []
    offset = COAST_WIGGLE_DEG / 2
    steps = 48
    for k in range(steps + 1):
        x = minx - width * 0.4 + width * 1.8 * k / steps
        offset = min(COAST_WIGGLE_DEG, max(0.0005, 0.7 * offset + rng.uniform(-0.0015, 0.0015)))
        points.append((round(x, 6), round(maxy + offset, 6)))
    return LineString(points)


def _sea(shore: LineString, bbox: tuple[float, float, float, float]) -> Polygon:
    _, _, _, maxy = bbox
    coords = list(shore.coords)
    top = maxy + SEA_DEPTH_DEG
    return Polygon([*coords, (coords[-1][0], top), (coords[0][0], top)])


def _blocks(rng: random.Random, city: City) -> tuple[list[Polygon], list[Polygon]]:
    """Building blocks on a jittered grid, cut by the roads and rivers; denser towards the centre."""
    minx, miny, maxx, maxy = city.bbox
    gaps = [r.line.buffer(0.00045 if r.category == "arterial" else 0.0003) for r in city.roads]
    gaps += [r.line.buffer(0.0016) for r in city.rivers]
    barrier = shapely.union_all(gaps)
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    cells: list[Polygon] = []
    parks: list[Polygon] = []
    x = minx
    while x < maxx - BLOCK_DEG / 2:
        y = miny
        while y < maxy - BLOCK_DEG / 2:
            # Most of the city is built up; the outskirts thin out.
            distance = ((x - cx) / (maxx - minx)) ** 2 + ((y - cy) / (maxy - miny)) ** 2
            if rng.random() < 0.92 - 1.6 * distance:
                inset = BLOCK_DEG * rng.uniform(0.12, 0.22)
                cell = box(x + inset, y + inset, x + BLOCK_DEG - inset, y + BLOCK_DEG - inset)
                (parks if rng.random() < 0.05 else cells).append(cell)
            y += BLOCK_DEG
        x += BLOCK_DEG
    return _cut(cells, barrier), _cut(parks, barrier)


def _cut(cells: list[Polygon], barrier: BaseGeometry) -> list[Polygon]:
    cut = shapely.difference(cells, barrier)
    out: list[Polygon] = []
    for geometry in cut:
        parts = getattr(geometry, "geoms", [geometry])
        out.extend(shapely.set_precision(p, 1e-6) for p in parts
                   if isinstance(p, Polygon) and p.area > (BLOCK_DEG ** 2) * 0.08)
    return out
