"""Real time through the app on both backends: GTFS-RT polled from a loopback server, IoT readings over
MQTT, and what comes out (TripUpdates, VehiclePositions, arrivals, lines, plans)."""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.transit import gtfs_realtime_pb2
from gtfs_builder import gtfs_zip

from cityos.core import clock
from cityos.core.errors import BadRequestData

ZONE = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2026, 12, 9, 8, 14, 10, tzinfo=ZONE)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def rt_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fixed_now() -> Iterator[dt.datetime]:
    clock.set_clock(lambda: NOW.astimezone(dt.UTC))
    try:
        yield NOW
    finally:
        clock.reset_clock()


def vehicle(message: gtfs_realtime_pb2.FeedMessage, entity_id: str, trip: str, lat: float, lon: float,
            stop: str | None = None, status: int | None = None, start_date: str = "20261209",
            speed: float | None = None) -> None:
    entity = message.entity.add()
    entity.id = entity_id
    v = entity.vehicle
    v.trip.trip_id = trip
    v.trip.start_date = start_date
    v.vehicle.id = entity_id
    v.position.latitude = lat
    v.position.longitude = lon
    if speed is not None:
        v.position.speed = speed
    if stop:
        v.stop_id = stop
    if status is not None:
        v.current_status = status  # type: ignore[assignment]
    v.timestamp = int(NOW.timestamp()) - 10
    v.occupancy_status = gtfs_realtime_pb2.VehiclePosition.STANDING_ROOM_ONLY


def positions_feed() -> bytes:
    message = gtfs_realtime_pb2.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.timestamp = int(NOW.timestamp())
    stopped = gtfs_realtime_pb2.VehiclePosition.STOPPED_AT
    vehicle(message, "bus-7", "T1", 31.2200, 121.4700, "P2", stopped)       # 4 min late at Market
    vehicle(message, "bus-8", "T1", 31.2200, 121.4700, "NOSUCHSTOP", stopped)
    vehicle(message, "bus-9", "T3", 45.0, 10.0)                              # Italy: not this city's bus
    vehicle(message, "bus-10", "GHOST", 31.22, 121.47)
    vehicle(message, "bus-11", "T3", 31.21, 121.47, speed=300.0)            # 1,080 km/h
    message.entity.add().id = "alert-only"                                  # no vehicle: ignored
    return message.SerializeToString()


async def upload(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/mobility/feeds?feedId=city", content=gtfs_zip(),
                          headers={"Content-Type": "application/zip"})
    assert r.status_code == 201, r.text


