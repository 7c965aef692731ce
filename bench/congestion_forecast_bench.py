"""15-minute congestion forecast benchmark (拥堵预测): level accuracy and speed MAPE against two baselines,
on history with daily patterns, rain and road incidents.

    uv run --frozen python bench/congestion_forecast_bench.py [--days 28] [--test-days 7] [--segments 120]
        [--no-weather] [--incidents-per-road-day 4]

History: the simulated city's traffic-flow detectors (`cityos.sim.signals.SignalModel`, the readings
the demo ingests as TrafficFlowObserved: the city's weekday/weekend demand pattern, per-detector
calibration and one-hour-memory noise), under `weather_scenario`: showers on about half the days and a
steady rainy day about one in six (rain takes capacity and slows drivers), and lane blockages of 15–90
minutes whose queues spill upstream to the detectors behind them. One speed every 5 minutes per detector
for `--days` days. The weather feature is the city's rain intensity as its river gauges report it
(WaterObserved `precipitation`, mm/h) at the time of the forecast, never after it.

The model (`cityos.traffic.congestion.forecast`) trains on the first days and is scored on the held-out
last `--test-days`, against persistence (the speed now) and the historical average for the target's
time of day and weekday/weekend, all in the same run. Scored: the share of forecasts whose GB/T 33171
level equals the observed level (target ≥ 85%) and the speed MAPE, overall, at weekday peaks, in rain
(≥ 1 mm/h at the target time), while an incident slows the detector (at the target time or now), and
when the observed level is 轻度拥堵 or worse. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta

from cityos.sim.city import build_city
from cityos.sim.devices import place_devices
from cityos.sim.signals import SignalModel, weather_scenario
from cityos.traffic.congestion.forecast import SLOT_S, level_at, slot_of, train

START = datetime(2026, 2, 1, 16, 0, tzinfo=UTC)  # Monday 00:00 in the city (UTC+8)
WET_MM_H = 1.0
CONDITIONS = ("all", "weekday_peak", "rain", "incident", "congested")


def is_peak(ts: float) -> bool:
    weekend, slot = slot_of(ts)
    return not weekend and (7 * 12 <= slot < 10 * 12 or 17 * 12 <= slot < 20 * 12)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--segments", type=int, default=120)
    parser.add_argument("--horizon-min", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--incidents-per-road-day", type=float, default=4.0)
    parser.add_argument("--no-weather", action="store_true", help="history without rain or incidents")
    args = parser.parse_args()
    started = time.perf_counter()
    city = build_city(42)
    deployment = place_devices(city, 2000, seed=42, kinds={"traffic-flow": 1.0})
    detectors = deployment.devices[:args.segments]
    arterials = {r.id for r in city.roads if r.category == "arterial"}
    scenario = None if args.no_weather else weather_scenario(args.seed, START, args.days,
                                                             args.incidents_per_road_day)
    model = SignalModel(city, deployment, args.seed, START, scenario)
    steps = args.days * 86400 // SLOT_S
    times = [START.timestamp() + k * SLOT_S for k in range(steps)]
    rain_by_time = {ts: round(model.rain(ts), 1) for ts in times}  # what the gauges publish, 0.1 mm/h

    def rain(ts: float) -> float:
        return rain_by_time.get(ts, 0.0)

    series: dict[str, list[float]] = {}
    blocked: dict[str, list[bool]] = {}
    road_class: dict[str, str] = {}
    for device in detectors:
        series[device.name] = [float(model.reading(device, ts)["speed"]) for ts in times]
        blocked[device.name] = [model.incident_slowdown(device, ts) > 0 for ts in times]
        road_class[device.name] = "arterial" if device.anchor in arterials else "secondary"
    split = (args.days - args.test_days) * 86400 // SLOT_S
    horizon = args.horizon_min * 60 // SLOT_S
    fitted = train({s: (times[:split], v[:split]) for s, v in series.items()}, horizon, rain)
    generated = time.perf_counter() - started
    names = ("model", "persistence", "historical_average")
    scores = {name: {c: [0, 0, 0.0] for c in CONDITIONS} for name in names}  # hits, n, sum of APE
    for segment, speeds in series.items():
        cls = road_class[segment]
        for i in range(split, len(speeds) - horizon):
            ts, actual = times[i], speeds[i + horizon]
            target_ts = ts + horizon * SLOT_S
            observed = level_at(actual, cls)
            conditions = ["all"]
            if is_peak(target_ts):
                conditions.append("weekday_peak")
            if rain(target_ts) >= WET_MM_H:
                conditions.append("rain")
            if blocked[segment][i] or blocked[segment][i + horizon]:
                conditions.append("incident")
            if observed >= 2:  # 轻度拥堵 or worse
                conditions.append("congested")
            guesses = {"model": fitted.predict(segment, speeds, i, ts, rain(ts)), "persistence": speeds[i],
                       "historical_average": fitted.profiles.mean(segment, target_ts, speeds[i])}
            for name, guess in guesses.items():
                hit = level_at(guess, cls) == observed
                ape = abs(guess - actual) / max(actual, 1.0)
                for condition in conditions:
                    score = scores[name][condition]
                    score[0] += hit
                    score[1] += 1
                    score[2] += ape
    out = {name: {c: {"level_accuracy": round(h / max(1, n), 4), "speed_mape": round(e / max(1, n), 4),
                      "forecasts": n} for c, (h, n, e) in by_condition.items()}
           for name, by_condition in scores.items()}
    beats = {c: out["model"][c]["speed_mape"] < min(out["persistence"][c]["speed_mape"],
                                                     out["historical_average"][c]["speed_mape"])
             for c in CONDITIONS}
    print(json.dumps({
        "bench": "congestion_forecast", "horizon_min": args.horizon_min, "segments": len(series),
        "weather": not args.no_weather, "incidents_per_road_day": 0 if args.no_weather else
        args.incidents_per_road_day, "train_days": args.days - args.test_days, "test_days": args.test_days,
        "model_version": fitted.version, **out, "model_beats_both_on_mape": beats,
        "test_period": [(START + timedelta(seconds=split * SLOT_S)).isoformat(),
                        (START + timedelta(days=args.days)).isoformat()],
        "data_s": round(generated, 1), "wall_s": round(time.perf_counter() - started, 1)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
