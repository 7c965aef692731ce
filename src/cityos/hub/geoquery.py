"""NGSI-LD geo-queries (ETSI GS CIM 009 v1.8.1 §4.10): parsing, reference semantics and SQL.

A geo-query reads "entity geometry <georel> query geometry":

- ``near;maxDistance==d`` / ``near;minDistance==d`` (metres; both may be combined): the distance
  between the entity geometry and the query Point is <= d / >= d;
- ``within``: the entity is within the query geometry; ``contains``: the entity contains it;
- ``intersects``, ``disjoint``, ``equals``, ``overlaps``: the OGC/GEOS predicates.

Semantics in one place, three evaluators that agree with each other:

- `evaluate_geo` is the pure-Python reference (shapely/GEOS); subscriptions use it directly.
- On PostgreSQL `geo_filter_sql` uses PostGIS: the predicates run on ``geometry`` (planar in
  degrees, exactly like shapely), ``near`` runs ``ST_DWithin`` on ``geography`` (so the GiST index
  on ``geom::geography`` is used) with ``use_spheroid => false``: distances are great-circle
  distances on the sphere of radius 6371008.8 m (PostGIS' sphere is the WGS84 mean radius), which
  is what `evaluate_geo` computes, so queries and subscription notifications agree to the
  millimetre instead of differing by up to 0.5 % (sphere versus spheroid).
- On SQLite, an R*Tree of bounding boxes prefilters and the scalar function
  ``cityos_geo_match`` (registered on every connection) makes the exact check with the
  reference semantics.

Distances: point to point is the haversine great-circle distance. For a line or polygon the
nearest point of the geometry is found in a local equirectangular projection centred on the
query point (exact enough at city scale: at 10 km the projection's error is a few metres at
most, and mostly much less), and the reported distance is the haversine distance to that
nearest point, i.e. always the real great-circle distance to a real point of the geometry.
Line and polygon edges are straight in longitude/latitude (as in PostGIS ``geometry``), whereas
PostGIS ``geography`` takes them as great-circle arcs; the two differ by millimetres for edges of
a few hundred metres. Longitudes are unwrapped around the query point, so ``near`` works across
the antimeridian.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import nearest_points
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    String,
    Text,
    and_,
    bindparam,
    cast,
    column,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    table,
    text,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import UserDefinedType

from cityos.core.db import json_dumps, register_sqlite_function
from cityos.core.errors import BadRequestData
from cityos.hub.models import entity_geo

log = logging.getLogger(__name__)

DEFAULT_GEOPROPERTY = "https://uri.etsi.org/ngsi-ld/location"
EARTH_RADIUS_M = 6371008.8
MAX_POSITIONS = 10_000
GEORELS = frozenset({"near", "within", "contains", "intersects", "disjoint", "equals", "overlaps"})
GEOMETRY_TYPES = ("Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon")
SQLITE_MATCH_FUNCTION = "cityos_geo_match"
RTREE_TABLE = "hub_entity_geo_rtree"

# Attribute names must not contain these (ETSI GS CIM 009 §4.6.2), nor whitespace or controls.
_FORBIDDEN_NAME = re.compile(r"[<>\"'=;()\s\x00-\x1f\x7f]")
_WHITESPACE = re.compile(r"[\s\x00-\x1f\x7f]")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_MODIFIERS = {"maxDistance": "max_distance", "minDistance": "min_distance"}
_DEG = math.pi / 180.0
_SQLITE_CHUNK = 500


@dataclass(frozen=True)
class GeoQuery:
    georel: str  # near | within | contains | intersects | disjoint | equals | overlaps
    geometry: dict[str, Any]  # a GeoJSON geometry that passed validate_geojson
    max_distance: float | None
    min_distance: float | None
    geoproperty: str = DEFAULT_GEOPROPERTY  # expanded IRI of the GeoProperty

    @cached_property
    def geometry_text(self) -> str:
        """The query geometry as compact GeoJSON text: the bound SQL parameter and the cache key."""
        return json_dumps(self.geometry)

    @cached_property
    def spatial_text(self) -> str:
        """The query geometry the predicates use (made valid if it is not), as GeoJSON text."""
        return json_dumps(spatial_geometry(self.geometry))


# --------------------------------------------------------------------------------------------
# Validation and parsing


def _bad(detail: str) -> BadRequestData:
    return BadRequestData(detail)


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def _position(value: Any, counter: _Counter) -> list[float | int]:
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= 3:
        raise _bad("A GeoJSON position must be an array of 2 or 3 numbers")
    for number in value:
        # bool is an int subclass; JSON true is not a coordinate.
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise _bad("GeoJSON coordinates must be numbers")
        if not math.isfinite(number):
            raise _bad("GeoJSON coordinates must be finite numbers")
    lon, lat = value[0], value[1]
    if not -180.0 <= lon <= 180.0:
        raise _bad(f"Longitude {lon} is outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise _bad(f"Latitude {lat} is outside [-90, 90]")
    counter.n += 1
    if counter.n > MAX_POSITIONS:
        raise _bad(f"A geometry may have at most {MAX_POSITIONS} positions")
    return list(value)


def _positions(value: Any, counter: _Counter, minimum: int, what: str) -> list[list[float | int]]:
    if not isinstance(value, list | tuple):
        raise _bad(f"The coordinates of a {what} must be an array of positions")
    if len(value) < minimum:
        raise _bad(f"A {what} needs at least {minimum} positions")
    return [_position(p, counter) for p in value]


def _ring(value: Any, counter: _Counter) -> list[list[float | int]]:
    ring = _positions(value, counter, 4, "polygon ring")
    if ring[0][:2] != ring[-1][:2]:
        raise _bad("A polygon ring must be closed (its first and last positions equal)")
    return ring


def _rings(value: Any, counter: _Counter) -> list[list[list[float | int]]]:
    if not isinstance(value, list | tuple) or not value:
        raise _bad("The coordinates of a Polygon must be a non-empty array of linear rings")
    return [_ring(r, counter) for r in value]


def _validate_coordinates(kind: str, coords: Any) -> Any:
    counter = _Counter()
    if kind == "Point":
        return _position(coords, counter)
    if kind == "LineString":
        return _positions(coords, counter, 2, "LineString")
    if kind == "MultiPoint":
        return _positions(coords, counter, 1, "MultiPoint")
    if kind == "Polygon":
        return _rings(coords, counter)
    if not isinstance(coords, list | tuple) or not coords:
        raise _bad(f"The coordinates of a {kind} must be a non-empty array")
    if kind == "MultiLineString":
        return [_positions(line, counter, 2, "LineString") for line in coords]
    return [_rings(polygon, counter) for polygon in coords]  # MultiPolygon


def _check_validity(kind: str, coords: Any) -> None:
    # RFC 7946 §3.1.6 asks of a ring only that it be closed with >= 4 positions: a self-intersecting
    # ring or overlapping MultiPolygon parts (OGC-invalid) are accepted and stored as written;
    # spatial predicates use their made-valid form (`spatial_geometry`). Only what GEOS cannot build
    # at all is refused.
    if kind not in ("Polygon", "MultiPolygon"):
        return
    try:
        shape({"type": kind, "coordinates": coords})
    except (ValueError, TypeError, shapely.errors.ShapelyError) as exc:
        raise _bad(f"Invalid {kind}: {exc}") from exc


_POLYGONAL = frozenset({"Polygon", "MultiPolygon"})


def _made_valid(geom: BaseGeometry) -> BaseGeometry:
    """GEOS MakeValid (linework: every lobe of a self-intersecting ring is kept), reduced to one kind.

    A GeometryCollection result (a polygon with a collapsed spike) keeps its areas only: the spike has
    no area, and PostGIS' GEOS (3.11) refuses collections in ST_Contains/ST_Within/ST_Overlaps.
    """
    fixed = shapely.make_valid(geom)
    if fixed.geom_type != "GeometryCollection":
        return fixed
    parts = list(fixed.geoms)
    for kinds in (_POLYGONAL, frozenset({"LineString", "MultiLineString"})):
        chosen = [g for g in parts if g.geom_type in kinds]
        if chosen:
            return shapely.union_all(chosen)
    return shapely.union_all(parts)


def spatial_shape(geometry: dict[str, Any]) -> BaseGeometry:
    """The shape spatial predicates evaluate: as written when OGC-valid, else its made-valid form."""
    geom = shape(geometry)
    if geometry.get("type") in _POLYGONAL and not geom.is_valid:
        return _made_valid(geom)
    return geom


def spatial_geometry(geometry: dict[str, Any]) -> dict[str, Any]:
    """`spatial_shape` as GeoJSON: what PostGIS indexes and compares (the document keeps the original)."""
    if geometry.get("type") not in _POLYGONAL:
        return geometry
    geom = shape(geometry)
    if geom.is_valid:
        return geometry
    mapped: dict[str, Any] = mapping(_made_valid(geom))
    return mapped


def _geometry(kind: Any, coords: Any) -> dict[str, Any]:
    if kind not in GEOMETRY_TYPES:
        raise _bad(f"Unsupported geometry type {kind!r}; expected one of {', '.join(GEOMETRY_TYPES)}")
    checked = _validate_coordinates(kind, coords)
    _check_validity(kind, checked)
    return {"type": kind, "coordinates": checked}


def validate_geojson(geometry: Any) -> dict[str, Any]:
    """Check a GeoJSON geometry (a GeoProperty value or a query geometry) and return a clean copy.

    Only ``type`` and ``coordinates`` are kept. Raises BadRequestData on anything invalid.
    """
    if not isinstance(geometry, dict):
        raise _bad("A GeoJSON geometry must be a JSON object")
    if "coordinates" not in geometry:
        raise _bad("A GeoJSON geometry needs 'coordinates'")
    return _geometry(geometry.get("type"), geometry["coordinates"])


def _parse_distance(name: str, raw: str) -> float:
    raw = raw.strip()
    if not _NUMBER.fullmatch(raw):
        raise _bad(f"{name} must be a non-negative number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise _bad(f"{name} must be finite")
    return value


def _parse_georel(georel: str) -> tuple[str, float | None, float | None]:
    parts = [p.strip() for p in georel.split(";")]
    name, modifiers = parts[0], parts[1:]
    if name not in GEORELS:
        raise _bad(f"Unknown georel {name!r}; expected one of {', '.join(sorted(GEORELS))}")
    if name != "near":
        if modifiers:
            raise _bad(f"georel {name!r} takes no modifiers")
        return name, None, None
    found: dict[str, float] = {}
    for modifier in modifiers:
        key, sep, raw = modifier.partition("==")
        key = key.strip()
        if not sep or key not in _MODIFIERS:
            raise _bad(f"Invalid near modifier {modifier!r}; use maxDistance==<m> or minDistance==<m>")
        if key in found:
            raise _bad(f"Duplicate near modifier {key!r}")
        found[key] = _parse_distance(key, raw)
    if not found:
        raise _bad("georel near needs maxDistance==<metres> or minDistance==<metres>")
    return name, found.get("maxDistance"), found.get("minDistance")


def _check_attr_name(name: str, what: str) -> None:
    if not name or len(name) > 512 or _FORBIDDEN_NAME.search(name):
        raise _bad(f"Invalid {what} {name!r}")


def _check_iri(iri: Any, what: str) -> None:
    # Expanded IRIs come from an @context; they are bound parameters anyway, but must fit the column.
    if not isinstance(iri, str) or not iri or len(iri) > 512 or _WHITESPACE.search(iri):
        raise _bad(f"Invalid {what} {iri!r}")


def parse_geoquery(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list[Any] | None,
    geoproperty: str | None,
    expand: Callable[[str], str],
) -> GeoQuery | None:
    """Build a GeoQuery from the request parameters (or a subscription's geoQ).

    None when none of georel/geometry/coordinates is given; BadRequestData when only some of them
    are given or any is invalid. ``coordinates`` is JSON text (URL parameter) or a parsed list.
    ``expand`` maps the short geoproperty name (default "location") to its IRI.
    """
    if georel is None and geometry is None and coordinates is None:
        return None
    missing = [n for n, v in (("georel", georel), ("geometry", geometry), ("coordinates", coordinates))
               if v is None]
    if missing:
        raise _bad(f"A geo-query needs georel, geometry and coordinates; missing {', '.join(missing)}")
    assert georel is not None and geometry is not None and coordinates is not None
    if not isinstance(georel, str) or not isinstance(geometry, str):
        raise _bad("georel and geometry must be strings")
    rel, max_distance, min_distance = _parse_georel(georel)
    if isinstance(coordinates, str):
        try:
            coords: Any = orjson.loads(coordinates)
        except orjson.JSONDecodeError as exc:
            raise _bad(f"coordinates is not valid JSON: {exc}") from exc
    elif isinstance(coordinates, list | tuple):
        coords = coordinates
    else:
        raise _bad("coordinates must be a JSON array")
    geom = _geometry(geometry.strip(), coords)
    if rel == "near" and geom["type"] != "Point":
        raise _bad("georel near is only supported with a Point geometry")
    short = "location" if geoproperty is None else geoproperty.strip()
    _check_attr_name(short, "geoproperty")
    iri = expand(short)
    _check_iri(iri, "geoproperty")
    return GeoQuery(georel=rel, geometry=geom, max_distance=max_distance, min_distance=min_distance,
                    geoproperty=iri)


# --------------------------------------------------------------------------------------------
# Reference semantics


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres on the sphere of radius EARTH_RADIUS_M."""
    p1, p2 = lat1 * _DEG, lat2 * _DEG
    dp = p2 - p1
    dl = (lon2 - lon1) * _DEG
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _wrap(delta: Any) -> Any:
    """Longitude difference(s) into [-180, 180)."""
    return (delta + 180.0) % 360.0 - 180.0


def _distance_to(geom: BaseGeometry, lon0: float, lat0: float) -> float:
    """Metres from (lon0, lat0) to the nearest point of a line/polygon geometry (see module doc)."""
    kx = math.cos(lat0 * _DEG) * _DEG * EARTH_RADIUS_M
    ky = _DEG * EARTH_RADIUS_M

    def project(xy: Any) -> Any:
        out = np.empty_like(xy)
        out[:, 0] = _wrap(xy[:, 0] - lon0) * kx
        out[:, 1] = (xy[:, 1] - lat0) * ky
        return out

    projected = shapely.transform(geom, project)
    origin = shapely.Point(0.0, 0.0)
    if shapely.distance(projected, origin) == 0.0:
        return 0.0
    nearest = nearest_points(projected, origin)[0]
    lat = lat0 + nearest.y / ky
    lon = lon0 + (nearest.x / kx if kx > 0.0 else 0.0)
    return haversine(lon0, lat0, lon, lat)


def geo_distance(geometry: dict[str, Any], lon0: float, lat0: float) -> float:
    """Metres from (lon0, lat0) to the nearest point of a GeoJSON geometry."""
    kind = geometry["type"]
    coords = geometry["coordinates"]
    if kind == "Point":
        return haversine(lon0, lat0, coords[0], coords[1])
    if kind == "MultiPoint":
        return min(haversine(lon0, lat0, p[0], p[1]) for p in coords)
    return _distance_to(spatial_shape(geometry), lon0, lat0)


@lru_cache(maxsize=64)
def _query_shape(text: str) -> BaseGeometry:
    """Parsed and prepared query geometry; many rows are checked against one query."""
    geom = spatial_shape(orjson.loads(text))
    shapely.prepare(geom)
    return geom


def _relate(georel: str, entity: BaseGeometry, query: BaseGeometry) -> bool:
    # The prepared query geometry goes first where the predicate allows it.
    if georel == "within":
        return bool(shapely.contains(query, entity))
    if georel == "contains":
        return bool(shapely.within(query, entity))
    if georel == "intersects":
        return bool(shapely.intersects(query, entity))
    if georel == "disjoint":
        return bool(shapely.disjoint(query, entity))
    if georel == "overlaps":
        return bool(shapely.overlaps(query, entity))
    if georel == "equals":
        return bool(shapely.equals(entity, query))
    raise ValueError(f"unknown georel {georel!r}")


def _near(geometry: dict[str, Any], point: list[Any], max_d: float | None, min_d: float | None) -> bool:
    d = geo_distance(geometry, point[0], point[1])
    if max_d is not None and d > max_d:
        return False
    return not (min_d is not None and d < min_d)


def _match(georel: str, entity: dict[str, Any], query_text: str, max_d: float | None,
           min_d: float | None) -> bool:
    if georel == "near":
        return _near(entity, _query_point(query_text), max_d, min_d)
    return _relate(georel, spatial_shape(entity), _query_shape(query_text))


@lru_cache(maxsize=64)
def _query_point(text: str) -> list[Any]:
    coords: list[Any] = orjson.loads(text)["coordinates"]
    return coords


def evaluate_geo(query: GeoQuery, entity_geometry: dict[str, Any]) -> bool:
    """Does the entity geometry satisfy the geo-query? The reference semantics (module doc)."""
    return _match(query.georel, entity_geometry, query.geometry_text, query.max_distance,
                  query.min_distance)


def _sqlite_geo_match(geojson: Any, georel: Any, query_text: Any, max_d: Any, min_d: Any) -> int:
    """SQLite scalar function: 1 when the row's geometry matches, else 0 (never raises)."""
    if geojson is None or query_text is None:
        return 0
    try:
        entity = orjson.loads(geojson)
        return 1 if _match(georel, entity, query_text, max_d, min_d) else 0
    except Exception:  # a corrupt row must not abort the whole query
        log.warning("geo match failed for %.200s", geojson, exc_info=True)
        return 0


register_sqlite_function(SQLITE_MATCH_FUNCTION, 5, _sqlite_geo_match)


# --------------------------------------------------------------------------------------------
# Bounding boxes (SQLite R*Tree)


def _iter_positions(coords: Any) -> Iterator[list[Any]]:
    if coords and isinstance(coords[0], int | float):
        yield coords
        return
    for item in coords:
        yield from _iter_positions(item)


def geometry_bbox(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """(minx, maxx, miny, maxy) in degrees, the R*Tree's column order."""
    xs: list[float] = []
    ys: list[float] = []
    for p in _iter_positions(geometry["coordinates"]):
        xs.append(p[0])
        ys.append(p[1])
    return float(min(xs)), float(max(xs)), float(min(ys)), float(max(ys))


def near_bbox(lon0: float, lat0: float, distance: float) -> tuple[list[tuple[float, float]], float, float]:
    """Longitude intervals and the latitude range holding every point within `distance` metres.

    Safely overestimated; the longitude range is split in two across the antimeridian.
    """
    ang = distance / EARTH_RADIUS_M
    margin = 1e-7
    dlat = ang / _DEG * (1 + 1e-6) + margin
    lat_lo, lat_hi = lat0 - dlat, lat0 + dlat
    if ang >= math.pi / 2 or lat_lo <= -90.0 or lat_hi >= 90.0:
        return [(-180.0, 180.0)], max(lat_lo, -90.0), min(lat_hi, 90.0)
    ratio = math.sin(ang) / math.cos(lat0 * _DEG)
    if ratio >= 1.0:
        return [(-180.0, 180.0)], lat_lo, lat_hi
    dlon = math.asin(ratio) / _DEG * (1 + 1e-6) + margin
    if dlon >= 180.0:
        return [(-180.0, 180.0)], lat_lo, lat_hi
    lo, hi = lon0 - dlon, lon0 + dlon
    if lo < -180.0:
        return [(lo + 360.0, 180.0), (-180.0, hi)], lat_lo, lat_hi
    if hi > 180.0:
        return [(lo, 180.0), (-180.0, hi - 360.0)], lat_lo, lat_hi
    return [(lo, hi)], lat_lo, lat_hi


# --------------------------------------------------------------------------------------------
# SQL


class _Geography(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "geography"


class _Geometry(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "geometry(Geometry, 4326)"


# A light view of hub_entity_geo that also knows the PostGIS column the migration adds.
_geo = table(
    "hub_entity_geo",
    column("gid"),
    column("tenant", String),
    column("entity_id", String),
    column("attr", String),
    column("geojson", Text),
    column("geom", _Geometry()),
)
_rtree = table(
    RTREE_TABLE,
    column("gid"),
    column("minx", Float),
    column("maxx", Float),
    column("miny", Float),
    column("maxy", Float),
)

_PG_PREDICATES = {
    "within": "ST_Within",
    "contains": "ST_Contains",
    "intersects": "ST_Intersects",
    "disjoint": "ST_Disjoint",
    "equals": "ST_Equals",
    "overlaps": "ST_Overlaps",
}


def _param(name: str, value: Any, type_: Any) -> Any:
    return bindparam(name, value, type_=type_, unique=True)


def _pg_condition(query: GeoQuery, g: Any) -> ColumnElement[bool]:
    qgeom = func.ST_SetSRID(func.ST_GeomFromGeoJSON(_param("geoq_geometry", query.spatial_text, Text)),
                            4326)
    if query.georel != "near":
        fn = getattr(func, _PG_PREDICATES[query.georel])
        cond: ColumnElement[bool] = fn(g.c.geom, qgeom, type_=Boolean)
        return cond
    geog = cast(g.c.geom, _Geography())
    qgeog = cast(qgeom, _Geography())
    conds: list[ColumnElement[bool]] = []
    if query.max_distance is not None:
        conds.append(func.ST_DWithin(geog, qgeog, _param("geoq_max", query.max_distance, Float),
                                     false(), type_=Boolean))
    if query.min_distance is not None:
        conds.append(~func.ST_DWithin(geog, qgeog, _param("geoq_min", query.min_distance, Float),
                                      false(), type_=Boolean))
    return and_(*conds)


def _sqlite_prefilter(query: GeoQuery, r: Any) -> ColumnElement[bool] | None:
    if query.georel == "disjoint":
        return None
    if query.georel == "near":
        if query.max_distance is None:
            return None
        lon0, lat0 = query.geometry["coordinates"][:2]
        lon_ranges, lat_lo, lat_hi = near_bbox(float(lon0), float(lat0), query.max_distance)
    else:
        minx, maxx, miny, maxy = geometry_bbox(query.geometry)
        lon_ranges, lat_lo, lat_hi = [(minx, maxx)], miny, maxy
    lon_conds = [and_(r.c.minx <= _param("geoq_x1", hi, Float), r.c.maxx >= _param("geoq_x0", lo, Float))
                 for lo, hi in lon_ranges]
    return and_(
        or_(*lon_conds) if len(lon_conds) > 1 else lon_conds[0],
        r.c.miny <= _param("geoq_y1", lat_hi, Float),
        r.c.maxy >= _param("geoq_y0", lat_lo, Float),
    )


def geo_filter_sql(query: GeoQuery, tenant: str, entity_id_column: ColumnElement[Any],
                   dialect: str) -> ColumnElement[bool]:
    """EXISTS over hub_entity_geo: the entity's `query.geoproperty` geometry matches the query.

    Every value is a bound parameter. `dialect` is "postgresql" or "sqlite".
    """
    if query.georel == "near" and query.max_distance is None and query.min_distance is None:
        raise ValueError("a near geo-query needs maxDistance or minDistance")
    g = _geo.alias()
    base = [
        g.c.tenant == _param("geoq_tenant", tenant, String),
        g.c.entity_id == entity_id_column,
        g.c.attr == _param("geoq_attr", query.geoproperty, String),
    ]
    if dialect == "postgresql":
        return select(literal(1)).select_from(g).where(*base, _pg_condition(query, g)).exists()
    if dialect != "sqlite":
        raise ValueError(f"unsupported dialect {dialect!r}")
    exact = func.cityos_geo_match(
        g.c.geojson,
        _param("geoq_rel", query.georel, String),
        _param("geoq_geometry", query.geometry_text, Text),
        _param("geoq_max", query.max_distance, Float),
        _param("geoq_min", query.min_distance, Float),
        type_=Boolean,
    ) == true()
    r = _rtree.alias()
    prefilter = _sqlite_prefilter(query, r)
    if prefilter is None:
        return select(literal(1)).select_from(g).where(*base, exact).exists()
    joined = g.join(r, r.c.gid == g.c.gid)
    # Uncorrelated IN, not EXISTS: SQLite then starts from the R*Tree instead of probing it once per entity.
    matching = select(g.c.entity_id).select_from(joined).where(*base[::2], prefilter, exact)
    return entity_id_column.in_(matching)


def geo_schema_ddl(dialect: str) -> list[str]:
    """DDL a migration runs after the hub tables exist (idempotent).

    PostgreSQL needs the PostGIS extension available (CREATE EXTENSION needs a superuser unless
    the extension is already installed in the database).
    """
    if dialect == "postgresql":
        return [
            "CREATE EXTENSION IF NOT EXISTS postgis",
            "ALTER TABLE hub_entity_geo ADD COLUMN IF NOT EXISTS geom geometry(Geometry, 4326)",
            "CREATE INDEX IF NOT EXISTS ix_hub_entity_geo_geom ON hub_entity_geo USING GIST (geom)",
            "CREATE INDEX IF NOT EXISTS ix_hub_entity_geo_geog ON hub_entity_geo "
            "USING GIST ((geom::geography))",
        ]
    if dialect == "sqlite":
        return [f"CREATE VIRTUAL TABLE IF NOT EXISTS {RTREE_TABLE} USING rtree(gid, minx, maxx, miny, maxy)"]
    raise ValueError(f"unsupported dialect {dialect!r}")


# --------------------------------------------------------------------------------------------
# Writes


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def delete_geometries(conn: AsyncConnection, tenant: str, entity_ids: list[str]) -> None:
    """Remove every geometry row (and R*Tree box) of these entities."""
    ids = list(dict.fromkeys(entity_ids))
    if not ids:
        return
    if conn.dialect.name == "postgresql":
        # A join with the id list, not `entity_id = ANY(:ids)`: on a table without statistics yet (a bulk
        # provisioning) the planner scans it and compared every row with every id, 0.8 s per 2,000 ids.
        await conn.execute(_PG_DELETE_GEO, {"tenant": tenant, "ids": ids})
        return
    for chunk in _chunks(ids, _SQLITE_CHUNK):
        gids = select(entity_geo.c.gid).where(entity_geo.c.tenant == tenant, entity_geo.c.entity_id.in_(chunk))
        await conn.execute(delete(_rtree).where(_rtree.c.gid.in_(gids)))
        await conn.execute(delete(entity_geo).where(entity_geo.c.tenant == tenant,
                                                    entity_geo.c.entity_id.in_(chunk)))


_PG_DELETE_GEO = text(
    "DELETE FROM hub_entity_geo AS g USING unnest(CAST(:ids AS text[])) AS u(id) "
    "WHERE g.tenant = :tenant AND g.entity_id = u.id"
)

_PG_INSERT = insert(_geo).values(
    tenant=bindparam("tenant"),
    entity_id=bindparam("entity_id"),
    attr=bindparam("attr"),
    geojson=bindparam("geojson"),
    geom=func.ST_SetSRID(func.ST_Force2D(func.ST_GeomFromGeoJSON(bindparam("geojson_g", type_=Text))), 4326),
)
_SQLITE_INSERT = insert(entity_geo).returning(entity_geo.c.gid, entity_geo.c.entity_id, entity_geo.c.attr)


async def write_geometries_many(conn: AsyncConnection, tenant: str,
                                rows: list[tuple[str, dict[str, dict[str, Any]]]]) -> None:
    """Replace all geometry rows of many entities: one delete, one batched insert.

    `rows` holds (entity id, {attribute IRI: GeoJSON geometry}); geometries must have passed
    validate_geojson. When an entity id repeats, its last entry wins.
    """
    latest = dict(rows)
    if not latest:
        return
    await delete_geometries(conn, tenant, list(latest))
    items = [(eid, attr, geom) for eid, geometries in latest.items() for attr, geom in geometries.items()]
    if not items:
        return
    if conn.dialect.name == "postgresql":
        pg_params: list[dict[str, Any]] = []
        for eid, attr, geom in items:
            text = json_dumps(geom)
            pg_params.append({"tenant": tenant, "entity_id": eid, "attr": attr, "geojson": text,
                              "geojson_g": json_dumps(spatial_geometry(geom))})
        await conn.execute(_PG_INSERT, pg_params)
        return
    params = [{"tenant": tenant, "entity_id": eid, "attr": attr, "geojson": json_dumps(geom)}
              for eid, attr, geom in items]
    boxes = {(eid, attr): geometry_bbox(geom) for eid, attr, geom in items}
    result = await conn.execute(_SQLITE_INSERT, params)
    rtree_rows: list[dict[str, Any]] = []
    for gid, eid, attr in result.all():
        minx, maxx, miny, maxy = boxes[(eid, attr)]
        rtree_rows.append({"gid": gid, "minx": minx, "maxx": maxx, "miny": miny, "maxy": maxy})
    await conn.execute(insert(_rtree), rtree_rows)


async def write_geometries(conn: AsyncConnection, tenant: str, entity_id: str,
                           geometries: dict[str, dict[str, Any]]) -> None:
    """Replace all geometry rows of one entity with `geometries` ({attribute IRI: GeoJSON})."""
    await write_geometries_many(conn, tenant, [(entity_id, geometries)])
