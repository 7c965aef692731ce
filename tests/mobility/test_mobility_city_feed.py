"""The simulated city's GTFS feed: valid, weekday and weekend service, buses and a metro that connect."""

from __future__ import annotations

import datetime as dt
import itertools
import random

from cityos.mobility.gtfs import read_feed
from cityos.mobility.planner import Planner, Query
from cityos.mobility.timetable import build_timetable
from cityos.sim.city import build_city
from cityos.sim.transit import city_gtfs

WEDNESDAY, SATURDAY = dt.date(2026, 12, 9), dt.date(2026, 12, 12)


def test_city_feed_is_valid_and_plans_bus_and_metro() -> None:
    city = build_city()
    tables, notices = read_feed(city_gtfs(city, dt.date(2026, 1, 1), dt.date(2027, 12, 31)), dt.date(2026, 12, 5))
    assert tables is not None and notices.report() == []
    routes = dict(zip(tables.routes["route_id"], tables.routes["route_type"], strict=True))
    arterials = [r for r in city.roads if r.category == "arterial"]
    assert sum(1 for t in routes.values() if t == 3) == len(arterials) and routes["M1"] == 1
    assert set(tables.calendar["service_id"]) == {"WD", "WE"}
    tt = build_timetable(tables)
    weekday, weekend = tt.day(WEDNESDAY), tt.day(SATURDAY)
    assert sum(len(p.trips) for p in weekday.patterns) > sum(len(p.trips) for p in weekend.patterns) > 0
    # The metro's last trips (frequencies until 23:30) run past midnight.
    assert max(int(p.arr.max()) for p in weekday.patterns) > 24 * 3600
    planner = Planner({"feedId": "city", "bbox": [0, 0, 0, 0]}, tt)
    minx, miny, maxx, maxy = city.bbox
    rng = random.Random(5)
    combined = found = 0
    for _ in range(40):
        a = (rng.uniform(miny, maxy), rng.uniform(minx, maxx))
        b = (rng.uniform(miny, maxy), rng.uniform(minx, maxx))
        query = Query(a, b, WEDNESDAY, dt.time(8), False, 3, frozenset({"TRANSIT", "WALK"}))
        for itinerary in planner.plan(query, dt.datetime(2026, 12, 9, tzinfo=dt.UTC)):
            found += 1
            modes = {leg["mode"] for leg in itinerary["legs"]}
            combined += {"BUS", "SUBWAY"} <= modes
            legs = itinerary["legs"]
            assert all(x["endTime"] <= y["startTime"] for x, y in itertools.pairwise(legs))
            assert itinerary["startTime"].endswith("+08:00")
    assert found > 20 and combined > 0
