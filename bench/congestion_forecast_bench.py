"""15-minute congestion forecast benchmark (拥堵预测): level accuracy and speed MAPE against two baselines.

    uv run --frozen python bench/congestion_forecast_bench.py [--days 28] [--test-days 7] [--segments 120]

History: the simulated city's traffic-flow detectors (`cityos.sim.signals.SignalModel`, the readings
the demo ingests as TrafficFlowObserved: the city's weekday/weekend demand pattern, per-detector
calibration and one-hour-memory noise), one speed every 5 minutes per detector for `--days` days. The
model (`cityos.traffic.congestion.forecast`) trains on the first days and is scored on the held-out
last `--test-days`, against persistence (the speed now) and the historical average for the target's
time of day and weekday/weekend, all in the same run. Scored: the share of forecasts whose GB/T 33171
level equals the observed level (target ≥ 85%) overall and at peak hours, and the speed MAPE.
One JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta

from cityos.sim.city import build_city
from cityos.sim.devices import place_devices
from cityos.sim.signals import SignalModel
from cityos.traffic.congestion.forecast import SLOT_S, level_at, slot_of, train

START = datetime(2026, 2, 1, 16, 0, tzinfo=UTC)  # Monday 00:00 in the city (UTC+8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--segments", type=int, default=120)
    parser.add_argument("--horizon-min", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    city = build_city(42)
    deployment = place_devices(city, 2000, seed=42, kinds={"traffic-flow": 1.0})
    detectors = deployment.devices[:args.segments]
    arterials = {r.id for r in city.roads if r.category == "arterial"}
    model = SignalModel(city, deployment, args.seed, START)
    steps = args.days * 86400 // SLOT_S
    times = [START.timestamp() + k * SLOT_S for k in range(steps)]
    series: dict[str, list[float]] = {}
    road_class: dict[str, str] = {}
    for device in detectors:
        series[device.name] = [float(model.reading(device, ts)["speed"]) for ts in times]
        road_class[device.name] = "arterial" if device.anchor in arterials else "secondary"
    split = (args.days - args.test_days) * 86400 // SLOT_S
    horizon = args.horizon_min * 60 // SLOT_S
    fitted = train({s: (times[:split], v[:split]) for s, v in series.items()}, horizon)
    generated = time.perf_counter() - started
    scores = {name: {"hits": 0, "n": 0, "ape": 0.0, "peak_hits": 0, "peak_n": 0, "congested_hits": 0,
                     "congested_n": 0} for name in ("model", "persistence", "historical_average")}
    for segment, speeds in series.items():
        cls = road_class[segment]
        for i in range(split, len(speeds) - horizon):
            ts, actual = times[i], speeds[i + horizon]
            observed = level_at(actual, cls)
            weekend, slot = slot_of(ts + horizon * SLOT_S)
            peak = not weekend and (7 * 12 <= slot < 10 * 12 or 17 * 12 <= slot < 20 * 12)
            guesses = {"model": fitted.predict(segment, speeds, i, ts), "persistence": speeds[i],
                       "historical_average": fitted.profiles.mean(segment, ts + horizon * SLOT_S, speeds[i])}
            for name, guess in guesses.items():
                hit = level_at(guess, cls) == observed
                score = scores[name]
                score["hits"] += hit
                score["n"] += 1
                score["ape"] += abs(guess - actual) / max(actual, 1.0)
                if peak:
                    score["peak_hits"] += hit
                    score["peak_n"] += 1
                if observed >= 2:  # 轻度拥堵 or worse
                    score["congested_hits"] += hit
                    score["congested_n"] += 1
    out = {name: {"level_accuracy": round(s["hits"] / max(1, s["n"]), 4),
                  "peak_level_accuracy": round(s["peak_hits"] / max(1, s["peak_n"]), 4),
                  "congested_level_accuracy": round(s["congested_hits"] / max(1, s["congested_n"]), 4),
                  "speed_mape": round(s["ape"] / max(1, s["n"]), 4), "forecasts": s["n"]}
           for name, s in scores.items()}
    print(json.dumps({
        "bench": "congestion_forecast", "horizon_min": args.horizon_min, "segments": len(series),
        "train_days": args.days - args.test_days, "test_days": args.test_days, "model_version": fitted.version,
        **out, "model_beats_both_on_mape": out["model"]["speed_mape"] < min(
            out["persistence"]["speed_mape"], out["historical_average"]["speed_mape"]),
        "test_period": [(START + timedelta(seconds=split * SLOT_S)).isoformat(),
                        (START + timedelta(days=args.days)).isoformat()],
        "data_s": round(generated, 1), "wall_s": round(time.perf_counter() - started, 1)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
