"""The forecast API, the road grid as `RoadSegment` entities, and diversion advice, on both backends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from auth_tokens import Auth
from cityos.core import clock
from cityos.traffic.congestion.forecasting import speed_of
from cityos.traffic.congestion.grid import city_sections
from cityos.traffic.congestion.tpi import SPEED_BANDS, segment_tpi
from problem_details import problem

API = "/api/traffic/congestion"
JAM = "road-ew-02-04"  # a street segment in the middle of the grid


def test_speed_of_inverts_the_index() -> None:
    for road_class in SPEED_BANDS:
        for speed in (0.0, 3.5, 12.0, 18.0, 27.5, 41.0, 60.0):
            if speed < 2 * SPEED_BANDS[road_class][0]:
                assert abs(speed_of(segment_tpi(speed, road_class), road_class) - speed) < 0.2


async def report_slots(client: httpx.AsyncClient, headers: dict[str, str], ids: list[str], slots: int) -> None:
    start = clock.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=5 * slots)
    for k in range(slots):
        at = clock.iso(start + dt.timedelta(minutes=5 * k))
        readings = [{"segmentId": s, "speedKmh": 6.0 if s == JAM else 45.0 + (k % 3), "flowVph": 600,
                     "observedAt": at} for s in ids]
        response = await client.post(f"{API}/readings", headers=headers, json={"readings": readings})
        assert response.status_code == 200, response.text


async def test_grid_forecast_and_diversion(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                          app: Any) -> None:
    auth = Auth(app)
    staff = auth.headers("official", department="transport")
    grid = await client.post(f"{API}/segments/grid", headers=staff)
    assert grid.status_code == 201, grid.text
    sections = city_sections(42)
    assert grid.json() == {"registered": len(sections), "segments": len(sections), "seed": 42}
    again = await client.post(f"{API}/segments/grid", headers=staff, json={"seed": 42})
    assert again.json()["registered"] == 0  # idempotent
    entity = (await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:RoadSegment:{JAM}", headers=staff)).json()
    assert entity["location"]["value"]["type"] == "LineString"
    assert len(entity["location"]["value"]["coordinates"]) >= 2
    ids = [s.id for s in sections]

    # Before any history: nothing measured, persistence.
    empty = (await anon_client.get(f"{API}/forecast")).json()
    assert empty["segments"] == 0 and empty["forecast"]["tpi"] is None
    await report_slots(client, staff, ids, 2)
    before = (await anon_client.get(f"{API}/forecast", params={"segment": JAM})).json()
    assert before["model"]["kind"] == "persistence" and before["forecast"]["level"] == "严重拥堵"
    problem(await client.post(f"{API}/forecast/train", headers=staff), 409)  # too little history

    await report_slots(client, staff, ids, 10)
    trained = await client.post(f"{API}/forecast/train", headers=staff, json={"days": 2})
    assert trained.status_code == 200, trained.text
    version = trained.json()["version"]
    assert version.startswith("ridge-") and trained.json()["segments"] == len(ids)
    one = (await anon_client.get(f"{API}/forecast", params={"segment": JAM})).json()
    assert one["scope"] == "segment" and one["horizonMinutes"] == 15 and one["model"]["version"] == version
    assert one["forecast"]["level"] in ("中度拥堵", "严重拥堵") and one["forecast"]["speedKmh"] < 15
    assert one["forecastFor"] > one["observedAt"]
    district = next(s.district for s in sections if s.id == JAM)
    near = (await anon_client.get(f"{API}/forecast", params={"district": district})).json()
    assert near["scope"] == "district" and near["segments"] == sum(s.district == district for s in sections)
    city = (await anon_client.get(f"{API}/forecast")).json()
    assert city["segments"] == len(ids) and city["forecast"]["tpi"] is not None
    assert city["current"]["level"] in ("畅通", "基本畅通")
    segment = (await client.get(f"/ngsi-ld/v1/entities/urn:ngsi-ld:RoadSegment:{JAM}", headers=staff)).json()
    assert segment["congestionLevel"]["value"] == "严重拥堵"
    assert segment["location"]["value"]["type"] == "LineString"  # the reading merged, geometry kept

    advice = (await anon_client.get(f"{API}/diversions", params={"segment": JAM})).json()
    assert advice["needed"] is True and advice["routes"], advice
    jam = next(s for s in sections if s.id == JAM)
    for route in advice["routes"]:
        assert JAM not in route["segments"]
        assert route["nodes"][0] == jam.start and route["nodes"][-1] == jam.end
        assert route["geometry"]["type"] in ("LineString", "MultiLineString") and route["via"]
    free = (await anon_client.get(f"{API}/diversions", params={"segment": ids[0]})).json()
    assert free["needed"] is False and free["routes"] == []


async def test_forecast_refusals(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    auth = Auth(app)
    staff = auth.headers("official", department="transport")
    assert (await client.post(f"{API}/segments", headers=staff, json={
        "id": "s1", "name": "人民路", "district": "黄浦区", "roadClass": "arterial", "lengthM": 800,
        "location": {"type": "LineString", "coordinates": [[121.47, 31.23], [121.48, 31.23]]}})).status_code == 201
    problem(await anon_client.get(f"{API}/forecast", params={"segment": "nope"}), 404)
    problem(await anon_client.get(f"{API}/forecast", params={"district": "nowhere"}), 404)
    problem(await anon_client.get(f"{API}/forecast", params={"segment": "s1", "district": "黄浦区"}), 400)
    problem(await anon_client.get(f"{API}/forecast", params={"segment": "x" * 65}), 400)
    problem(await anon_client.get(f"{API}/forecast", params={"segment": "' OR 1=1 --"}), 404)
    problem(await anon_client.get(f"{API}/diversions", params={"segment": "nope"}), 404)
    problem(await anon_client.get(f"{API}/diversions"), 400)
    problem(await anon_client.post(f"{API}/forecast/train"), 401)
    problem(await client.post(f"{API}/forecast/train", headers=auth.headers("citizen")), 403)
    for days in ("x", 0, 91, True, 1.5):
        problem(await client.post(f"{API}/forecast/train", headers=staff, json={"days": days}), 400)
    problem(await client.post(f"{API}/forecast/train", headers=staff, content=b"{not json"), 400)
    problem(await anon_client.post(f"{API}/segments/grid"), 401)
    problem(await client.post(f"{API}/segments/grid", headers=auth.headers("citizen")), 403)
    problem(await client.post(f"{API}/segments/grid", headers=staff, json={"seed": "x"}), 400)
    for bad in ({"type": "Point", "coordinates": [121.4, 31.2]}, {"type": "LineString", "coordinates": [[1, 2]]},
                {"type": "LineString", "coordinates": [[500, 2], [1, 2]]}, "road"):
        problem(await client.post(f"{API}/segments", headers=staff, json={
            "id": "s2", "name": "x", "district": "d", "roadClass": "arterial", "lengthM": 10, "location": bad}), 400)
    view = (await anon_client.get(API)).json()
    assert [s["id"] for s in view["segments"]] == ["s1"]  # nothing half-registered
    entity = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:RoadSegment:s1", headers=staff)
    assert entity.json()["location"]["value"]["coordinates"][0] == [121.47, 31.23]
