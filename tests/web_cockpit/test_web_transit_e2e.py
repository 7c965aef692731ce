"""智慧出行 pages end to end (real server, headless Chromium): the city's GTFS feed imported, a bus on board
unit reporting through IoT over HTTP (a door opening, late, crowded), then the public trip planner shows
the real-time delay and crowding in the itinerary and at the stop, and the cockpit shows the bus on the
map and its line's figures."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from cockpit_harness import Server, screenshot
from test_web_cockpit_e2e import css, map_stats, sign_in, wait_for

from cityos.mobility.gtfs import read_feed
from cityos.mobility.timetable import build_timetable
from cityos.sim.city import build_city
from cityos.sim.transit import city_gtfs

pytestmark = pytest.mark.slow
ZONE = ZoneInfo("Asia/Shanghai")


def running_bus(feed: bytes, now: dt.datetime) -> tuple[str, list[str], int] | None:
    """(trip id, its stop ids, a stop position) of a bus trip that should have reached that stop ~4 min ago
    and has at least three stops to go."""
    tables, _ = read_feed(feed, now.date())
    assert tables is not None
    tt = build_timetable(tables)
    day = tt.day(now.date())
    base = dt.datetime.combine(now.date(), dt.time(12), ZONE) - dt.timedelta(hours=12)
    seconds = (now - base).total_seconds()
    for dp in day.patterns:
        if tt.route_info[tt.patterns[dp.source].route]["type"] != 3:
            continue
        for row in np.flatnonzero(dp.offsets == 0).tolist():
            late = seconds - dp.arr[row]
            positions = np.flatnonzero((late >= 200) & (late <= 300))
            positions = positions[(positions > 0) & (positions < len(dp.stops) - 3)]
            if len(positions):
                stops = [tt.stop_ids[int(s)] for s in dp.stops]
                return tt.trip_ids[int(dp.trips[row])], stops, int(positions[0])
    return None


def test_web_transit_planner_and_cockpit(server: Server, browser: Any) -> None:
    now = dt.datetime.now(ZONE)
    feed = city_gtfs(build_city(), now.date() - dt.timedelta(days=7), now.date() + dt.timedelta(days=30))
    with server.http(server.admin) as http:
        made = http.post("/api/mobility/feeds?feedId=city", content=feed, headers={"Content-Type": "application/zip"})
        assert made.status_code == 201, made.text
    bus = running_bus(feed, now)
    if bus is None:
        pytest.skip("no city bus runs at this hour (the feed's service ends at 22:00 Asia/Shanghai)")
    trip, stops, position = bus
    with server.http(server.admin) as http:
        device = http.post("/api/iot/devices", json={"name": "bus-e2e", "profile": "transit-vehicle"})
        assert device.status_code == 201, device.text
        token = device.json()["token"]
        route = trip.split("-")[0]
        # The door opens at the stop it should have reached ~4 minutes ago; 70 of 80 places taken.
        reading = {"ts": int(time.time() * 1000), "values": {
            "lat": 0, "lon": 0, "speed": 0, "feed": "city", "trip": trip, "route": route,
            "stop": stops[position], "status": "STOPPED_AT", "passengers": 70, "capacity": 80}}
        listed = http.get("/api/mobility/feeds/city/stops", params={"limit": 5000}).json()["items"]
        found = [s for s in listed if s["stopId"] == stops[position]]
        assert found, stops[position]
        reading["values"].update(lat=found[0]["lat"], lon=found[0]["lon"])
        sent = http.post(f"/api/v1/{token}/telemetry", json=reading)
        assert sent.status_code == 200, sent.text
        wait_for(lambda: http.get("/api/mobility/realtime/city/status").json()["accepted"] >= 1,
                 what="the vehicle reading in the tracker")
        lines = http.get("/api/mobility/realtime/city/lines").json()
        [line] = [line for line in lines if line["routeId"] == route]
        assert line["vehicles"][0]["vehicleId"] == "bus-e2e" and line["vehicles"][0]["delay"] > 120
        shown_as = str(line["route"])

    # The portal's planner, anonymous: from the bus's stop to three stops on, and the departures at the stop.
    browser.get(f"{server.url}/transit?origin={stops[position]}&destination={stops[position + 3]}"
                f"&stop={stops[position]}")
    card = wait_for(lambda: css(browser, ".t-itinerary-0"), 60, what="an itinerary")[0]
    wait_for(lambda: "实时" in css(browser, ".t-itinerary-0")[0].text, what="the real-time badge")
    card = css(browser, ".t-itinerary-0")[0]
    assert "晚点" in card.text and "Late" in card.text and "拥挤" in card.text and "Crowded" in card.text
    assert css(browser, ".t-itinerary-0 .t-crowding")
    arrival = wait_for(lambda: [a for a in css(browser, ".t-arrival") if "晚点" in a.text], what="a late departure")
    assert "拥挤" in arrival[0].text
    wait_for(lambda: map_stats(browser).get("counts", {}).get("transitLines", 0) >= 1, 60,
             what="the itinerary on the map")
    assert map_stats(browser)["counts"]["transitStops"] >= 2
    time.sleep(1.0)
    screenshot(browser, "transit-portal-planner")

    secret = server.create_user("op-transit", "operator")
    sign_in(browser, server, "op-transit", secret, next_path="/cockpit/transit")
    wait_for(lambda: map_stats(browser).get("counts", {}).get("buses", 0) >= 1, 60, what="the bus on the map")
    rows = wait_for(lambda: [r for r in css(browser, ".t-line") if r.text.split("\n")[0] == shown_as],
                    what="the bus's line in the table")
    assert "1" in rows[0].text
    crowded = wait_for(lambda: css(browser, ".t-crowded-line"), what="a crowded line")
    assert any("拥挤" in c.text or "Crowded" in c.text for c in crowded)
    time.sleep(1.0)
    screenshot(browser, "transit-cockpit")

