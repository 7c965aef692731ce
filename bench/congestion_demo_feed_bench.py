"""The forecast service on the demo's simulated road speeds (`cityos.sim.congestion`), issue #15.

Trains `cityos.traffic.congestion.forecasting.fit` (what the hourly retraining and POST
/api/traffic/congestion/forecast/train run) on `--train-days` of the 123 grid segments' index history,
times the fit, and scores the 15-minute forecast on the next `--test-days` against persistence (the
speed now) in the same run. Prints one JSON line.

    uv run --frozen python bench/congestion_demo_feed_bench.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

from cityos.sim.congestion import segment_speed
from cityos.traffic.congestion.forecast import level_at
from cityos.traffic.congestion.forecasting import HORIZON_STEPS, fit, speed_of
from cityos.traffic.congestion.grid import city_sections
from cityos.traffic.congestion.tpi import segment_tpi

START = dt.datetime(2026, 3, 1, 16, tzinfo=dt.UTC).timestamp()  # Monday 00:00 in the city


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-days", type=int, default=12)
    parser.add_argument("--test-days", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    sections = city_sections(args.seed)

    def index(section: object, ts: float) -> float:
        return segment_tpi(segment_speed(section, ts, args.seed), section.road_class)  # type: ignore[attr-defined]

    rows = [(s.id, dt.datetime.fromtimestamp(START + k * 300, dt.UTC), index(s, START + k * 300))
            for s in sections for k in range(args.train_days * 288)]
    started = time.perf_counter()
    fitted = fit(rows, {s.id: s.road_class for s in sections})
    fit_s = time.perf_counter() - started
    assert fitted is not None
    model = fitted[0]
    hits = baseline_hits = n = 0
    ape = baseline_ape = 0.0
    for s in sections:
        times = [START + k * 300 for k in range(args.train_days * 288, (args.train_days + args.test_days) * 288)]
        speeds = [speed_of(index(s, t), s.road_class) for t in times]
        for i in range(3, len(speeds) - HORIZON_STEPS):
            observed = speeds[i + HORIZON_STEPS]
            predicted = model.predict(s.id, speeds, i, times[i])
            hits += level_at(predicted, s.road_class) == level_at(observed, s.road_class)
            baseline_hits += level_at(speeds[i], s.road_class) == level_at(observed, s.road_class)
            ape += abs(predicted - observed) / max(observed, 1.0)
            baseline_ape += abs(speeds[i] - observed) / max(observed, 1.0)
            n += 1
    print(json.dumps({"bench": "congestion-demo-feed", "segments": len(sections), "trainRows": len(rows),
                      "fitSeconds": round(fit_s, 2), "forecasts": n, "levelAccuracy": round(hits / n, 3),
                      "persistenceLevelAccuracy": round(baseline_hits / n, 3), "mape": round(ape / n, 3),
                      "persistenceMape": round(baseline_ape / n, 3), "model": model.version}))


if __name__ == "__main__":
    main()
