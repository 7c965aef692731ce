"""The simulated city as NGSI-LD entities, so the cockpit and other domains can draw and query it.

Types follow Smart Data Models where one fits: `PointOfInterest` (with a `category`: school,
hospital, carPark, eldercare), `Road` (Transportation); rivers are `River`. Districts are `District`
entities (a single type: multi-typed entities would put the whole tenant on the hub's slower
multi-type query path) with `administrativeLevel` saying what they are.
"""

from __future__ import annotations

from typing import Any

from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from cityos.sim.city import City

URN = "urn:ngsi-ld"


def district_urn(district_id: str) -> str:
    return f"{URN}:District:sim-{district_id}"


def _geo(geometry: BaseGeometry) -> dict[str, Any]:
    geojson = mapping(geometry)
    # shapely gives tuples; JSON arrays are what the hub stores and compares.
    return {"type": "GeoProperty", "value": {"type": geojson["type"], "coordinates": _lists(geojson["coordinates"])}}


def _lists(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def city_entities(city: City) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    for d in city.districts:
        entity: dict[str, Any] = {
            "id": district_urn(d.id), "type": "District",
            "name": _prop(d.name), "administrativeLevel": _prop("district"),
            "population": _prop(d.population), "areaKm2": _prop(round(d.polygon.area * 104 * 111, 2)),
            "location": _geo(d.polygon), "source": _prop("cityos-sim"),
        }
        if d.neighbours:
            entity["adjacentDistrict"] = {"type": "Relationship", "object": [district_urn(n) for n in d.neighbours]}
        entities.append(entity)
    for r in city.roads:
        entities.append({"id": f"{URN}:Road:sim-{r.id}", "type": "Road", "name": _prop(r.name),
                         "roadClass": _prop(r.category), "location": _geo(r.line), "source": _prop("cityos-sim")})
    for river in city.rivers:
        entities.append({"id": f"{URN}:River:sim-{river.id}", "type": "River", "name": _prop(river.name),
                         "location": _geo(river.line), "source": _prop("cityos-sim")})
    for p in city.pois:
        entities.append({"id": f"{URN}:PointOfInterest:sim-{p.id}", "type": "PointOfInterest",
                         "name": _prop(p.name), "category": _prop([p.kind]), "location": _geo(p.point),
                         "refDistrict": {"type": "Relationship", "object": district_urn(p.district_id)},
                         "source": _prop("cityos-sim")})
    return entities
