"""Bus arrival predictions on the simulated city: share within ±90 s for arrivals 0–10 minutes ahead.

The city's GTFS feed (cityos.sim.transit) gives the schedule; cityos.sim.buses runs the buses with
dwell variation, rush-hour congestion and incidents and produces what on-board units send. Every
`--tick` seconds of simulated time the reports received so far are fed to the tracker
(cityos.mobility.tracking) and every trip that is running or leaves within 10 minutes is predicted;
each prediction for a stop the bus really reaches 0–10 minutes later is scored against that real
time. The baseline, in the same run on the same arrivals, is the schedule alone (what the
schedule-only TripUpdates feed said before).

    uv run --frozen python bench/transit_realtime_bench.py [--start 06:30] [--hours 4] [--seed 7]

Also printed: the buses' on-time share (departures from each stop at most 1 min early and 5 min late
against the schedule), the share more than 1 min early, and the mean delay, over the window's trips.

Prints one JSON line: predictions scored, share within ±90 s (predictor and schedule), their ratio,
mean absolute errors and p90 of the absolute error, and the time the predictor took per prediction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import numpy as np

from cityos.mobility.gtfs import read_feed
from cityos.mobility.timetable import build_timetable
from cityos.mobility.tracking import FeedTracker, TripRun, hold_rule
from cityos.sim.buses import BusModel, TripTruth
from cityos.sim.city import build_city
from cityos.sim.transit import city_gtfs

HORIZON_S = 600.0
TOLERANCE_S = 90.0
ON_TIME_EARLY_S, ON_TIME_LATE_S = 60.0, 300.0   # the usual on-time band: at most 1 min early, 5 min late


def on_time(trips: list[TripTruth], runs: dict[str, TripRun | None], lo: float,
            hi: float) -> tuple[float, float, float]:
    """(on-time share, early share, mean delay in s) of the real departures from every stop but the last,
    of the trips leaving their first stop in [lo, hi)."""
    delays: list[float] = []
    for real in trips:
        run = runs[real.trip_key]
        if run is None or not lo <= real.departures[0] < hi:
            continue
        delays.extend(np.array(real.departures[:-1]) - run.sched_dep[:-1])
    d = np.array(delays)
    if not d.size:
        return 0.0, 0.0, 0.0
    return (float(((d >= -ON_TIME_EARLY_S) & (d <= ON_TIME_LATE_S)).mean()), float((d < -ON_TIME_EARLY_S).mean()),
            float(d.mean()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--date", default="2026-12-09")
    parser.add_argument("--start", default="06:30")
    parser.add_argument("--hours", type=float, default=4.0)
    parser.add_argument("--tick", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--incidents-per-hour", type=float, default=2.0)
    parser.add_argument("--hold", choices=("buses", "none"), default="buses",
                        help="buses hold at every stop (no early departure) and the predictor knows it; "
                             "none: only at the first stop (the behaviour before holding)")
    args = parser.parse_args()
    date = dt.date.fromisoformat(args.date)
    hh, mm = (int(x) for x in args.start.split(":"))
    start_s = hh * 3600 + mm * 60
    end_s = start_s + int(args.hours * 3600)

    city = build_city()
    tables, notices = read_feed(city_gtfs(city, date - dt.timedelta(days=30), date + dt.timedelta(days=30)), date)
    assert tables is not None, notices.report()
    tt = build_timetable(tables)
    model = BusModel(tt, date, seed=args.seed, incidents_per_hour=args.incidents_per_hour,
                     holds=args.hold != "none")
    day = model.run(start_s - 3600, end_s)
    tracker = FeedTracker("city", tt, holds=hold_rule(tt, args.hold))
    truth = {t.trip_key: t for t in day.trips}
    runs = {key: tracker.run_of(key, date) for key in truth}

    errors_model: list[float] = []
    errors_schedule: list[float] = []
    predict_seconds = 0.0
    predictions = 0
    reports = day.reports
    cursor = 0
    refused = 0
    now = model.base + start_s
    while now < model.base + end_s:
        while cursor < len(reports) and reports[cursor].timestamp <= now:
            refused += tracker.observe(reports[cursor], now) is not None
            cursor += 1
        for key, real in truth.items():
            run = runs[key]
            if run is None or real.departures[-1] < now or real.departures[0] > now + HORIZON_S:
                continue
            began = time.perf_counter()
            predicted = tracker.predict(run, now)
            predict_seconds += time.perf_counter() - began
            predictions += len(predicted)
            for pos, arrive, leave in predicted:
                actual = real.departures[0] if pos == 0 else real.arrivals[pos]
                if not 0 <= actual - now <= HORIZON_S:
                    continue
                guess = leave if pos == 0 else arrive
                scheduled = float(run.sched_dep[0] if pos == 0 else run.sched_arr[pos])
                errors_model.append(guess - actual)
                errors_schedule.append(scheduled - actual)
        now += args.tick

    share_on_time, share_early, mean_delay = on_time(day.trips, runs, model.base + start_s, model.base + end_s)
    model_err = np.abs(np.array(errors_model))
    schedule_err = np.abs(np.array(errors_schedule))
    within_model = float((model_err <= TOLERANCE_S).mean())
    within_schedule = float((schedule_err <= TOLERANCE_S).mean())
    print(json.dumps({
        "bench": "transit_realtime", "date": date.isoformat(), "window": f"{args.start}+{args.hours}h",
        "seed": args.seed, "hold": args.hold,
        "trips": len(day.trips), "reports": len(reports), "refusedReports": refused,
        "incidents": len(day.incidents), "scored": len(model_err),
        "within90s": round(within_model, 4), "baselineScheduleWithin90s": round(within_schedule, 4),
        "ratio": round(within_model / within_schedule, 3) if within_schedule else None,
        "maeS": round(float(model_err.mean()), 1), "baselineMaeS": round(float(schedule_err.mean()), 1),
        "p90AbsErrS": round(float(np.percentile(model_err, 90)), 1),
        "baselineP90AbsErrS": round(float(np.percentile(schedule_err, 90)), 1),
        "onTimeShare": round(share_on_time, 4), "earlyShare": round(share_early, 4),
        "meanDelayS": round(mean_delay, 1),
        "usPerPrediction": round(predict_seconds / max(1, predictions) * 1e6, 2),
        "target": ">= 0.95 within 90 s"}))


if __name__ == "__main__":
    main()
