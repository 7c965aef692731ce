"""The simulated city: reproducible from a seed, districts that tile, devices where they belong."""

from __future__ import annotations

import itertools

import shapely
from shapely.geometry import box

from cityos.sim.city import DEFAULT_BBOX, build_city
from cityos.sim.devices import allocate, load_profiles, place_devices
from cityos.sim.entities import city_entities


def test_same_seed_same_city() -> None:
    a, b = build_city(42), build_city(42)
    assert [d.polygon.wkt for d in a.districts] == [d.polygon.wkt for d in b.districts]
    assert [(p.id, p.point.wkt) for p in a.pois] == [(p.id, p.point.wkt) for p in b.pois]
    assert [r.line.wkt for r in a.roads] == [r.line.wkt for r in b.roads]
    other = build_city(7)
    assert [d.polygon.wkt for d in other.districts] != [d.polygon.wkt for d in a.districts]


def test_districts_tile_the_city_without_overlap() -> None:
    for seed in (1, 42, 2026):
        city = build_city(seed)
        assert len(city.districts) >= 8
        for a, b in itertools.combinations(city.districts, 2):
            assert a.polygon.intersection(b.polygon).area < 1e-12, (seed, a.id, b.id)
        union = shapely.union_all([d.polygon for d in city.districts])
        assert abs(union.area - box(*DEFAULT_BBOX).area) < 1e-9
        # Every district has a neighbour, and the neighbour relation is symmetric.
        for d in city.districts:
            assert d.neighbours
            assert all(d.id in city.district(n).neighbours for n in d.neighbours)


def test_city_has_roads_rivers_and_points_of_interest() -> None:
    city = build_city(42)
    assert len(city.roads) >= 10 and len(city.rivers) >= 2
    kinds = {p.kind for p in city.pois}
    assert {"school", "hospital", "carPark"} <= kinds
    for poi in city.pois:
        assert city.district(poi.district_id).polygon.contains(poi.point)


def test_devices_reproducible_and_placed() -> None:
    city = build_city(42)
    a = place_devices(city, 500, seed=42)
    b = place_devices(city, 500, seed=42)
    assert [(d.name, d.lon, d.lat, d.gateway) for d in a.devices] == [(d.name, d.lon, d.lat, d.gateway)
                                                                        for d in b.devices]
    assert len(a.devices) == 500
    kinds = {d.profile for d in a.devices}
    assert len(kinds) >= 8 and kinds <= set(load_profiles())
    for d in a.devices:
        assert city.district(d.district_id).polygon.buffer(1e-6).contains(shapely.Point(d.lon, d.lat))
    rivers = {r.id for r in city.rivers}
    assert all(d.anchor in rivers for d in a.devices if d.profile == "water-level")
    # Most devices share gateway connections; a few have their own.
    assert 1 <= len(a.direct) <= 8 and len(a.gateways) >= 2
    assert sum(len(g.devices) for g in a.gateways) + len(a.direct) == 500


def test_allocation_keeps_every_kind() -> None:
    counts = allocate(50, {"a": 0.9, "b": 0.05, "c": 0.05})
    assert sum(counts.values()) == 50 and min(counts.values()) >= 1


def test_city_entities_are_ngsi_ld() -> None:
    city = build_city(42)
    entities = city_entities(city)
    types = {e["type"] for e in entities}
    assert {"District", "PointOfInterest", "River", "Road"} <= types
    district = next(e for e in entities if e["type"] == "District")
    assert district["location"]["value"]["type"] == "Polygon"
    assert district["id"].startswith("urn:ngsi-ld:District:")
    assert len({e["id"] for e in entities}) == len(entities)
