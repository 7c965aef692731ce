"""GBFS v2.3 ingestion from a real HTTP server on loopback, on both backends."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.core.outbound import Outbound


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def gbfs_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    write_system(tmp_path, base)
    try:
        yield base, tmp_path
    finally:
        server.shutdown()
        server.server_close()


def _doc(data: dict[str, Any]) -> str:
    return json.dumps({"last_updated": 1733380000, "ttl": 30, "version": "2.3", "data": data})


def write_system(folder: Path, base: str, bikes: int = 4) -> None:
    feeds = [{"name": n, "url": f"{base}/{n}.json"} for n in
             ("system_information", "station_information", "station_status", "free_bike_status")]
    (folder / "gbfs.json").write_text(_doc({"en": {"feeds": feeds}}))
    (folder / "system_information.json").write_text(_doc({
        "system_id": "hk", "language": "zh", "name": "Haikou Bikes / 海口单车", "timezone": "Asia/Shanghai"}))
    (folder / "station_information.json").write_text(_doc({"stations": [
        {"station_id": "A", "name": "人民公园", "lat": 20.03, "lon": 110.33, "capacity": 20},
        {"station_id": "B", "name": "Harbour", "lat": 20.05, "lon": 110.35, "capacity": 10}]}))
    (folder / "station_status.json").write_text(_doc({"stations": [
        {"station_id": "A", "num_bikes_available": bikes, "num_docks_available": 20 - bikes, "is_installed": True,
         "is_renting": True, "is_returning": True, "last_reported": 1733380000},
        {"station_id": "B", "num_bikes_available": 0, "num_docks_available": 10, "is_installed": True,
         "is_renting": False, "is_returning": True, "last_reported": 1733380000},
        {"station_id": "GHOST", "num_bikes_available": 1, "num_docks_available": 1, "is_installed": True,
         "is_renting": True, "is_returning": True, "last_reported": 1733380000}]}))
    (folder / "free_bike_status.json").write_text(_doc({"bikes": [
        {"bike_id": "x1", "lat": 20.04, "lon": 110.34, "is_reserved": False, "is_disabled": False},
        {"bike_id": "x2", "lat": 20.04, "lon": 110.34, "is_reserved": True, "is_disabled": False}]}))


async def test_register_refresh_and_publish(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                            gbfs_server: tuple[str, Path]) -> None:
    base, folder = gbfs_server
    r = await client.post("/api/mobility/bikeshare/systems", json={"systemId": "hk", "url": f"{base}/gbfs.json"})
    assert r.status_code == 201, r.text
    system = r.json()
    assert system["stations"] == 2 and system["freeBikes"] == 1 and system["skippedStations"] == ["GHOST"]
    assert system["name"] == "Haikou Bikes / 海口单车" and system["lastError"] is None
    near = (await anon_client.get("/api/mobility/bikeshare/stations", params={"near": "20.03,110.33"})).json()
    assert [(s["stationId"], s["bikesAvailable"], s["docksAvailable"], s["isRenting"]) for s in near] == \
        [("A", 4, 16, True)]
    entity = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:BikeHireDockingStation:hk:A")).json()
    assert entity["type"] == "BikeHireDockingStation" and entity["availableBikeNumber"]["value"] == 4
    assert entity["freeSlotNumber"]["value"] == 16 and entity["totalSlotNumber"]["value"] == 20
    write_system(folder, base, bikes=9)
    r = await client.post("/api/mobility/bikeshare/systems/hk/refresh")
    assert r.status_code == 200, r.text
    near = (await client.get("/api/mobility/bikeshare/stations", params={"near": "20.03,110.33"})).json()
    assert near[0]["bikesAvailable"] == 9
    entity = (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:BikeHireDockingStation:hk:A")).json()
    assert entity["availableBikeNumber"]["value"] == 9
    # A broken upstream keeps the last counts and records the error.
    (folder / "station_status.json").write_text("{not json")
    r = await client.post("/api/mobility/bikeshare/systems/hk/refresh")
    assert r.status_code == 502 and "not JSON" in r.json()["detail"]
    assert (await client.get("/api/mobility/bikeshare/systems/hk")).json()["lastError"]
    near = (await client.get("/api/mobility/bikeshare/stations", params={"near": "20.03,110.33"})).json()
    assert near[0]["bikesAvailable"] == 9


async def test_poller_refreshes_systems_whose_data_is_older_than_their_ttl(
        client: httpx.AsyncClient, app: Any, gbfs_server: tuple[str, Path]) -> None:
    import asyncio
    import datetime as dt

    from cityos.core import clock
    from cityos.mobility.bikes import BikePoller

    base, folder = gbfs_server
    r = await client.post("/api/mobility/bikeshare/systems", json={"systemId": "hk", "url": f"{base}/gbfs.json"})
    assert r.status_code == 201, r.text
    write_system(folder, base, bikes=7)
    poller = BikePoller(app.state.bikes, interval=0.05)
    poller.start()
    try:
        await asyncio.sleep(0.3)  # fresh data (ttl 30 s): not fetched again
        near = (await client.get("/api/mobility/bikeshare/stations", params={"near": "20.03,110.33"})).json()
        assert near[0]["bikesAvailable"] == 4
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
        clock.set_clock(lambda: later)
        for _ in range(100):
            await asyncio.sleep(0.05)
            near = (await client.get("/api/mobility/bikeshare/stations", params={"near": "20.03,110.33"})).json()
            if near[0]["bikesAvailable"] == 7:
                break
        assert near[0]["bikesAvailable"] == 7
    finally:
        clock.reset_clock()
        await poller.stop()


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"station_status.json": None}, 502, "HTTP 404"),
    ({"station_information.json": _doc({"stations": [{"station_id": "A", "name": "x", "lat": 95, "lon": 1}]})},
     502, "not on Earth"),
    ({"station_information.json": _doc({"stations": [{"station_id": "A", "lat": 20, "lon": 110}]})},
     502, "'name' is missing"),
    ({"station_status.json": _doc({"stations": [{"station_id": "A", "num_bikes_available": -1,
                                                 "is_renting": True, "is_returning": True}]})}, 502, "negative"),
    ({"gbfs.json": _doc({"en": {"feeds": []}})}, 502, "station_information"),
    ({"gbfs.json": "[]"}, 502, "no 'data'"),
])
async def test_bad_feeds_are_refused_and_nothing_is_stored(client: httpx.AsyncClient, gbfs_server: tuple[str, Path],
                                                           change: dict[str, str | None], status: int,
                                                           words: str) -> None:
    base, folder = gbfs_server
    for name, text in change.items():
        if text is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(text)
    r = await client.post("/api/mobility/bikeshare/systems", json={"systemId": "hk", "url": f"{base}/gbfs.json"})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and {"type", "title", "detail"} <= set(r.json())
    assert (await client.get("/api/mobility/bikeshare/systems")).json() == []


async def test_bad_requests(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any,
                            gbfs_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = gbfs_server
    url = f"{base}/gbfs.json"
    post = "/api/mobility/bikeshare/systems"
    assert (await anon_client.post(post, json={"systemId": "hk", "url": url})).status_code == 401
    citizen = Auth(app).headers("citizen", username="c2")
    assert (await client.post(post, json={"systemId": "hk", "url": url}, headers=citizen)).status_code == 403
    for body in ({"systemId": "hk", "url": "ftp://example.org/gbfs.json"}, {"systemId": "hk"},
                 {"systemId": "bad id", "url": url}, {"url": url}, {"systemId": "hk", "url": 5}):
        r = await client.post(post, json=body)
        assert r.status_code == 400, (body, r.text)
    # Loopback is refused unless CITYOS_OUTBOUND_ALLOW lists it (the test app allows 127.0.0.0/8).
    monkeypatch.setattr(app.state.bikes, "outbound", Outbound())
    r = await client.post(post, json={"systemId": "hk", "url": url})
    assert r.status_code == 400 and "not allowed" in r.json()["detail"]
    monkeypatch.undo()
    assert (await client.post(post, json={"systemId": "hk", "url": url})).status_code == 201
    assert (await client.post(post, json={"systemId": "hk", "url": url})).status_code == 409
    assert (await client.post("/api/mobility/bikeshare/systems/nope/refresh")).status_code == 404
    assert (await client.get("/api/mobility/bikeshare/stations", params={"near": "x"})).status_code == 400


async def test_plan_with_a_rented_bike(client: httpx.AsyncClient, gbfs_server: tuple[str, Path]) -> None:
    """BICYCLE_RENT: walk to the station with bikes (A), ride to the one with docks (B), walk on."""
    from gtfs_builder import BASE, gtfs_zip

    base, _ = gbfs_server
    stops = (BASE["stops.txt"].replace("31.23", "20.05").replace("31.22", "20.04").replace("31.21", "20.03")
             .replace("121.47", "110.34").replace("121.48", "110.35"))
    assert (await client.post("/api/mobility/feeds?feedId=hk", content=gtfs_zip({"stops.txt": stops}),
                              headers={"Content-Type": "application/zip"})).status_code == 201
    assert (await client.post("/api/mobility/bikeshare/systems",
                              json={"systemId": "hk", "url": f"{base}/gbfs.json"})).status_code == 201
    params = {"fromPlace": "20.031,110.332", "toPlace": "20.049,110.349", "date": "2026-12-09", "time": "09:00",
              "modes": "BICYCLE_RENT,WALK"}
    r = await client.get("/api/mobility/plan", params=params)
    assert r.status_code == 200, r.text
    rides = [i for i in r.json()["plan"]["itineraries"] if any(leg["mode"] == "BICYCLE" for leg in i["legs"])]
    assert len(rides) == 1
    legs = rides[0]["legs"]
    assert [leg["mode"] for leg in legs] == ["WALK", "BICYCLE", "WALK"]
    assert legs[1]["from"]["bikeShareId"] == "hk:A" and legs[1]["to"]["bikeShareId"] == "hk:B"
    assert legs[1]["rentedBike"] is True and legs[0]["endTime"] == legs[1]["startTime"]
    assert rides[0]["startTime"] == "2026-12-09T09:00:00+08:00"
    # Without BICYCLE_RENT no bike leg.
    params["modes"] = "WALK,TRANSIT"
    r = await client.get("/api/mobility/plan", params=params)
    assert all(leg["mode"] != "BICYCLE" for i in r.json()["plan"]["itineraries"] for leg in i["legs"])
