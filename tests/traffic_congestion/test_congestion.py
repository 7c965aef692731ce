"""Congestion index (GB/T 33171-2016 levels): the pure index (hypothesis) and the API on both backends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_tokens import Auth
from cityos.core import clock
from cityos.traffic.congestion.tpi import LEVELS, SPEED_BANDS, SegmentIndex, level_of, segment_tpi, weighted_tpi
from problem_details import problem

API = "/api/traffic/congestion"
classes = st.sampled_from(sorted(SPEED_BANDS))
speeds = st.floats(0.0, 200.0, allow_nan=False)


@given(classes, speeds, speeds)
def test_slower_is_never_less_congested(road_class: str, a: float, b: float) -> None:
    slow, fast = sorted((a, b))
    assert 0.0 <= segment_tpi(fast, road_class) <= segment_tpi(slow, road_class) <= 10.0


@pytest.mark.parametrize("speed, level", [(45, "畅通"), (35, "基本畅通"), (25, "轻度拥堵"), (17, "中度拥堵"),
                                          (10, "严重拥堵"), (0, "严重拥堵")])
def test_arterial_bands(speed: float, level: str) -> None:
    assert LEVELS[level_of(segment_tpi(speed, "arterial"))] == level


def test_refusals_and_weighting() -> None:
    for bad in (-1.0, 201.0):
        with pytest.raises(ValueError):
            segment_tpi(bad, "arterial")
    with pytest.raises(ValueError):
        segment_tpi(30, "motorway")
    with pytest.raises(ValueError):
        level_of(10.5)
    assert weighted_tpi([]) is None
    busy, empty = SegmentIndex("a", "d", 8.0, 30.0), SegmentIndex("b", "d", 2.0, 10.0)
    assert weighted_tpi([busy, empty]) == 6.5
    assert weighted_tpi([SegmentIndex("a", "d", 8.0, 0.0), SegmentIndex("b", "d", 2.0, 0.0)]) == 5.0


async def test_city_and_district_index_from_reports(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                    app: Any) -> None:
    auth = Auth(app)
    staff = auth.headers("official", department="transport")
    for segment in ({"id": "s1", "name": "人民路", "district": "黄浦区", "roadClass": "arterial", "lengthM": 1000},
                    {"id": "s2", "name": "延安高架", "district": "黄浦区", "roadClass": "expressway", "lengthM": 3000},
                    {"id": "s3", "name": "小巷", "district": "徐汇区", "roadClass": "branch", "lengthM": 500}):
        assert (await client.post(f"{API}/segments", headers=staff, json=segment)).status_code == 201
    problem(await client.post(f"{API}/segments", headers=staff, json={"id": "s1", "name": "x", "district": "d",
                                                                       "roadClass": "arterial", "lengthM": 10}), 409)
    report = await client.post(f"{API}/readings", headers=staff, json={"readings": [
        {"segmentId": "s1", "speedKmh": 12.0, "flowVph": 1500},
        {"segmentId": "s2", "speedKmh": 70.0, "flowVph": 3000},
        {"segmentId": "s3", "speedKmh": 30.0, "flowVph": 100}]})
    assert report.status_code == 200, report.text
    view = (await anon_client.get(API)).json()
    by_id = {s["id"]: s for s in view["segments"]}
    assert by_id["s1"]["level"] == "严重拥堵" and by_id["s2"]["level"] == "畅通"
    assert by_id["s3"]["level"] == "基本畅通"
    huangpu = next(d for d in view["districts"] if d["district"] == "黄浦区")
    expected = weighted_tpi([SegmentIndex("s1", "黄浦区", by_id["s1"]["tpi"], 1.0 * 1500),
                             SegmentIndex("s2", "黄浦区", by_id["s2"]["tpi"], 3.0 * 3000)])
    assert huangpu["tpi"] == expected
    assert view["city"]["tpi"] == report.json()["city"]["tpi"]
    entity = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:TrafficFlowObserved:s1", headers=staff)
    assert entity.status_code == 200, entity.text
    assert entity.json()["congestionLevel"]["value"] == "严重拥堵"
    assert entity.json()["averageVehicleSpeed"]["value"] == 12.0
    history = (await anon_client.get(f"{API}/history", params={"scope": "city"})).json()
    assert len(history) == 1 and history[0]["tpi"] == view["city"]["tpi"]


async def test_bad_reports_change_nothing(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                          app: Any) -> None:
    auth = Auth(app)
    staff = auth.headers("official", department="transport")
    await client.post(f"{API}/segments", headers=staff, json={"id": "s1", "name": "人民路", "district": "黄浦区",
                                                              "roadClass": "arterial", "lengthM": 1000})
    good = {"segmentId": "s1", "speedKmh": 30.0}
    future = clock.iso(clock.now() + dt.timedelta(hours=1))
    for bad in ({"readings": []}, {"readings": "x"}, {"readings": [good, {"segmentId": "s1", "speedKmh": 250}]},
                {"readings": [{"segmentId": "s1", "speedKmh": -3}]}, {"readings": [{"segmentId": "s1",
                                                                                    "speedKmh": "fast"}]},
                {"readings": [{"segmentId": "s1", "speedKmh": 30, "flowVph": -1}]},
                {"readings": [{"segmentId": "s1", "speedKmh": 30, "observedAt": future}]},
                {"readings": [{"segmentId": "s1", "speedKmh": 30, "observedAt": "noon"}]},
                {"readings": [good, good]}, {"readings": [good] * 1001}, {"readings": [1]}):
        problem(await client.post(f"{API}/readings", headers=staff, json=bad), 400)
    problem(await client.post(f"{API}/readings", headers=staff, json={"readings": [good, {
        "segmentId": "nope", "speedKmh": 20}]}), 404)
    problem(await anon_client.post(f"{API}/readings", json={"readings": [good]}), 401)
    problem(await client.post(f"{API}/readings", headers=auth.headers("citizen"), json={"readings": [good]}), 403)
    problem(await client.post(f"{API}/segments", headers=auth.headers("citizen"), json={}), 403)
    for bad_segment in ({"name": "x", "district": "d", "roadClass": "motorway", "lengthM": 10},
                        {"name": "x", "district": "d", "roadClass": "arterial", "lengthM": 0},
                        {"name": "", "district": "d", "roadClass": "arterial", "lengthM": 10}):
        problem(await client.post(f"{API}/segments", headers=staff, json=bad_segment), 400)
    problem(await anon_client.get(f"{API}/history", params={"scope": "planet"}), 400)
    view = (await anon_client.get(API)).json()
    assert view["segments"][0]["tpi"] is None and view["city"]["tpi"] is None
