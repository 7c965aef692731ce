"""The 15-minute living circle: walking distances on the street graph against hand-computed ones, and the API
over roads, places and districts published in the hub (both backends)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from shapely.geometry import LineString

from cityos.hub.geoquery import haversine
from cityos.livelihood.community import circle

# A 3 × 3 street grid, 0.005° apart (≈ 520 m east–west at 20°N, ≈ 556 m north–south).
LON0, LAT0, STEP = 110.30, 20.00, 0.005
GRID = [LineString([(LON0 + i * STEP, LAT0), (LON0 + i * STEP, LAT0 + 2 * STEP)]) for i in range(3)] + \
       [LineString([(LON0, LAT0 + j * STEP), (LON0 + 2 * STEP, LAT0 + j * STEP)]) for j in range(3)]


def test_walks_follow_the_streets_not_the_crow() -> None:
    graph = circle.street_graph(GRID)
    assert graph.number_of_nodes() == 9 and graph.number_of_edges() == 12  # split at every crossing
    reached = circle.walking_distances(graph, LON0, LAT0, minutes=60)
    far_corner = (round(LON0 + 2 * STEP, 6), round(LAT0 + 2 * STEP, 6))
    along_streets = 2 * haversine(LON0, LAT0, LON0 + STEP, LAT0) + 2 * haversine(LON0, LAT0, LON0, LAT0 + STEP)
    assert reached[far_corner] == pytest.approx(along_streets, rel=1e-4)  # nodes are rounded to 1e-6°
    assert reached[far_corner] > haversine(LON0, LAT0, LON0 + 2 * STEP, LAT0 + 2 * STEP)  # not as the crow flies
    # A budget of 10 minutes (800 m) reaches the two neighbours but not the far corner.
    near = circle.walking_distances(graph, LON0, LAT0, minutes=10)
    assert far_corner not in near and len(near) == 3


def test_a_circle_lists_what_is_reached_and_the_gaps() -> None:
    graph = circle.street_graph(GRID)
    places = [circle.Place("s", "实验小学", "school", LON0 + STEP, LAT0 + 0.0002),
              circle.Place("c", "社区医院", "hospital", LON0 + 2 * STEP, LAT0 + 2 * STEP),
              circle.Place("b", "公交站", "busStop", LON0, LAT0 + STEP)]
    result = circle.circle_of(graph, "天林", LON0, LAT0, places, minutes=15)
    assert [p["name"] for p in result["reach"]["school"]] == ["实验小学"]
    assert result["reach"]["busStop"][0]["minutes"] == pytest.approx(556 / 80, abs=0.2)
    assert "clinic" in result["gaps"]  # 2.2 km away along the streets: beyond 15 minutes
    assert set(result["gaps"]) == {"clinic", "market", "park", "eldercare"}
    assert result["isochrone"]["type"] in ("Polygon", "MultiPolygon")
    assert circle.circle_of(circle.street_graph([]), "空", LON0, LAT0, places, 15)["gaps"] == list(circle.NEEDS)


def entity(kind: str, ident: str, name: str, geometry: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:{kind}:{ident}", "type": kind, "name": {"type": "Property", "value": name},
            "location": {"type": "GeoProperty", "value": geometry}, **extra}


async def test_living_circle_api_over_the_hub(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    entities = [entity("Road", f"r{n}", f"路{n}", {"type": "LineString", "coordinates": list(line.coords)})
                for n, line in enumerate(GRID)]
    entities.append(entity("District", "d1", "天林社区", {"type": "Polygon", "coordinates": [[
        [LON0 - 0.001, LAT0 - 0.001], [LON0 + 0.001, LAT0 - 0.001], [LON0 + 0.001, LAT0 + 0.001],
        [LON0 - 0.001, LAT0 + 0.001], [LON0 - 0.001, LAT0 - 0.001]]]}))
    entities.append(entity("PointOfInterest", "p1", "实验小学", {"type": "Point", "coordinates": [LON0 + STEP, LAT0]},
                           category={"type": "Property", "value": ["school"]}))
    created = await client.post("/ngsi-ld/v1/entityOperations/create", json=entities,
                                headers={"Content-Type": "application/json"})
    assert created.status_code in (201, 204), created.text
    answer = await anon_client.get("/api/community/living-circle", params={"minutes": 15})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["streets"] == 12 and body["places"] == 1
    (community,) = body["communities"]
    assert community["community"] == "天林社区" and community["reach"]["school"][0]["name"] == "实验小学"
    assert body["communitiesMissing"]["clinic"] == 1
    bad = await anon_client.get("/api/community/living-circle", params={"minutes": 0})
    assert bad.status_code in (400, 422)
    # Without Community entities the districts stand in, coded by their id.
    assert (community["code"], community["district"]) == ("d1", "d1")


async def test_communities_are_one_code_everywhere(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    """A Community entity (urn:ngsi-ld:Community:<code>) has a district and a location: the circle is computed per
    community under the code repairs, notices, the council and waste use, and staff pick communities from a list
    that also holds the codes already in use."""
    entities = [entity("Road", f"r{n}", f"路{n}", {"type": "LineString", "coordinates": list(line.coords)})
                for n, line in enumerate(GRID)]
    entities.append(entity("District", "xuhui", "徐汇区", {"type": "Polygon", "coordinates": [[
        [LON0 - 0.01, LAT0 - 0.01], [LON0 + 0.02, LAT0 - 0.01], [LON0 + 0.02, LAT0 + 0.02],
        [LON0 - 0.01, LAT0 + 0.02], [LON0 - 0.01, LAT0 - 0.01]]]}))
    entities.append(entity("Community", "tianlin", "天林社区", {"type": "Point", "coordinates": [LON0, LAT0]},
                           district={"type": "Property", "value": "xuhui"}))
    entities.append(entity("Community", "jiangbin", "江滨社区",
                           {"type": "Point", "coordinates": [LON0 + 2 * STEP, LAT0 + 2 * STEP]},
                           district={"type": "Property", "value": "xuhui"}))
    entities.append(entity("PointOfInterest", "p1", "实验小学", {"type": "Point", "coordinates": [LON0 + STEP, LAT0]},
                           category={"type": "Property", "value": ["school"]}))
    created = await client.post("/ngsi-ld/v1/entityOperations/create", json=entities,
                                headers={"Content-Type": "application/json"})
    assert created.status_code in (201, 204), created.text
    body = (await anon_client.get("/api/community/living-circle")).json()
    by_code = {c["code"]: c for c in body["communities"]}
    assert set(by_code) == {"tianlin", "jiangbin"}  # the district is no longer a community of its own
    assert by_code["tianlin"]["community"] == "天林社区" and by_code["tianlin"]["district"] == "xuhui"
    assert by_code["tianlin"]["reach"]["school"][0]["name"] == "实验小学"
    assert "school" in by_code["jiangbin"]["gaps"]
    # An office already works with a community the hub does not publish yet: it is listed too, by its code.
    made = await client.post("/api/community/residents", json={"community": "xinfeng", "building": "1",
                                                                "person": "resident-1"})
    assert made.status_code == 201, made.text
    listed = await anon_client.get("/api/community/communities")
    assert listed.status_code == 200, listed.text
    assert listed.json() == [
        {"code": "jiangbin", "name": "江滨社区", "district": "xuhui"},
        {"code": "tianlin", "name": "天林社区", "district": "xuhui"},
        {"code": "xinfeng", "name": "xinfeng", "district": None}]