async def test_gtfs_rt_positions_polled_then_published(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                       app: Any, rt_server: tuple[str, Path],
                                                       fixed_now: dt.datetime) -> None:
    await upload(client)
    base, folder = rt_server
    (folder / "vp.pb").write_bytes(positions_feed())
    live = app.state.mobility_live
    summary = await live.poll("", "city", f"{base}/vp.pb")
    assert summary == {"feedId": "city", "received": 5, "accepted": 1,
                       "refused": {"absurd_position": 1, "absurd_speed": 1, "unknown_stop": 1, "unknown_trip": 1}}
    status = (await anon_client.get("/api/mobility/realtime/city/status")).json()
    assert status["accepted"] == 1 and status["vehicles"] == 1 and status["refused"]["unknown_stop"] == 1

    r = await anon_client.get("/api/mobility/gtfs-rt/city/vehicle-positions", params={"format": "pb"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    positions = gtfs_realtime_pb2.FeedMessage()
    positions.ParseFromString(r.content)
    [entity] = positions.entity
    assert entity.vehicle.vehicle.id == "bus-7" and entity.vehicle.stop_id == "P2"
    assert entity.vehicle.occupancy_status == gtfs_realtime_pb2.VehiclePosition.STANDING_ROOM_ONLY

    updates = (await anon_client.get("/api/mobility/gtfs-rt/city/trip-updates")).json()
    trips = {e["tripUpdate"]["trip"]["tripId"]: e["tripUpdate"] for e in updates["entity"]}
    t1 = trips["T1"]
    assert t1["vehicle"]["id"] == "bus-7"
    by_stop = {u["stopId"]: u for u in t1["stopTimeUpdate"]}
    # At P2 since 08:14:00 (scheduled 08:10): leaves after the scheduled minute of dwell, reaches P3 4 min late.
    assert by_stop["P2"]["departure"]["delay"] == 240 and by_stop["P3"]["arrival"]["delay"] == 240
    assert by_stop["P2"]["departureOccupancyStatus"] == "STANDING_ROOM_ONLY"
    assert "T3" in trips and trips["T3"]["stopTimeUpdate"][0]["arrival"]["delay"] == 0

    arrivals = (await anon_client.get("/api/mobility/realtime/city/arrivals", params={"stopId": "P2"})).json()
    [first] = arrivals["arrivals"]
    assert first["tripId"] == "T1" and first["realTime"] is True and first["delay"] == 240
    assert first["predictedDeparture"] == "2026-12-09T08:15:00+08:00" and first["occupancyStatus"] == \
        "STANDING_ROOM_ONLY"
    lines = (await anon_client.get("/api/mobility/realtime/city/lines")).json()
    [r1] = lines
    assert r1["routeId"] == "R1" and r1["vehicles"][0]["vehicleId"] == "bus-7" and r1["vehicles"][0]["delay"] == 240

    plan = (await anon_client.get("/api/mobility/plan", params={
        "fromPlace": "31.2200,121.4700", "toPlace": "31.2100,121.4700", "time": "08:13", "modes": "TRANSIT"})).json()
    leg = next(leg for leg in plan["plan"]["itineraries"][0]["legs"] if leg["transitLeg"])
    assert leg["tripId"] == "city:T1" and leg["realTime"] is True and leg["departureDelay"] == 240
    assert leg["occupancyStatus"] == "STANDING_ROOM_ONLY"


async def test_gtfs_rt_bad_sources(client: httpx.AsyncClient, app: Any, rt_server: tuple[str, Path],
                                   fixed_now: dt.datetime) -> None:
    from cityos.core.errors import ResourceNotFound
    from cityos.mobility.live import GtfsRtError

    await upload(client)
    base, folder = rt_server
    (folder / "junk.pb").write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    (folder / "empty.pb").write_bytes(b"")
    live = app.state.mobility_live
    with pytest.raises(GtfsRtError, match="not a protobuf"):
        await live.poll("", "city", f"{base}/junk.pb")
    with pytest.raises(GtfsRtError, match="no header"):
        await live.poll("", "city", f"{base}/empty.pb")
    with pytest.raises(GtfsRtError, match="HTTP 404"):
        await live.poll("", "city", f"{base}/missing.pb")
    with pytest.raises(BadRequestData):
        await live.poll("", "city", "file:///etc/passwd")
    with pytest.raises(ResourceNotFound):
        await live.poll("", "nope", f"{base}/junk.pb")
    for path in ("/api/mobility/realtime/nope/status", "/api/mobility/gtfs-rt/nope/vehicle-positions",
                 "/api/mobility/realtime/nope/lines"):
        assert (await client.get(path)).status_code == 404
    missing = await client.get("/api/mobility/realtime/city/arrivals", params={"stopId": "NOSUCH"})
    assert missing.status_code == 404 and "NOSUCH" in missing.json()["detail"]
    assert (await client.get("/api/mobility/realtime/city/arrivals")).status_code == 400
    assert (await client.get("/api/mobility/realtime/city/arrivals",
                             params={"stopId": "P2", "limit": 0})).status_code == 400
    assert (await client.get("/api/mobility/gtfs-rt/city/vehicle-positions",
                             params={"format": "xml"})).status_code == 400


async def test_vehicle_readings_over_mqtt_reach_the_tracker(client: httpx.AsyncClient, app: Any,
                                                           fixed_now: dt.datetime) -> None:
    from cityos.iot.models import DeviceIn
    from iot.mqtt_support import MQTT_URL, Publisher, new_prefix, start_worker, stop_worker, wait_for

    if not MQTT_URL:
        pytest.skip("CITYOS_TEST_MQTT_URL is not set")
    await upload(client)
    result = await app.state.iot.provision_many([DeviceIn(name="bus-42", profile="transit-vehicle")])
    assert not result.errors
    topics = new_prefix()
    worker = await start_worker(app, topics)
    publisher = Publisher()
    live = app.state.mobility_live
    try:
        ts = int(NOW.timestamp() * 1000) - 20_000
        door = {"lat": 31.22, "lon": 121.47, "speed": 0, "feed": "city", "trip": "T1", "route": "R1", "stop": "P2",
                "status": "STOPPED_AT", "passengers": 75, "capacity": 80}
        publisher.publish(f"{topics}/bus-42/telemetry", {"ts": ts, "values": door}).wait_for_publish(5)
        publisher.publish(f"{topics}/bus-42/telemetry",
                          {"ts": ts + 1000, "values": {"lat": 31.22, "lon": 121.47, "speed": 900}}
                          ).wait_for_publish(5)   # out of the profile's range: a dead letter, never a position

        async def seen() -> bool:
            await live.settle()
            return bool((await live.tracker("", "city")).accepted)

        assert await wait_for(seen, 20)
        status = (await client.get("/api/mobility/realtime/city/status")).json()
        assert status["accepted"] == 1 and status["vehicles"] == 1
        positions = (await client.get("/api/mobility/gtfs-rt/city/vehicle-positions")).json()
        [entity] = positions["entity"]
        assert entity["vehicle"]["vehicle"]["id"] == "bus-42" and entity["vehicle"]["stopId"] == "P2"
        assert entity["vehicle"]["currentStatus"] == "STOPPED_AT"
        assert entity["vehicle"]["occupancyStatus"] == "CRUSHED_STANDING_ROOM_ONLY"
        assert entity["vehicle"]["occupancyPercentage"] == 94
        hub = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Vehicle:bus-42?options=keyValues")).json()
        assert hub["gtfsTripId"] == "T1" and hub["passengerCount"] == 75

        async def dead_lettered() -> bool:
            letters, _total = await app.state.iot.list_dead_letters(device="bus-42", reason="out_of_range")
            return any("speed=900" in letter["detail"] for letter in letters)

        assert await wait_for(dead_lettered, 10)
        assert (await live.tracker("", "city")).accepted == 1
    finally:
        publisher.close()
        await stop_worker(worker)


async def test_demo_buses_feed_the_tracker(client: httpx.AsyncClient, app: Any) -> None:
    """The demo's simulated buses (cityos.sim.buses.run_live) on the city feed: vehicles, delays, crowding."""
    import asyncio

    from cityos.sim.buses import run_live
    from cityos.sim.city import build_city
    from cityos.sim.transit import city_gtfs

    at = dt.datetime(2026, 12, 9, 8, 30, tzinfo=ZONE)
    clock.set_clock(lambda: at.astimezone(dt.UTC))
    try:
        feed = city_gtfs(build_city(), dt.date(2026, 12, 1), dt.date(2026, 12, 31))
        r = await client.post("/api/mobility/feeds?feedId=city", content=feed,
                              headers={"Content-Type": "application/zip"})
        assert r.status_code == 201, r.text
        live = app.state.mobility_live
        task = asyncio.create_task(run_live(live, "", "city", seed=5, every_s=0.05, window_s=3600))
        try:
            for _ in range(600):
                await asyncio.sleep(0.1)
                if (await live.tracker("", "city")).accepted > 1000:
                    break
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        status = (await client.get("/api/mobility/realtime/city/status")).json()
        assert status["accepted"] > 1000 and status["refused"] == {} and status["vehicles"] > 10
        lines = (await client.get("/api/mobility/realtime/city/lines")).json()
        assert lines and all(line["departuresObserved"] > 0 for line in lines)
        assert any(line["meanLoad"] for line in lines)
        updates = (await client.get("/api/mobility/gtfs-rt/city/trip-updates")).json()
        delays = [u["arrival"]["delay"] for e in updates["entity"] for u in e["tripUpdate"]["stopTimeUpdate"]]
        assert any(d > 60 for d in delays)  # rush hour: buses run late and the feed says so
    finally:
        clock.reset_clock()
