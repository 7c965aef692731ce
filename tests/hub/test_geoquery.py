"""Geo-queries: parsing, reference semantics, and SQL on SQLite and PostgreSQL/PostGIS agreeing with it."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPoint
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backends import postgres_test_url
from cityos.config import Settings, async_url
from cityos.core.db import SQLITE_FUNCTIONS, create_engine
from cityos.core.errors import BadRequestData
from cityos.hub.geoquery import (
    DEFAULT_GEOPROPERTY,
    EARTH_RADIUS_M,
    MAX_POSITIONS,
    GeoQuery,
    delete_geometries,
    evaluate_geo,
    geo_distance,
    geo_filter_sql,
    geo_schema_ddl,
    geometry_bbox,
    haversine,
    near_bbox,
    parse_geoquery,
    validate_geojson,
    write_geometries,
    write_geometries_many,
)
from cityos.hub.models import entities, entity_geo, metadata

LOC = DEFAULT_GEOPROPERTY
AREA = "https://example.org/area"
PG_URL = postgres_test_url()
PG_DB = "cityos_geo_test"

# Paris, Île de la Cité.
LON0, LAT0 = 2.3499, 48.8530
M_PER_DEG_LAT = EARTH_RADIUS_M * math.pi / 180  # 111195.08 m


def expand(name: str) -> str:
    return LOC if name == "location" else f"https://example.org/{name}"


def parse(georel: str | None, geometry: str | None, coordinates: Any, geoproperty: str | None = None
          ) -> GeoQuery | None:
    return parse_geoquery(georel, geometry, coordinates, geoproperty, expand)


def square(lon: float, lat: float, half: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[
        [lon - half, lat - half], [lon + half, lat - half], [lon + half, lat + half],
        [lon - half, lat + half], [lon - half, lat - half]]]}


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def east(metres: float, lat: float = LAT0) -> float:
    """Degrees of longitude spanning `metres` at latitude `lat` (on the sphere, small distances)."""
    return metres / (M_PER_DEG_LAT * math.cos(math.radians(lat)))


# --------------------------------------------------------------------------------------------
# Parsing

GEOMETRIES: dict[str, Any] = {
    "Point": [LON0, LAT0],
    "LineString": [[2.34, 48.85], [2.35, 48.86]],
    "Polygon": [[[2.34, 48.85], [2.36, 48.85], [2.36, 48.86], [2.34, 48.86], [2.34, 48.85]]],
    "MultiPoint": [[2.34, 48.85], [2.35, 48.86]],
    "MultiLineString": [[[2.34, 48.85], [2.35, 48.86]], [[2.30, 48.80], [2.31, 48.81]]],
    "MultiPolygon": [
        [[[2.34, 48.85], [2.36, 48.85], [2.36, 48.86], [2.34, 48.85]]],
        [[[2.30, 48.80], [2.31, 48.80], [2.31, 48.81], [2.30, 48.80]]],
    ],
}


def test_no_geoquery_when_no_parameter() -> None:
    assert parse(None, None, None) is None
    assert parse(None, None, None, "location") is None


@pytest.mark.parametrize("kind", list(GEOMETRIES))
@pytest.mark.parametrize("georel", ["within", "contains", "intersects", "disjoint", "equals", "overlaps"])
def test_parse_every_georel_and_geometry(georel: str, kind: str) -> None:
    coords = GEOMETRIES[kind]
    q = parse(georel, kind, orjson.dumps(coords).decode())
    assert q == GeoQuery(georel=georel, geometry={"type": kind, "coordinates": coords},
                         max_distance=None, min_distance=None, geoproperty=LOC)
    # A subscription's geoQ hands over already-parsed coordinates.
    assert parse(georel, kind, coords) == q


@pytest.mark.parametrize(("georel", "max_d", "min_d"), [
    ("near;maxDistance==500", 500.0, None),
    ("near;minDistance==10", None, 10.0),
    ("near;maxDistance==2.5e3", 2500.0, None),
    ("near;maxDistance==0", 0.0, None),
    ("near; minDistance==10 ;maxDistance==500.5", 500.5, 10.0),
])
def test_parse_near(georel: str, max_d: float | None, min_d: float | None) -> None:
    q = parse(georel, "Point", "[2.3499, 48.853]", "location")
    assert q is not None
    assert (q.georel, q.max_distance, q.min_distance) == ("near", max_d, min_d)
    assert q.geometry == {"type": "Point", "coordinates": [2.3499, 48.853]}


def test_parse_geoproperty_expanded() -> None:
    q = parse("within", "Polygon", GEOMETRIES["Polygon"], "area")
    assert q is not None and q.geoproperty == AREA


def test_parse_keeps_altitude_and_int_coordinates() -> None:
    q = parse("intersects", "Point", "[2, 48, 35.5]")
    assert q is not None and q.geometry["coordinates"] == [2, 48, 35.5]


OPEN_POLYGON = "[[[2.34,48.85],[2.36,48.85],[2.36,48.86],[2.34,48.86]]]"


@pytest.mark.parametrize(("georel", "geometry", "coordinates", "geoproperty"), [
    # partial parameters
    ("near;maxDistance==5", None, None, None),
    (None, "Point", "[1,2]", None),
    ("within", "Polygon", None, None),
    ("within", None, "[1,2]", None),
    (None, None, "[1,2]", None),
    # bad JSON
    ("intersects", "Point", "[1,2", None),
    ("intersects", "Point", "", None),
    ("intersects", "Point", "{\"a\": 1}", None),
    ("intersects", "Point", "[NaN, 2]", None),
    ("intersects", "Point", "[Infinity, 2]", None),
    ("intersects", "Point", "[1,2]); DROP TABLE hub_entity_geo; --", None),
    # bad coordinates
    ("intersects", "Point", [float("nan"), 2.0], None),
    ("intersects", "Point", [float("inf"), 2.0], None),
    ("intersects", "Point", "[2, 200]", None),
    ("intersects", "Point", "[2, -90.0001]", None),
    ("intersects", "Point", "[180.5, 2]", None),
    ("intersects", "Point", "[1]", None),
    ("intersects", "Point", "[1, 2, 3, 4]", None),
    ("intersects", "Point", "[true, 2]", None),
    ("intersects", "Point", "[\"1\", 2]", None),
    ("intersects", "Point", "[[1, 2]]", None),
    ("intersects", "LineString", "[[1, 2]]", None),
    ("intersects", "MultiPoint", "[]", None),
    ("intersects", "MultiLineString", "[]", None),
    ("intersects", "MultiLineString", "[[[1,2]]]", None),
    ("intersects", "Polygon", OPEN_POLYGON, None),
    ("intersects", "Polygon", "[[[0,0],[1,1],[0,0]]]", None),
    ("intersects", "Polygon", "[]", None),
    ("intersects", "Polygon", [[[0, 0], [0, 1], [1, 1], [1, 0], [0, 200], [0, 0]]], None),
    # bad geometry types
    ("intersects", "Circle", "[1,2]", None),
    ("intersects", "point", "[1,2]", None),
    ("intersects", "GeometryCollection", "[]", None),
    ("intersects", "Point'); DROP TABLE hub_entities; --", "[1,2]", None),
    # bad georels and distances
    ("nearby", "Point", "[1,2]", None),
    ("near", "Point", "[1,2]", None),
    ("near;", "Point", "[1,2]", None),
    ("near;maxDistance=500", "Point", "[1,2]", None),
    ("near;maxDistance:500", "Point", "[1,2]", None),
    ("near;maxDistance==-5", "Point", "[1,2]", None),
    ("near;maxDistance==abc", "Point", "[1,2]", None),
    ("near;maxDistance==nan", "Point", "[1,2]", None),
    ("near;maxDistance==inf", "Point", "[1,2]", None),
    ("near;maxDistance==1e999", "Point", "[1,2]", None),
    ("near;maxDistance==1_000", "Point", "[1,2]", None),
    ("near;maxDistance==", "Point", "[1,2]", None),
    ("near;maxDistance==5;maxDistance==6", "Point", "[1,2]", None),
    ("near;distance==5", "Point", "[1,2]", None),
    ("near;maxDistance==5", "Polygon", GEOMETRIES["Polygon"], None),
    ("near;maxDistance==5", "LineString", GEOMETRIES["LineString"], None),
    ("within;maxDistance==5", "Polygon", GEOMETRIES["Polygon"], None),
    ("near;maxDistance==5 OR 1=1", "Point", "[1,2]", None),
    # bad geoproperty
    ("intersects", "Point", "[1,2]", ""),
    ("intersects", "Point", "[1,2]", "location'; DROP TABLE hub_entity_geo; --"),
    ("intersects", "Point", "[1,2]", "loc\"ation"),
    ("intersects", "Point", "[1,2]", "a=b"),
    ("intersects", "Point", "[1,2]", "x" * 600),
])
def test_parse_errors(georel: str | None, geometry: str | None, coordinates: Any,
                      geoproperty: str | None) -> None:
    with pytest.raises(BadRequestData):
        parse(georel, geometry, coordinates, geoproperty)


def test_parse_rejects_too_many_positions() -> None:
    line = [[0.0, i * 1e-5] for i in range(MAX_POSITIONS + 1)]
    with pytest.raises(BadRequestData, match="at most"):
        parse("intersects", "LineString", line)
    assert parse("intersects", "LineString", line[:MAX_POSITIONS]) is not None


def test_expand_result_is_checked() -> None:
    with pytest.raises(BadRequestData):
        parse_geoquery("within", "Point", "[1,2]", "location", lambda _: "x' OR '1'='1")


@pytest.mark.parametrize("bad", [
    None, [], "Point", {"type": "Point"}, {"coordinates": [1, 2]},
    {"type": "Point", "coordinates": [1, 95]}, {"type": "Feature", "coordinates": [1, 2]},
])
def test_validate_geojson_rejects(bad: Any) -> None:
    with pytest.raises(BadRequestData):
        validate_geojson(bad)


def test_validate_geojson_returns_clean_copy() -> None:
    original = {"type": "Polygon", "coordinates": GEOMETRIES["Polygon"], "bbox": [0, 0, 1, 1]}
    clean = validate_geojson(original)
    assert clean == {"type": "Polygon", "coordinates": GEOMETRIES["Polygon"]}
    clean["coordinates"][0][0][0] = 99
    assert original["coordinates"][0][0][0] == 2.34


@pytest.mark.parametrize("kind", list(GEOMETRIES))
def test_validate_geojson_accepts_every_type(kind: str) -> None:
    assert validate_geojson({"type": kind, "coordinates": GEOMETRIES[kind]})["type"] == kind


def test_polygon_with_hole_is_valid() -> None:
    outer = square(LON0, LAT0, 0.01)["coordinates"][0]
    hole = square(LON0, LAT0, 0.002)["coordinates"][0]
    assert validate_geojson({"type": "Polygon", "coordinates": [outer, hole]})
    # A hole outside its shell is OGC-invalid but a GeoJSON Polygon of closed rings (RFC 7946 §3.1.6):
    # kept as written; queries use its made-valid form (test_conformance_geometry.py).
    swapped = {"type": "Polygon", "coordinates": [hole, outer]}
    assert validate_geojson(swapped) == swapped


# --------------------------------------------------------------------------------------------
# Reference semantics


def cosine_law_distance(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Independent great-circle formula (spherical law of cosines) to check haversine against."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_M * math.acos(max(-1.0, min(1.0, c)))


def test_haversine_known_values() -> None:
    assert haversine(LON0, LAT0, LON0, LAT0 + 0.001) == pytest.approx(111.195, abs=0.001)
    assert haversine(LON0, LAT0, LON0 + 0.001, LAT0) == pytest.approx(73.17, abs=0.01)
    # Notre-Dame to the Eiffel Tower is about 4.1 km.
    d = haversine(2.3499, 48.8530, 2.2945, 48.8584)
    assert d == pytest.approx(cosine_law_distance(2.3499, 48.8530, 2.2945, 48.8584), abs=0.01)
    assert 4000 < d < 4200
    assert haversine(0, 0, 180, 0) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_near_points_in_paris() -> None:
    north = point(LON0, LAT0 + 0.003)  # 333.585 m
    eastp = point(LON0 + 0.005, LAT0)  # 365.8 m
    q300 = parse("near;maxDistance==300", "Point", [LON0, LAT0])
    q350 = parse("near;maxDistance==350", "Point", [LON0, LAT0])
    qmin = parse("near;minDistance==340", "Point", [LON0, LAT0])
    assert q300 and q350 and qmin
    assert geo_distance(north, LON0, LAT0) == pytest.approx(333.585, abs=0.001)
    assert geo_distance(eastp, LON0, LAT0) == pytest.approx(
        cosine_law_distance(LON0, LAT0, LON0 + 0.005, LAT0), abs=0.001)
    assert not evaluate_geo(q300, north) and not evaluate_geo(q300, eastp)
    assert evaluate_geo(q350, north) and not evaluate_geo(q350, eastp)
    assert not evaluate_geo(qmin, north) and evaluate_geo(qmin, eastp)
    ring = parse("near;minDistance==340;maxDistance==400", "Point", [LON0, LAT0])
    assert ring and evaluate_geo(ring, eastp) and not evaluate_geo(ring, north)
    assert evaluate_geo(q300, point(LON0, LAT0))
    multi = {"type": "MultiPoint", "coordinates": [[LON0 + 0.005, LAT0], [LON0, LAT0 + 0.003]]}
    assert geo_distance(multi, LON0, LAT0) == pytest.approx(333.585, abs=0.001)


def test_near_polygon_and_line_distance() -> None:
    # A block whose west edge is 200 m east of the reference point.
    west = LON0 + east(200)
    block = {"type": "Polygon", "coordinates": [[[west, LAT0 - 0.001], [west + 0.002, LAT0 - 0.001],
                                                 [west + 0.002, LAT0 + 0.001], [west, LAT0 + 0.001],
                                                 [west, LAT0 - 0.001]]]}
    expected = haversine(LON0, LAT0, west, LAT0)
    assert expected == pytest.approx(200, abs=0.05)
    assert geo_distance(block, LON0, LAT0) == pytest.approx(expected, abs=0.01)
    q = parse("near;maxDistance==201", "Point", [LON0, LAT0])
    assert q and evaluate_geo(q, block)
    q = parse("near;maxDistance==199", "Point", [LON0, LAT0])
    assert q and not evaluate_geo(q, block)
    # Inside the polygon: distance 0.
    assert geo_distance(square(LON0, LAT0, 0.001), LON0, LAT0) == 0.0
    # A street 150 m south, running east-west.
    street = {"type": "LineString", "coordinates": [[LON0 - 0.01, LAT0 - 150 / M_PER_DEG_LAT],
                                                    [LON0 + 0.01, LAT0 - 150 / M_PER_DEG_LAT]]}
    assert geo_distance(street, LON0, LAT0) == pytest.approx(150, abs=0.05)
    multi = {"type": "MultiLineString", "coordinates": [street["coordinates"],
                                                        [[LON0 + 0.01, LAT0], [LON0 + 0.02, LAT0]]]}
    assert geo_distance(multi, LON0, LAT0) == pytest.approx(150, abs=0.05)


def test_near_across_the_antimeridian() -> None:
    lat = -16.5  # Fiji
    a, b = point(179.9995, lat), point(-179.9995, lat)
    d = geo_distance(b, 179.9995, lat)
    assert d == pytest.approx(cosine_law_distance(179.9995, lat, -179.9995, lat), abs=0.01)
    assert d < 110
    q = parse("near;maxDistance==110", "Point", a["coordinates"])
    assert q and evaluate_geo(q, b)
    poly = square(-179.999, lat, 0.0005)
    assert geo_distance(poly, 179.9995, lat) == pytest.approx(
        haversine(179.9995, lat, -179.9995, lat), abs=0.01)
    assert evaluate_geo(q, poly)


def test_topological_relations() -> None:
    big = square(LON0, LAT0, 0.01)
    small = square(LON0, LAT0, 0.001)
    beside = square(LON0 + 0.0015, LAT0, 0.001)  # overlaps `small`
    far = square(LON0 + 0.1, LAT0, 0.001)
    inside = point(LON0, LAT0)

    def q(georel: str, geom: dict[str, Any]) -> GeoQuery:
        result = parse(georel, geom["type"], geom["coordinates"])
        assert result is not None
        return result

    # "entity <georel> query geometry"
    assert evaluate_geo(q("within", big), small)
    assert not evaluate_geo(q("within", small), big)
    assert evaluate_geo(q("contains", small), big)
    assert evaluate_geo(q("contains", inside), small)
    assert not evaluate_geo(q("contains", big), small)
    assert evaluate_geo(q("within", small), inside)
    assert evaluate_geo(q("intersects", small), beside)
    assert not evaluate_geo(q("intersects", small), far)
    assert evaluate_geo(q("disjoint", small), far)
    assert not evaluate_geo(q("disjoint", small), beside)
    assert evaluate_geo(q("overlaps", small), beside)
    assert not evaluate_geo(q("overlaps", big), small)  # containment is not overlap
    assert evaluate_geo(q("equals", small), small)
    rotated = {"type": "Polygon", "coordinates": [[*small["coordinates"][0][1:], small["coordinates"][0][1]]]}
    assert evaluate_geo(q("equals", small), rotated)
    assert not evaluate_geo(q("equals", small), beside)
    street = {"type": "LineString", "coordinates": [[LON0 - 0.02, LAT0], [LON0 + 0.02, LAT0]]}
    assert evaluate_geo(q("intersects", street), small)
    assert evaluate_geo(q("within", big), {"type": "MultiPoint", "coordinates": [[LON0, LAT0],
                                                                                 [LON0 + 0.005, LAT0]]})


# Hypothesis: the bounding box used by the SQLite prefilter never loses a point within the distance.

lons = st.floats(-180, 180, allow_nan=False)
lats = st.floats(-89.999, 89.999, allow_nan=False)


def destination(lon: float, lat: float, bearing: float, distance: float) -> tuple[float, float]:
    p1, l1, ang = math.radians(lat), math.radians(lon), distance / EARTH_RADIUS_M
    p2 = math.asin(math.sin(p1) * math.cos(ang) + math.cos(p1) * math.sin(ang) * math.cos(bearing))
    l2 = l1 + math.atan2(math.sin(bearing) * math.sin(ang) * math.cos(p1),
                         math.cos(ang) - math.sin(p1) * math.sin(p2))
    return (math.degrees(l2) + 540) % 360 - 180, math.degrees(p2)


@settings(max_examples=400, deadline=None)
@given(lon=lons, lat=lats, distance=st.floats(0, 3_000_000), bearing=st.floats(0, 2 * math.pi),
       fraction=st.floats(0, 1))
def test_near_bbox_is_conservative(lon: float, lat: float, distance: float, bearing: float,
                                   fraction: float) -> None:
    lon2, lat2 = destination(lon, lat, bearing, distance * fraction)
    assume(haversine(lon, lat, lon2, lat2) <= distance)
    lon_ranges, lat_lo, lat_hi = near_bbox(lon, lat, distance)
    assert lat_lo <= lat2 <= lat_hi
    assert any(lo <= lon2 <= hi for lo, hi in lon_ranges)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lon=st.floats(-179, 179), lat=st.floats(-80, 80), dx=st.floats(-0.02, 0.02), dy=st.floats(-0.02, 0.02),
       half=st.floats(0.0001, 0.01))
def test_polygon_distance_bounded_by_vertices(lon: float, lat: float, dx: float, dy: float, half: float) -> None:
    poly = square(lon + dx, lat + dy, half)
    d = geo_distance(poly, lon, lat)
    vertices = min(haversine(lon, lat, x, y) for x, y in poly["coordinates"][0])
    assert 0 <= d <= vertices + 1e-6
    if abs(dx) < half and abs(dy) < half:
        assert d == 0


@settings(max_examples=200, deadline=None)
@given(lon=lons, lat=st.floats(-90, 90), lon2=lons, lat2=st.floats(-90, 90))
def test_point_distance_is_haversine(lon: float, lat: float, lon2: float, lat2: float) -> None:
    q = parse("near;maxDistance==1000", "Point", [lon, lat])
    assert q is not None
    assert evaluate_geo(q, point(lon2, lat2)) == (haversine(lon, lat, lon2, lat2) <= 1000)


@settings(max_examples=100, deadline=None)
@given(lon=st.floats(allow_nan=True), lat=st.floats(allow_nan=True))
def test_validation_matches_ranges(lon: float, lat: float) -> None:
    ok = math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90
    if ok:
        assert validate_geojson(point(lon, lat))["coordinates"] == [lon, lat]
    else:
        with pytest.raises(BadRequestData):
            validate_geojson(point(lon, lat))


def test_geometry_bbox() -> None:
    multi = {"type": "MultiPolygon", "coordinates": GEOMETRIES["MultiPolygon"]}
    assert geometry_bbox(multi) == (2.30, 2.36, 48.80, 48.86)
    assert geometry_bbox(point(1, 2)) == (1, 1, 2, 2)


# --------------------------------------------------------------------------------------------
# SQL against real databases


def register_sqlite_functions(engine: AsyncEngine) -> None:
    """Register the SQLite functions through SQLAlchemy's aiosqlite adapter.

    The adapter's create_function awaits aiosqlite's coroutine; cityos.core.db currently reaches
    past it to aiosqlite's async connection, whose create_function is a coroutine that is never
    awaited. See test_engine_registers_geo_match.
    """
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        for name, nargs, fn in SQLITE_FUNCTIONS:
            dbapi_conn.create_function(name, nargs, fn, deterministic=True)

    event.listen(engine.sync_engine, "connect", on_connect)


async def test_engine_registers_geo_match(tmp_path: Any) -> None:
    engine = create_engine(Settings(database_url=f"sqlite:///{tmp_path}/f.db"))
    try:
        async with engine.connect() as conn:
            try:
                value = (await conn.execute(text(
                    "SELECT cityos_geo_match('{\"type\":\"Point\",\"coordinates\":[1,2]}', 'intersects',"
                    " '{\"type\":\"Point\",\"coordinates\":[1,2]}', NULL, NULL)"))).scalar()
            except OperationalError:
                pytest.xfail("cityos.core.db does not register SQLite functions on aiosqlite connections")
        assert value == 1
    finally:
        await engine.dispose()


@dataclass
class Backend:
    engine: AsyncEngine
    dialect: str
    # tenant -> entity id -> {attr IRI: geometry}, as written
    data: dict[str, dict[str, dict[str, dict[str, Any]]]]


async def make_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        for ddl in geo_schema_ddl(engine.dialect.name):
            await conn.execute(text(ddl))
        # Idempotent: a migration may run twice.
        for ddl in geo_schema_ddl(engine.dialect.name):
            await conn.execute(text(ddl))


def rand_polygon(rng: random.Random, lon: float, lat: float, size: float) -> dict[str, Any]:
    while True:
        pts = [(lon + rng.uniform(-size, size), lat + rng.uniform(-size, size)) for _ in range(rng.randint(3, 9))]
        hull = MultiPoint(pts).convex_hull
        if hull.geom_type != "Polygon" or hull.area < (size * size) / 50:
            continue
        coords = [[round(x, 7), round(y, 7)] for x, y in hull.exterior.coords]
        try:
            return validate_geojson({"type": "Polygon", "coordinates": [coords]})
        except BadRequestData:
            continue


def rand_point(rng: random.Random, spread: float = 0.03) -> dict[str, Any]:
    coords = [round(LON0 + rng.uniform(-spread, spread), 7), round(LAT0 + rng.uniform(-spread, spread), 7)]
    if rng.random() < 0.1:
        coords.append(round(rng.uniform(0, 100), 2))
    return {"type": "Point", "coordinates": coords}


def rand_geometry(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    if r < 0.55:
        return rand_point(rng)
    if r < 0.8:
        return rand_polygon(rng, LON0 + rng.uniform(-0.03, 0.03), LAT0 + rng.uniform(-0.03, 0.03),
                            rng.uniform(0.0005, 0.006))
    if r < 0.9:
        start = rand_point(rng)["coordinates"][:2]
        line = [start] + [[round(start[0] + rng.uniform(-0.005, 0.005), 7),
                           round(start[1] + rng.uniform(-0.005, 0.005), 7)] for _ in range(rng.randint(1, 4))]
        return validate_geojson({"type": "LineString", "coordinates": line})
    return {"type": "MultiPoint", "coordinates": [rand_point(rng)["coordinates"][:2] for _ in range(3)]}


def make_data(seed: int, count: int) -> dict[str, dict[str, dict[str, Any]]]:
    rng = random.Random(seed)
    data: dict[str, dict[str, dict[str, Any]]] = {}
    for i in range(count):
        attrs = {LOC: rand_geometry(rng)}
        if rng.random() < 0.3:
            attrs[AREA] = rand_polygon(rng, LON0 + rng.uniform(-0.03, 0.03), LAT0 + rng.uniform(-0.03, 0.03),
                                       0.004)
        if rng.random() < 0.05:
            del attrs[LOC]
        data[f"urn:ngsi-ld:Thing:{i:04d}"] = attrs
    return data


async def populate(engine: AsyncEngine) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    first = make_data(1, 300)
    main = dict(first)
    # Rewrite a third of the entities so that replacement (and the R*Tree sync) is exercised.
    second = make_data(2, 300)
    for eid in list(first)[::3]:
        main[eid] = second[eid]
    other = make_data(3, 50)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await write_geometries_many(conn, "main", list(first.items()))
        await write_geometries_many(conn, "main", [(eid, main[eid]) for eid in list(first)[::3]])
        await write_geometries_many(conn, "other", list(other.items()))
        # Entity rows for the outer query.
        await conn.execute(insert(entities), [
            {"tenant": tenant, "id": eid, "type": "https://example.org/Thing", "created_at": now,
             "modified_at": now, "attrs": {}}
            for tenant, rows in (("main", main), ("other", other)) for eid in rows])
        if engine.dialect.name == "postgresql":
            # Fresh tables have no statistics; without them the planner nests loops over GiST scans.
            await conn.execute(text("ANALYZE hub_entity_geo"))
            await conn.execute(text("ANALYZE hub_entities"))
    return {"main": main, "other": other}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("geo") / "g.db"
        engine = create_engine(Settings(database_url=f"sqlite:///{path}"))
        register_sqlite_functions(engine)
        await make_schema(engine)
        data = await populate(engine)
        yield Backend(engine, "sqlite", data)
        await engine.dispose()
        return
    if not PG_URL:
        pytest.skip("CITYOS_TEST_POSTGRES_URL is not set")
    admin = create_async_engine(async_url(PG_URL), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
        await conn.execute(text(f"CREATE DATABASE {PG_DB}"))
    url = make_url(PG_URL).set(database=PG_DB).render_as_string(hide_password=False)
    engine = create_engine(Settings(database_url=url))
    try:
        await make_schema(engine)
        data = await populate(engine)
        yield Backend(engine, "postgresql", data)
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
        await admin.dispose()


async def select_ids(b: Backend, query: GeoQuery, tenant: str = "main") -> set[str]:
    stmt = select(entities.c.id).where(entities.c.tenant == tenant,
                                       geo_filter_sql(query, tenant, entities.c.id, b.dialect))
    async with b.engine.connect() as conn:
        return {row[0] for row in await conn.execute(stmt)}


def expected_ids(b: Backend, query: GeoQuery, tenant: str = "main") -> tuple[set[str], set[str]]:
    """(matching ids, ids too close to a near boundary to call)."""
    matching, ambiguous = set(), set()
    for eid, attrs in b.data[tenant].items():
        geom = attrs.get(query.geoproperty)
        if geom is None:
            continue
        if query.georel == "near":
            lon, lat = query.geometry["coordinates"][:2]
            d = geo_distance(geom, lon, lat)
            if any(limit is not None and abs(d - limit) < 0.5 + 1e-6 * limit
                   for limit in (query.max_distance, query.min_distance)):
                ambiguous.add(eid)
                continue
        if evaluate_geo(query, geom):
            matching.add(eid)
    return matching, ambiguous


def random_queries(seed: int, b: Backend) -> list[GeoQuery]:
    rng = random.Random(seed)
    existing = [attrs[LOC] for attrs in b.data["main"].values() if LOC in attrs]
    queries: list[tuple[str, dict[str, Any], str | None]] = []
    for _ in range(12):
        center = rand_point(rng)["coordinates"][:2]
        queries.append((f"near;maxDistance=={rng.uniform(20, 3000):.3f}", point(*center), None))
        queries.append((f"near;minDistance=={rng.uniform(20, 3000):.3f}", point(*center), None))
        queries.append((f"near;minDistance=={rng.uniform(0, 800):.1f};maxDistance=={rng.uniform(800, 3000):.1f}",
                        point(*center), None))
    for georel in ("within", "contains", "intersects", "disjoint", "overlaps"):
        for _ in range(8):
            size = rng.choice([0.001, 0.005, 0.02])
            queries.append((georel, rand_polygon(rng, LON0 + rng.uniform(-0.03, 0.03),
                                                 LAT0 + rng.uniform(-0.03, 0.03), size), None))
        queries.append((georel, rand_point(rng), None))
        queries.append((georel, rand_geometry(rng), "area"))
    outer = square(LON0, LAT0, 0.02)["coordinates"][0]
    hole = square(LON0 + 0.005, LAT0, 0.004)["coordinates"][0]
    queries.append(("within", {"type": "Polygon", "coordinates": [outer, hole]}, None))
    queries.append(("intersects", {"type": "MultiPolygon", "coordinates": [[outer], [square(2.5, 48.9, 0.1)
                                                                                      ["coordinates"][0]]]}, None))
    # `contains` with points that lie inside entity polygons, `equals` with entity geometries.
    polygons = [g for g in existing if g["type"] == "Polygon"]
    for poly in rng.sample(polygons, 5):
        ring = poly["coordinates"][0]
        cx = sum(x for x, _ in ring[:-1]) / (len(ring) - 1)
        cy = sum(y for _, y in ring[:-1]) / (len(ring) - 1)
        queries.append(("contains", point(cx, cy), None))
        queries.append(("equals", poly, None))
        queries.append(("equals", {"type": "Polygon", "coordinates": [[*ring[1:], ring[1]]]}, None))
    for geom in rng.sample(existing, 5):
        queries.append(("equals", geom, None))
    parsed = []
    for georel, geom, prop in queries:
        q = parse(georel, geom["type"], geom["coordinates"], prop)
        assert q is not None
        parsed.append(q)
    return parsed


async def test_sql_matches_reference(backend: Backend) -> None:
    checked = nonempty = 0
    for query in random_queries(42, backend):
        got = await select_ids(backend, query)
        want, ambiguous = expected_ids(backend, query)
        assert got - ambiguous == want, (query, sorted((got - ambiguous) ^ want))
        checked += 1
        nonempty += bool(want)
    assert checked > 100
    assert nonempty > checked / 2  # the queries are not trivially empty


async def test_sql_near_known_answers(backend: Backend) -> None:
    """Points a few hundred metres around Notre-Dame in a tenant of their own."""
    offsets = {"n333": (0.0, 0.003), "e366": (0.005, 0.0), "s111": (0.0, -0.001), "ne": (0.004, 0.004),
               "far": (0.05, 0.05)}
    rows = [(eid, {LOC: point(LON0 + dx, LAT0 + dy)}) for eid, (dx, dy) in offsets.items()]
    async with backend.engine.begin() as conn:
        await write_geometries_many(conn, "paris", rows)
        now = datetime.now(UTC)
        await conn.execute(insert(entities), [
            {"tenant": "paris", "id": eid, "type": "T", "created_at": now, "modified_at": now, "attrs": {}}
            for eid, _ in rows])
    try:
        cases = {
            "near;maxDistance==120": {"s111"},
            "near;maxDistance==340": {"s111", "n333"},
            "near;maxDistance==370": {"s111", "n333", "e366"},
            "near;minDistance==340": {"e366", "ne", "far"},
            "near;minDistance==200;maxDistance==500": {"n333", "e366"},
        }
        for georel, want in cases.items():
            q = parse(georel, "Point", [LON0, LAT0])
            assert q is not None
            assert await select_ids(backend, q, "paris") == want, georel
            assert {eid for eid, attrs in rows if evaluate_geo(q, attrs[LOC])} == want
    finally:
        async with backend.engine.begin() as conn:
            await delete_geometries(conn, "paris", [eid for eid, _ in rows])
            await conn.execute(entities.delete().where(entities.c.tenant == "paris"))


async def test_sql_tenant_and_geoproperty_isolation(backend: Backend) -> None:
    q = parse("within", "Polygon", square(LON0, LAT0, 1)["coordinates"])
    assert q is not None
    main = await select_ids(backend, q)
    assert main == {eid for eid, attrs in backend.data["main"].items() if LOC in attrs}
    assert await select_ids(backend, q, "other") == {
        eid for eid, attrs in backend.data["other"].items() if LOC in attrs}
    assert await select_ids(backend, q, "nobody") == set()
    area = parse("within", "Polygon", square(LON0, LAT0, 1)["coordinates"], "area")
    assert area is not None
    assert await select_ids(backend, area) == {eid for eid, attrs in backend.data["main"].items() if AREA in attrs}


async def test_sql_across_the_antimeridian(backend: Backend) -> None:
    lat = -16.5
    rows = [("fiji-w", {LOC: point(-179.9995, lat)}), ("fiji-e", {LOC: point(179.9990, lat)}),
            ("fiji-poly", {LOC: square(-179.998, lat, 0.0005)}), ("fiji-far", {LOC: point(-179.99, lat)})]
    async with backend.engine.begin() as conn:
        await write_geometries_many(conn, "fiji", rows)
        now = datetime.now(UTC)
        await conn.execute(insert(entities), [
            {"tenant": "fiji", "id": eid, "type": "T", "created_at": now, "modified_at": now, "attrs": {}}
            for eid, _ in rows])
    try:
        q = parse("near;maxDistance==300", "Point", [179.9999, lat])
        assert q is not None
        want = {eid for eid, attrs in rows if evaluate_geo(q, attrs[LOC])}
        assert want == {"fiji-w", "fiji-e", "fiji-poly"}
        assert await select_ids(backend, q, "fiji") == want
    finally:
        async with backend.engine.begin() as conn:
            await delete_geometries(conn, "fiji", [eid for eid, _ in rows])
            await conn.execute(entities.delete().where(entities.c.tenant == "fiji"))


async def count(b: Backend, sql: str) -> int:
    async with b.engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def test_write_replace_and_delete(backend: Backend) -> None:
    tenant = "scratch"
    ids = ["urn:a", "urn:b"]
    async with backend.engine.begin() as conn:
        await write_geometries(conn, tenant, "urn:a", {LOC: point(1, 2), AREA: square(1, 2, 0.1)})
        await write_geometries_many(conn, tenant, [("urn:b", {LOC: point(3, 4)}),
                                                   ("urn:b", {LOC: point(5, 6)}),  # the last one wins
                                                   ("urn:c", {})])
        await write_geometries(conn, tenant, "urn:a", {LOC: point(7, 8)})
    async with backend.engine.connect() as conn:
        rows = (await conn.execute(select(entity_geo.c.entity_id, entity_geo.c.attr, entity_geo.c.geojson)
                                   .where(entity_geo.c.tenant == tenant)
                                   .order_by(entity_geo.c.entity_id))).all()
    assert [(r[0], r[1]) for r in rows] == [("urn:a", LOC), ("urn:b", LOC)]
    assert "[7" in rows[0][2] and "[5" in rows[1][2]
    if backend.dialect == "sqlite":
        assert await count(backend, "SELECT count(*) FROM hub_entity_geo_rtree") == await count(
            backend, "SELECT count(*) FROM hub_entity_geo")
        assert await count(backend, "SELECT count(*) FROM hub_entity_geo g LEFT JOIN hub_entity_geo_rtree r "
                                    "ON r.gid = g.gid WHERE r.gid IS NULL") == 0
    else:
        assert await count(backend, "SELECT count(*) FROM hub_entity_geo WHERE geom IS NULL") == 0
        assert await count(backend, f"SELECT count(*) FROM hub_entity_geo WHERE tenant = '{tenant}' "
                                    "AND ST_X(geom) = 7 AND ST_Y(geom) = 8") == 1
    async with backend.engine.begin() as conn:
        await delete_geometries(conn, tenant, [*ids, "urn:missing"])
        await delete_geometries(conn, tenant, [])
    assert await count(backend, f"SELECT count(*) FROM hub_entity_geo WHERE tenant = '{tenant}'") == 0
    if backend.dialect == "sqlite":
        assert await count(backend, "SELECT count(*) FROM hub_entity_geo_rtree") == await count(
            backend, "SELECT count(*) FROM hub_entity_geo")


async def test_altitude_is_accepted(backend: Backend) -> None:
    geom = validate_geojson({"type": "LineString", "coordinates": [[LON0, LAT0, 35], [LON0 + 0.001, LAT0, 40]]})
    async with backend.engine.begin() as conn:
        await write_geometries(conn, "alt", "urn:alt", {LOC: geom})
        now = datetime.now(UTC)
        await conn.execute(insert(entities).values(tenant="alt", id="urn:alt", type="T", created_at=now,
                                                   modified_at=now, attrs={}))
    try:
        q = parse("intersects", "Polygon", square(LON0, LAT0, 0.01)["coordinates"])
        assert q is not None
        assert await select_ids(backend, q, "alt") == {"urn:alt"}
    finally:
        async with backend.engine.begin() as conn:
            await delete_geometries(conn, "alt", ["urn:alt"])
            await conn.execute(entities.delete().where(entities.c.tenant == "alt"))


async def test_injection_is_bound(backend: Backend) -> None:
    before = (await count(backend, "SELECT count(*) FROM hub_entity_geo"),
              await count(backend, "SELECT count(*) FROM hub_entities"))
    evil = [
        "x' OR '1'='1",
        "'); DROP TABLE hub_entity_geo; --",
        "\"; DELETE FROM hub_entities; --",
    ]
    for s in evil:
        for georel in ("near;maxDistance==100000", "within", "disjoint"):
            geometry = square(LON0, LAT0, 1) if georel != "near;maxDistance==100000" else point(LON0, LAT0)
            q = parse(georel, geometry["type"], geometry["coordinates"])
            assert q is not None
            # geoproperty and tenant straight into the SQL builder, bypassing the parser's checks
            poisoned = GeoQuery(q.georel, q.geometry, q.max_distance, q.min_distance, geoproperty=s)
            assert await select_ids(backend, poisoned) == set()
            assert await select_ids(backend, q, tenant=s) == set()
            stmt = select(func.count()).select_from(entities).where(
                geo_filter_sql(q, s, entities.c.id, backend.dialect))
            async with backend.engine.connect() as conn:
                assert (await conn.execute(stmt)).scalar_one() == 0
        with pytest.raises(BadRequestData):
            parse("within", "Point", "[1,2]", s)
        with pytest.raises(BadRequestData):
            parse("within", "Point", f"[1,2]{s}")
        with pytest.raises(BadRequestData):
            parse(f"within{s}", "Point", "[1,2]")
    after = (await count(backend, "SELECT count(*) FROM hub_entity_geo"),
             await count(backend, "SELECT count(*) FROM hub_entities"))
    assert before == after
    # The tenant is a bound parameter on the write path too.
    async with backend.engine.begin() as conn:
        await write_geometries(conn, evil[1], "urn:x'--", {LOC: point(1, 2)})
        await delete_geometries(conn, evil[1], ["urn:x'--"])
    assert await count(backend, "SELECT count(*) FROM hub_entity_geo") == before[0]


async def test_sqlite_corrupt_row_does_not_break_queries(backend: Backend) -> None:
    if backend.dialect != "sqlite":
        pytest.skip("SQLite only")
    async with backend.engine.begin() as conn:
        await conn.execute(insert(entity_geo).values(tenant="bad", entity_id="urn:bad", attr=LOC, geojson="{nope"))
        now = datetime.now(UTC)
        await conn.execute(insert(entities).values(tenant="bad", id="urn:bad", type="T", created_at=now,
                                                   modified_at=now, attrs={}))
    try:
        q = parse("disjoint", "Point", [LON0, LAT0])
        assert q is not None
        assert await select_ids(backend, q, "bad") == set()
    finally:
        async with backend.engine.begin() as conn:
            await conn.execute(entity_geo.delete().where(entity_geo.c.tenant == "bad"))
            await conn.execute(entities.delete().where(entities.c.tenant == "bad"))


def test_sql_builder_rejects_nonsense() -> None:
    q = parse("within", "Point", "[1,2]")
    assert q is not None
    with pytest.raises(ValueError):
        geo_filter_sql(q, "t", entities.c.id, "oracle")
    with pytest.raises(ValueError):
        geo_schema_ddl("oracle")
    with pytest.raises(ValueError):
        geo_filter_sql(GeoQuery("near", point(1, 2), None, None), "t", entities.c.id, "sqlite")


def test_expanded_iri_may_hold_any_iri_characters() -> None:
    q = parse_geoquery("within", "Point", "[1,2]", "location", lambda _: "https://example.org/ns#geo(x)=1")
    assert q is not None and q.geoproperty == "https://example.org/ns#geo(x)=1"
