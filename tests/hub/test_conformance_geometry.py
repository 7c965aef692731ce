"""GeoProperty geometries that are GeoJSON but not OGC-valid, and the geo-queries over them.

RFC 7946 §3.1.6 (which ETSI GS CIM 009 v1.8.1 §4.7 uses for GeoProperty values and §4.10 for
geo-queries) asks of a linear ring only that it be closed with at least four positions; it does not
forbid a ring that crosses itself. Such a Polygon is stored and returned as written; the spatial
predicates of §4.10 evaluate its made-valid form (GEOS MakeValid, every lobe kept), the same on
SQLite (shapely) and PostgreSQL (PostGIS), for both the stored and the query geometry.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import shapely
from shapely.geometry import shape

from cityos.core.errors import BadRequestData
from cityos.hub.geoquery import evaluate_geo, parse_geoquery, spatial_geometry, spatial_shape, validate_geojson
from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
# A bow-tie: the ring crosses itself at (1, 1); two lobes, each of area 1.
BOWTIE = [[[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]]
# A pentagon whose first edges cross near its top (a small second lobe), like many hand-drawn areas.
CROSSED = [[[10.0, 10.0], [10.2, 10.0], [9.8, 8.0], [12.0, 7.5], [12.5, 9.5], [10.0, 10.0]]]
SQUARE = [[[5.0, 5.0], [6.0, 5.0], [6.0, 6.0], [5.0, 6.0], [5.0, 5.0]]]


def polygon(coords: Any) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": coords}


def test_self_intersecting_ring_is_kept_as_written() -> None:
    geom = polygon(BOWTIE)
    assert not shape(geom).is_valid
    assert validate_geojson(geom) == geom


def test_made_valid_form_keeps_every_lobe() -> None:
    fixed = spatial_shape(polygon(BOWTIE))
    assert fixed.is_valid and fixed.geom_type == "MultiPolygon"
    assert fixed.area == pytest.approx(2.0)
    assert fixed.contains(shapely.Point(0.4, 1.0)) and fixed.contains(shapely.Point(1.6, 1.0))
    assert not fixed.contains(shapely.Point(1.0, 0.4))  # between the lobes
    assert spatial_geometry(polygon(BOWTIE))["type"] == "MultiPolygon"


def test_valid_geometries_are_used_unchanged() -> None:
    square = polygon(SQUARE)
    assert spatial_geometry(square) is square
    point = {"type": "Point", "coordinates": [1.0, 2.0]}
    assert spatial_geometry(point) is point


def test_overlapping_multipolygon_parts_are_accepted() -> None:
    triangle = [[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 0.0]]]
    geom = {"type": "MultiPolygon", "coordinates": [triangle, triangle]}
    assert validate_geojson(geom) == geom
    assert spatial_shape(geom).is_valid


@pytest.mark.parametrize("coords", [
    [[[0, 0], [1, 1], [0, 0]]],  # fewer than four positions
    [[[0, 0], [2, 2], [2, 0], [0, 2]]],  # not closed
    [],
])
def test_rings_that_are_not_linear_rings_are_still_refused(coords: Any) -> None:
    with pytest.raises(BadRequestData):
        validate_geojson(polygon(coords))


async def create(client: httpx.AsyncClient, eid: str, coords: Any) -> None:
    body = {"id": eid, "type": "Building", "location": {"type": "GeoProperty", "value": polygon(coords)}}
    r = await client.post(E, json=body, headers=JSON)
    assert r.status_code == 201, r.text


async def count(client: httpx.AsyncClient, georel: str, geometry: str, coordinates: Any) -> set[str]:
    r = await client.get(E, params={"type": "Building", "georel": georel, "geometry": geometry,
                                    "coordinates": str(coordinates).replace(" ", ""), "count": "true"})
    assert r.status_code == 200, r.text
    ids = {e["id"] for e in r.json()}
    assert r.headers["NGSILD-Results-Count"] == str(len(ids))
    return ids


async def test_self_intersecting_polygon_is_stored_and_returned_as_written(client: httpx.AsyncClient) -> None:
    await create(client, "urn:ngsi-ld:Building:bowtie", BOWTIE)
    r = await client.get(f"{E}/urn:ngsi-ld:Building:bowtie")
    assert r.status_code == 200
    assert r.json()["location"]["value"] == polygon(BOWTIE)


async def test_geoqueries_use_the_made_valid_geometry(client: httpx.AsyncClient) -> None:
    bow, crossed, square = ("urn:ngsi-ld:Building:bowtie", "urn:ngsi-ld:Building:crossed",
                            "urn:ngsi-ld:Building:square")
    await create(client, bow, BOWTIE)
    await create(client, crossed, CROSSED)
    await create(client, square, SQUARE)
    # Inside the right lobe of the bow-tie only.
    assert await count(client, "contains", "Point", [1.6, 1.0]) == {bow}
    # Between the lobes: outside the made-valid bow-tie.
    assert await count(client, "contains", "Point", [1.0, 0.4]) == set()
    # The same crossed ring as the query: equals the stored one, and only it.
    assert await count(client, "equals", "Polygon", CROSSED) == {crossed}
    # A self-intersecting query geometry is made valid too.
    around = [[[-1.0, -1.0], [3.0, 3.0], [3.0, -1.0], [-1.0, 3.0], [-1.0, -1.0]]]
    assert await count(client, "intersects", "Polygon", around) == {bow}
    assert await count(client, "disjoint", "Polygon", around) == {crossed, square}
    big = [[[-5.0, -5.0], [20.0, -5.0], [20.0, 20.0], [-5.0, 20.0], [-5.0, -5.0]]]
    assert await count(client, "within", "Polygon", big) == {bow, crossed, square}
    half = [[[1.0, -1.0], [3.0, -1.0], [3.0, 3.0], [1.0, 3.0], [1.0, -1.0]]]
    assert await count(client, "overlaps", "Polygon", half) == {bow}
    r = await client.get(E, params={"type": "Building", "georel": "near;maxDistance==1000", "geometry": "Point",
                                    "coordinates": "[1.6,1.0]"})
    assert r.status_code == 200 and {e["id"] for e in r.json()} == {bow}


async def test_query_polygon_that_is_not_a_ring_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get(E, params={"type": "Building", "georel": "within", "geometry": "Polygon",
                                    "coordinates": "[[[0,0],[2,2],[2,0],[0,2]]]"})
    assert r.status_code == 400
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


def test_subscription_geoq_semantics_match() -> None:
    """Subscriptions evaluate with the same reference function as queries (no separate path)."""
    q = parse_geoquery("contains", "Point", [1.6, 1.0], None, lambda n: n)
    assert q is not None and evaluate_geo(q, polygon(BOWTIE))
