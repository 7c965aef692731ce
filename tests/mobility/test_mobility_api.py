"""Mobility API on both backends: feed upload and replacement, hub publication, stops, journey plans."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from gtfs_builder import BASE, gtfs_zip
from reference_csa import gtfs_data_dir

from auth_tokens import Auth
from problem_details import problem

ZIP = {"Content-Type": "application/zip"}


async def upload(client: httpx.AsyncClient, data: bytes, feed: str = "city", **headers: str) -> httpx.Response:
    return await client.post(f"/api/mobility/feeds?feedId={feed}", content=data, headers={**ZIP, **headers})


async def test_upload_list_and_publish(client: httpx.AsyncClient) -> None:
    response = await upload(client, gtfs_zip())
    assert response.status_code == 201, response.text
    feed = response.json()
    assert feed["feedId"] == "city" and feed["version"] == 1 and feed["timezone"] == "Asia/Shanghai"
    assert feed["counts"]["stopTimes"] == 8 and feed["counts"]["trips"] == 3
    listed = (await client.get("/api/mobility/feeds")).json()
    assert [f["feedId"] for f in listed] == ["city"]
    hub = await client.get("/ngsi-ld/v1/entities", params={"type": "GtfsStop,GtfsStation,GtfsRoute", "limit": 100})
    assert hub.status_code == 200, hub.text
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entity in hub.json():
        by_type.setdefault(entity["type"], []).append(entity)
    assert len(by_type["GtfsStop"]) == 4 and len(by_type["GtfsStation"]) == 1 and len(by_type["GtfsRoute"]) == 2
    platform = next(e for e in by_type["GtfsStop"] if e["id"].endswith(":P1"))
    assert platform["hasParentStation"]["object"] == "urn:ngsi-ld:GtfsStation:city:S1"
    assert platform["location"]["value"]["coordinates"] == [121.47, 31.23]


async def test_upload_needs_manage_right(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                         app: Any) -> None:
    problem(await upload(anon_client, gtfs_zip()), 401)
    problem(await upload(client, gtfs_zip(), **Auth(app).headers("citizen", username="c1")), 403)
    operator = await upload(client, gtfs_zip(), **Auth(app).headers("operator", username="op1"))
    assert operator.status_code == 201, operator.text
    # Reads are public.
    assert (await anon_client.get("/api/mobility/feeds")).status_code == 200


async def test_bad_feed_is_refused_with_notices_and_nothing_changes(client: httpx.AsyncClient) -> None:
    assert (await upload(client, gtfs_zip())).status_code == 201
    bad = gtfs_zip({"stop_times.txt": BASE["stop_times.txt"].replace("T1,08:20:00,08:20:00", "T1,08:05:00,08:05:00")
                    .replace("T3,08:35:00,08:35:00,P4", "T3,08:35:00,08:35:00,P9"),
                    "stops.txt": BASE["stops.txt"].replace("P4,East Park", "P5,East Park")})
    body = problem(await upload(client, bad), 400)
    codes = {n["code"] for n in body["notices"]}
    assert {"foreign_key_violation", "stop_time_with_arrival_before_previous_departure_time"} <= codes
    assert all({"code", "severity", "totalNotices", "sampleNotices"} <= set(n) for n in body["notices"])
    # The first version is intact: same version, same stops.
    feed = (await client.get("/api/mobility/feeds/city")).json()
    assert feed["version"] == 1
    stops = (await client.get("/api/mobility/stops", params={"near": "31.21,121.48", "radius": 50})).json()
    assert [s["stopId"] for s in stops] == ["P4"]
    for data in (b"", b"PK\x03\x04 broken", gtfs_zip({"trips.txt": None})):
        problem(await upload(client, data, feed="other"), 400)
    assert [f["feedId"] for f in (await client.get("/api/mobility/feeds")).json()] == ["city"]
    problem(await client.post("/api/mobility/feeds?feedId=bad/id", content=gtfs_zip(), headers=ZIP), 400)
    problem(await client.post("/api/mobility/feeds", content=gtfs_zip(), headers=ZIP), 400)


async def test_feed_size_limit(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from cityos.mobility import api
    monkeypatch.setattr(api, "MAX_FEED_BYTES", 1000)
    problem(await upload(client, gtfs_zip() + b"\0" * 2000), 413)
    assert (await client.get("/api/mobility/feeds")).json() == []


async def test_new_version_replaces_the_old(client: httpx.AsyncClient) -> None:
    assert (await upload(client, gtfs_zip())).status_code == 201
    moved = BASE["stops.txt"].replace("P4,East Park,31.2100,121.4800", "P6,East Park (new),31.2100,121.4800")
    second = await upload(client, gtfs_zip({"stops.txt": moved,
                                            "stop_times.txt": BASE["stop_times.txt"].replace(",P4,", ",P6,")}))
    assert second.status_code == 201, second.text
    assert second.json()["version"] == 2
    stops = (await client.get("/api/mobility/stops", params={"near": "31.21,121.48", "radius": 50})).json()
    assert [(s["stopId"], s["name"]) for s in stops] == [("P6", "East Park (new)")]
    ids = {e["id"] for e in (await client.get("/ngsi-ld/v1/entities", params={"type": "GtfsStop"})).json()}
    assert "urn:ngsi-ld:GtfsStop:city:P6" in ids and "urn:ngsi-ld:GtfsStop:city:P4" not in ids


async def test_several_feeds_and_gbk(client: httpx.AsyncClient) -> None:
    chinese = BASE["stops.txt"].replace("Market", "南京东路菜市场").replace("South Gate", "老西门")
    assert (await upload(client, gtfs_zip({"stops.txt": chinese}, encoding="gbk"), feed="gbk")).status_code == 201
    far = BASE["stops.txt"].replace("31.2", "39.9").replace("121.4", "116.3")
    assert (await upload(client, gtfs_zip({"stops.txt": far}), feed="beijing")).status_code == 201
    assert {f["feedId"] for f in (await client.get("/api/mobility/feeds")).json()} == {"gbk", "beijing"}
    near = (await client.get("/api/mobility/stops", params={"near": "31.22,121.47", "radius": 10})).json()
    assert [(s["feedId"], s["name"]) for s in near] == [("gbk", "南京东路菜市场")]
    only = (await client.get("/api/mobility/stops", params={"near": "39.92,116.37", "radius": 10,
                                                             "feedId": "beijing"})).json()
    assert [s["stopId"] for s in only] == ["P2"]
    problem(await client.get("/api/mobility/stops", params={"near": "31.22,121.47", "feedId": "nope"}), 404)
    for near_value in ("31.22", "abc,def", "91,10", "10,181", "nan,1"):
        problem(await client.get("/api/mobility/stops", params={"near": near_value}), 400)


async def test_plan_on_the_small_feed(client: httpx.AsyncClient) -> None:
    assert (await upload(client, gtfs_zip())).status_code == 201
    # From next to North Station to East Park on a Wednesday: line 1 then line 2 at South Gate.
    response = await client.get("/api/mobility/plan", params={
        "fromPlace": "31.2302,121.4701", "toPlace": "31.2101,121.4801", "date": "2026-12-09", "time": "07:55"})
    assert response.status_code == 200, response.text
    plan = response.json()["plan"]
    transit = [i for i in plan["itineraries"] if i["transfers"] == 1]
    assert transit, plan
    legs = transit[0]["legs"]
    assert [leg["mode"] for leg in legs] == ["WALK", "BUS", "BUS", "WALK"]
    assert legs[1]["route"] == "1" and legs[1]["headsign"] == "South Gate"
    assert legs[1]["startTime"] == "2026-12-09T08:00:00+08:00" and legs[1]["endTime"] == "2026-12-09T08:20:00+08:00"
    assert [s["name"] for s in legs[1]["intermediateStops"]] == ["Market"]
    assert legs[1]["legGeometry"]["type"] == "LineString" and len(legs[1]["legGeometry"]["coordinates"]) == 3
    assert legs[2]["startTime"] == "2026-12-09T08:25:00+08:00"
    assert transit[0]["endTime"] > "2026-12-09T08:35:00+08:00"
    # After midnight: the 23:50 trip reaches South Gate at 00:20 the next day.
    late = (await client.get("/api/mobility/plan", params={
        "fromPlace": "31.2300,121.4700", "toPlace": "31.2100,121.4700", "date": "2026-12-09", "time": "23:45"})).json()
    bus = [leg for i in late["plan"]["itineraries"] for leg in i["legs"] if leg["mode"] == "BUS"]
    assert bus and bus[0]["endTime"] == "2026-12-10T00:20:00+08:00" and bus[0]["serviceDate"] == "20261209"
    # arriveBy 08:40 at East Park: the latest departure that still arrives.
    by = (await client.get("/api/mobility/plan", params={
        "fromPlace": "31.2300,121.4700", "toPlace": "31.2100,121.4800", "date": "2026-12-09", "time": "08:40",
        "arriveBy": "true"})).json()
    transit_by = [i for i in by["plan"]["itineraries"] if i["transfers"] == 1]
    assert transit_by and transit_by[0]["endTime"] <= "2026-12-09T08:40:00+08:00"
    assert transit_by[0]["legs"][0]["mode"] == "BUS"
    # maxTransfers=0: no itinerary with a change.
    direct = (await client.get("/api/mobility/plan", params={
        "fromPlace": "31.2300,121.4700", "toPlace": "31.2100,121.4800", "date": "2026-12-09", "time": "07:55",
        "maxTransfers": 0})).json()
    assert all(i["transfers"] == 0 for i in direct["plan"]["itineraries"])
    # Only trams: no bus legs.
    trams = (await client.get("/api/mobility/plan", params={
        "fromPlace": "31.2300,121.4700", "toPlace": "31.2100,121.4800", "date": "2026-12-09", "time": "07:55",
        "modes": "TRAM,WALK"})).json()
    assert all(leg["mode"] == "WALK" for i in trams["plan"]["itineraries"] for leg in i["legs"])


async def test_plan_bad_input(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    ok = {"fromPlace": "31.2300,121.4700", "toPlace": "31.2100,121.4800", "date": "2026-12-09", "time": "08:00"}
    problem(await client.get("/api/mobility/plan", params=ok), 404)  # no feed yet
    assert (await upload(client, gtfs_zip())).status_code == 201
    assert (await anon_client.get("/api/mobility/plan", params=ok)).status_code == 200
    for change in ({"fromPlace": "31.23"}, {"toPlace": "x,y"}, {"fromPlace": "95,121"}, {"toPlace": "31,200"},
                   {"date": "2026-13-45"}, {"time": "25:00"}, {"time": "soon"}, {"maxTransfers": "99"},
                   {"maxTransfers": "-1"}, {"modes": "ROCKET"}, {"arriveBy": "maybe"},
                   {"fromPlace": "39.9,116.4"},          # outside the feed's area
                   {"date": "2030-01-01"}):               # outside the feed's service period
        body = problem(await client.get("/api/mobility/plan", params={**ok, **change}), 400)
        assert body["detail"]
    problem(await client.get("/api/mobility/plan", params={**ok, "feedId": "nope"}), 404)
    missing = dict(ok)
    missing.pop("toPlace")
    problem(await client.get("/api/mobility/plan", params=missing), 400)


NYC = gtfs_data_dir()


@pytest.mark.skipif(NYC is None, reason="../shared/data/gtfs is absent")
async def test_nyc_feed_imports_and_plans(client: httpx.AsyncClient, app: Any) -> None:
    assert NYC is not None
    response = await upload(client, (NYC / "nyc_subway_gtfs.zip").read_bytes(), feed="nyc")
    assert response.status_code == 201, response.text
    feed = response.json()
    assert feed["counts"]["stopTimes"] == 86150 and feed["timezone"] == "America/New_York"
    assert {n["code"] for n in feed["notices"]} == {"expired_calendar"}
    # Van Cortlandt Park-242 St to Flatbush Av (line 2's southern end) on a weekday morning.
    plan = (await client.get("/api/mobility/plan", params={
        "fromPlace": "40.889248,-73.898583", "toPlace": "40.632836,-73.947642", "date": "2025-01-08",
        "time": "08:00", "maxTransfers": 4})).json()["plan"]
    itineraries = plan["itineraries"]
    assert itineraries
    best = itineraries[0]
    assert best["startTime"].endswith("-05:00") and best["transfers"] >= 1
    modes = {leg["mode"] for leg in best["legs"]}
    assert "SUBWAY" in modes
    routes = [leg["route"] for leg in best["legs"] if leg["transitLeg"]]
    assert routes[0] == "1" and routes[-1] == "2"
    arrivals = [i["endTime"] for i in itineraries]
    assert arrivals == sorted(arrivals)
    for itinerary in itineraries:
        times = [(leg["startTime"], leg["endTime"]) for leg in itinerary["legs"]]
        assert all(a <= b for a, b in times)
        assert all(times[i][1] <= times[i + 1][0] for i in range(len(times) - 1))
    # Past midnight: a 23:55 departure finishes after 24:00 in the feed's own time.
    late = (await client.get("/api/mobility/plan", params={
        "fromPlace": "40.889248,-73.898583", "toPlace": "40.702068,-74.013664", "date": "2025-01-08",
        "time": "23:55"})).json()["plan"]
    assert late["itineraries"] and late["itineraries"][0]["endTime"].startswith("2025-01-09T")
    assert dt.date(2025, 1, 9).isoformat() in late["itineraries"][0]["endTime"]


async def test_gtfs_rt_trip_updates_schedule_only(client: httpx.AsyncClient) -> None:
    from google.transit import gtfs_realtime_pb2

    from cityos.core import clock

    assert (await upload(client, gtfs_zip())).status_code == 201
    now = dt.datetime(2026, 12, 9, 8, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    clock.set_clock(lambda: now.astimezone(dt.UTC))
    try:
        r = await client.get("/api/mobility/gtfs-rt/city/trip-updates", headers={"Accept": "application/x-protobuf"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
        message = gtfs_realtime_pb2.FeedMessage()
        message.ParseFromString(r.content)
        trips = {e.trip_update.trip.trip_id: e.trip_update for e in message.entity}
        # T1 (08:00–08:20) is running, T3 starts at 08:25 (within 30 minutes); T2 (23:50) is not.
        assert set(trips) == {"T1", "T3"}
        t1 = trips["T1"]
        assert t1.trip.start_date == "20261209" and t1.trip.route_id == "R1"
        assert [u.stop_id for u in t1.stop_time_update] == ["P2", "P3"]
        assert t1.stop_time_update[0].arrival.time == int(now.replace(minute=10).timestamp())
        as_json = (await client.get("/api/mobility/gtfs-rt/city/trip-updates")).json()
        assert as_json["header"]["gtfsRealtimeVersion"] == "2.0" and len(as_json["entity"]) == 2
    finally:
        clock.reset_clock()
    problem(await client.get("/api/mobility/gtfs-rt/nope/trip-updates"), 404)
    problem(await client.get("/api/mobility/gtfs-rt/city/trip-updates", params={"format": "xml"}), 400)
