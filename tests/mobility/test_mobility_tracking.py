"""Vehicle tracking and arrival predictions without the app: bad reports, delays, the simulated city."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from gtfs_builder import gtfs_zip

from cityos.mobility.gtfs import read_feed
from cityos.mobility.planner import Planner, Query
from cityos.mobility.timetable import Timetable, build_timetable
from cityos.mobility.tracking import (
    IN_TRANSIT_TO,
    STOPPED_AT,
    FeedTracker,
    VehicleReport,
    hold_rule,
    occupancy_status,
)
from cityos.sim.buses import BusModel
from cityos.sim.city import build_city
from cityos.sim.transit import city_gtfs

WEDNESDAY = dt.date(2026, 12, 9)
ZONE = dt.timezone(dt.timedelta(hours=8))


def small_timetable() -> Timetable:
    tables, notices = read_feed(gtfs_zip(), WEDNESDAY)
    assert tables is not None, notices.report()
    return build_timetable(tables)


def at(hour: int, minute: int, second: int = 0) -> float:
    return dt.datetime(2026, 12, 9, hour, minute, second, tzinfo=ZONE).timestamp()


def report(t: float, lat: float = 31.22, lon: float = 121.47, **kw: object) -> VehicleReport:
    fields: dict[str, object] = {"vehicle_id": "bus-1", "trip_id": "T1", "lat": lat, "lon": lon, "timestamp": t}
    fields.update(kw)
    return VehicleReport(**fields)  # type: ignore[arg-type]


def test_bad_reports_are_refused_with_their_reason() -> None:
    tracker = FeedTracker("city", small_timetable())
    now = at(8, 12)
    assert tracker.observe(report(now, trip_id="NOPE"), now) == "unknown_trip"
    assert tracker.observe(report(now, stop_id="P4"), now) == "unknown_stop"      # P4 is not on T1
    assert tracker.observe(report(now, stop_id="GHOST"), now) == "unknown_stop"
    assert tracker.observe(report(now, lat=91.0), now) == "absurd_position"
    assert tracker.observe(report(now, lat=math.nan), now) == "absurd_position"
    assert tracker.observe(report(now, lat=39.9, lon=116.4), now) == "absurd_position"  # Beijing, not this city
    assert tracker.observe(report(now, speed_mps=90.0), now) == "absurd_speed"
    assert tracker.observe(report(now, speed_mps=-1.0), now) == "absurd_speed"
    assert tracker.observe(report(now + 3600), now) == "future_timestamp"
    assert tracker.observe(report(now, status="FLYING"), now) == "unknown_status"
    assert tracker.observe(report(now, stop_id="P2", status=STOPPED_AT), now) is None
    # 1.1 km in 10 s is 400 km/h: a GPS jump, not a bus.
    assert tracker.observe(report(now + 10, lat=31.21), now + 10) == "absurd_speed"
    assert tracker.observe(report(now - 60), now) == "stale"
    assert tracker.status()["refused"] == {"absurd_position": 3, "absurd_speed": 3, "future_timestamp": 1,
                                           "stale": 1, "unknown_status": 1, "unknown_stop": 2, "unknown_trip": 1}
    assert tracker.accepted == 1


def test_a_late_bus_is_predicted_late_and_learns_dwell() -> None:
    tracker = FeedTracker("city", small_timetable())
    # T1: P1 08:00, P2 08:10–08:11, P3 08:20. The bus leaves 3 min late and reaches P2 at 08:14.
    assert tracker.observe(report(at(8, 3), 31.23, 121.47, stop_id="P2", status=IN_TRANSIT_TO)) is None
    assert tracker.observe(report(at(8, 8), 31.2255, 121.47, speed_mps=6.0)) is None  # half way, GPS only
    run = tracker.runs[("T1", WEDNESDAY)]
    [(pos, arrive, _leave), *_] = tracker.predict(run, at(8, 8))
    # Half the way in 5 minutes: the other half takes about as long again, not the schedule's remaining 5 min.
    assert pos == 1 and abs(arrive - at(8, 13)) <= 60
    assert tracker.observe(report(at(8, 14), stop_id="P2", status=STOPPED_AT, passengers=70, capacity=80)) is None
    assert run.arrivals[1] == at(8, 14) and run.occupancy_status == "CRUSHED_STANDING_ROOM_ONLY"
    predicted = {k: (a, d) for k, a, d in tracker.predict(run, at(8, 14, 10))}
    # Dwell as scheduled (60 s), then the scheduled 9 minutes of running: P3 at 08:24, 4 min late.
    assert abs(predicted[2][0] - at(8, 24)) <= 5
    assert tracker.observe(report(at(8, 14, 40), stop_id="P3", status=IN_TRANSIT_TO)) is None
    assert list(tracker.dwells[tracker.tt.stop_index["P2"]]) == [(at(8, 14, 40), 40.0)]
    assert tracker.observe(report(at(8, 24, 30), stop_id="P3", status=STOPPED_AT)) is None
    # The segment's run time is learned: 9 min 50 s from P2 to P3.
    p2, p3 = tracker.tt.stop_index["P2"], tracker.tt.stop_index["P3"]
    assert list(tracker.segment_runs[(p2, p3)]) == [(at(8, 24, 30), 590.0)]
    assert tracker.predict(run, at(8, 25)) == []   # arrived at the last stop


def test_an_early_bus_is_held_at_the_stop_and_predicted_to_leave_on_time() -> None:
    tt = small_timetable()
    holding = FeedTracker("city", tt, holds=hold_rule(tt, "buses"))
    free = FeedTracker("city", tt, holds=hold_rule(tt, "none"))
    # T1: P1 08:00, P2 08:10–08:11, P3 08:20. The bus leaves on time and reaches P2 at 08:06, 4 minutes early.
    for tracker in (holding, free):
        assert tracker.observe(report(at(8, 0), 31.23, 121.47, stop_id="P2", status=IN_TRANSIT_TO)) is None
        assert tracker.observe(report(at(8, 6), stop_id="P2", status=STOPPED_AT)) is None
    held = {k: (a, d) for k, a, d in holding.predict(holding.runs[("T1", WEDNESDAY)], at(8, 6, 10))}
    unheld = {k: (a, d) for k, a, d in free.predict(free.runs[("T1", WEDNESDAY)], at(8, 6, 10))}
    # Holding: it waits for its 08:11 departure and runs the scheduled 9 minutes; P3 on time.
    assert held[1] == (at(8, 6), at(8, 11)) and held[2][0] == at(8, 20)
    # Without holding it leaves after the scheduled minute of dwell and is early all the way.
    assert unheld[1] == (at(8, 6), at(8, 7)) and unheld[2][0] == at(8, 16)
    # Never before the schedule where the trip holds, whatever the time of the prediction.
    for now in (at(8, 6, 30), at(8, 9), at(8, 10, 59)):
        [(pos, _arrive, leave), *_] = holding.predict(holding.runs[("T1", WEDNESDAY)], now)
        assert pos == 1 and leave >= at(8, 11)
    # It leaves at 08:11: a hold, not a dwell — the stop's dwell time is not learned from it.
    assert holding.observe(report(at(8, 11), stop_id="P3", status=IN_TRANSIT_TO)) is None
    assert tt.stop_index["P2"] not in holding.dwells
    assert free.observe(report(at(8, 11), stop_id="P3", status=IN_TRANSIT_TO)) is None
    assert list(free.dwells[tt.stop_index["P2"]]) == [(at(8, 11), 300.0)]


def test_hold_modes() -> None:
    tt = small_timetable()
    run = FeedTracker("city", tt).run_of("T1", WEDNESDAY)
    assert run is not None
    assert hold_rule(tt, "none") is None
    buses, everything = hold_rule(tt, "buses"), hold_rule(tt, "all")
    assert buses is not None and everything is not None
    assert buses(run, 1) and everything(run, 1)     # R1 is a bus route (route_type 3)
    with pytest.raises(ValueError, match="unknown hold mode"):
        hold_rule(tt, "sometimes")
    # The first stop always holds, the last never (nothing leaves from there).
    tracker = FeedTracker("city", tt)
    assert tracker.holds_at(run, 0) and not tracker.holds_at(run, 1)
    assert not FeedTracker("city", tt, holds=everything).holds_at(run, 2)


def test_occupancy_levels() -> None:
    assert occupancy_status(None, 80) is None and occupancy_status(3, 0) is None
    assert [occupancy_status(n, 100) for n in (0, 20, 50, 70, 90, 100)] == [
        "EMPTY", "MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE", "STANDING_ROOM_ONLY", "CRUSHED_STANDING_ROOM_ONLY",
        "FULL"]


class _View:
    def __init__(self, tracker: FeedTracker, now: float) -> None:
        from cityos.mobility.live import LiveService

        self.live = LiveService(None)
        self.tracker = tracker
        self.now = now

    def day(self, day: object) -> object:
        return self.live.realtime_day(self.tracker, day, self.now)  # type: ignore[arg-type]

    def leg(self, trip_key: str, service_date: dt.date) -> dict[str, object] | None:
        run = self.tracker.runs.get((trip_key, service_date))
        return None if run is None else {"vehicleId": run.vehicle_id, "occupancyStatus": run.occupancy_status}


def test_planner_routes_on_predicted_times() -> None:
    tt = small_timetable()
    tracker = FeedTracker("city", tt)
    assert tracker.observe(report(at(8, 14), stop_id="P2", status=STOPPED_AT, passengers=10, capacity=80)) is None
    query = Query((31.2200, 121.4700), (31.2100, 121.4700), WEDNESDAY, dt.time(8, 12), False, 2,
                  frozenset({"TRANSIT"}))
    when = dt.datetime(2026, 12, 9, 8, 12, tzinfo=ZONE)
    feed = {"feedId": "city", "bbox": [0, 0, 0, 0]}
    [scheduled] = Planner(feed, tt).plan(query, when)
    [live] = Planner(feed, tt, _View(tracker, at(8, 14, 5))).plan(query, when)
    leg = next(leg for leg in scheduled["legs"] if leg["transitLeg"])
    live_leg = next(leg for leg in live["legs"] if leg["transitLeg"])
    # By the timetable T1 left P2 at 08:11, so the next bus is T2 at night; it is 4 minutes late, still there.
    assert leg["tripId"] == "city:T2" and leg["realTime"] is False
    assert live_leg["tripId"] == "city:T1" and live_leg["realTime"] is True
    assert live_leg["occupancyStatus"] == "MANY_SEATS_AVAILABLE" and live_leg["vehicleId"] == "bus-1"
    assert live_leg["departureDelay"] == 240 and live_leg["arrivalDelay"] == 240
    assert live_leg["startTime"].endswith("08:15:00+08:00") and live["endTime"] < scheduled["endTime"]


def test_predictions_beat_the_schedule_on_the_simulated_city() -> None:
    """An hour of the simulated rush: predictions 0–10 min ahead within ±90 s far more often than the schedule."""
    city = build_city()
    tables, _ = read_feed(city_gtfs(city, dt.date(2026, 12, 1), dt.date(2026, 12, 31)), WEDNESDAY)
    assert tables is not None
    tt = build_timetable(tables)
    model = BusModel(tt, WEDNESDAY, seed=3, incidents_per_hour=3)
    day = model.run(7 * 3600, 8 * 3600)
    assert day.incidents and day.reports
    assert {r.status for r in day.reports} == {STOPPED_AT, IN_TRANSIT_TO, None}
    loads = [load for trip in day.trips for load in trip.loads]
    assert max(loads) > 0 and all(0 <= load <= 80 for load in loads)
    tracker = FeedTracker("city", tt)
    truth = {t.trip_key: t for t in day.trips}
    model_ok = schedule_ok = scored = 0
    cursor = 0
    for now in np.arange(model.base + 7.5 * 3600, model.base + 8.5 * 3600, 60.0).tolist():
        while cursor < len(day.reports) and day.reports[cursor].timestamp <= now:
            assert tracker.observe(day.reports[cursor], now) is None
            cursor += 1
        for key, real in truth.items():
            run = tracker.run_of(key, WEDNESDAY)
            assert run is not None
            for pos, arrive, _leave in tracker.predict(run, now):
                if pos == 0 or not 0 <= real.arrivals[pos] - now <= 600:
                    continue
                scored += 1
                model_ok += abs(arrive - real.arrivals[pos]) <= 90
                schedule_ok += abs(float(run.sched_arr[pos]) - real.arrivals[pos]) <= 90
    assert scored > 5000
    assert model_ok / scored >= 0.95 and model_ok > 2 * schedule_ok


def test_off_peak_buses_hold_and_run_on_time() -> None:
    """The evening, when buses outrun the schedule: held at every stop they leave none early, and the
    on-time share (at most 1 min early, 5 min late) goes up; predictions keep the target."""
    city = build_city()
    tables, _ = read_feed(city_gtfs(city, dt.date(2026, 12, 1), dt.date(2026, 12, 31)), WEDNESDAY)
    assert tables is not None
    tt = build_timetable(tables)
    shares = {}
    for holds in (False, True):
        model = BusModel(tt, WEDNESDAY, seed=5, incidents_per_hour=1, holds=holds)
        day = model.run(20 * 3600, 21 * 3600)
        delays = np.concatenate([np.array(trip.departures[:-1]) - model.tracker.run_of(trip.trip_key, WEDNESDAY)
                                 .sched_dep[:-1] for trip in day.trips])  # type: ignore[union-attr]
        shares[holds] = float(((delays >= -60) & (delays <= 300)).mean())
        if holds:
            assert delays.min() >= 0
    assert shares[False] < 0.5 and shares[True] >= 0.9

    tracker = FeedTracker("city", tt, holds=hold_rule(tt, "buses"))
    truth = {t.trip_key: t for t in day.trips}
    ok = scored = 0
    cursor = 0
    for now in np.arange(model.base + 20.25 * 3600, model.base + 21 * 3600, 60.0).tolist():
        while cursor < len(day.reports) and day.reports[cursor].timestamp <= now:
            assert tracker.observe(day.reports[cursor], now) is None
            cursor += 1
        for key, real in truth.items():
            run = tracker.run_of(key, WEDNESDAY)
            assert run is not None
            for pos, arrive, leave in tracker.predict(run, now):
                assert pos == len(run.stops) - 1 or leave >= float(run.sched_dep[pos])
                if pos == 0 or not 0 <= real.arrivals[pos] - now <= 600:
                    continue
                scored += 1
                ok += abs(arrive - real.arrivals[pos]) <= 90
    assert scored > 1000 and ok / scored >= 0.95
