"""15-minute congestion forecast on the simulated city's detectors, and diversion advice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cityos.sim.city import build_city
from cityos.sim.devices import place_devices
from cityos.sim.signals import SignalModel
from cityos.traffic.congestion.forecast import SLOT_S, diversions, level_at, train

START = datetime(2026, 2, 1, 16, 0, tzinfo=UTC)  # Monday 00:00 in the city


@pytest.fixture(scope="module")
def history() -> tuple[list[float], dict[str, list[float]]]:
    city = build_city(42)
    deployment = place_devices(city, 200, seed=42, kinds={"traffic-flow": 1.0})
    model = SignalModel(city, deployment, 3, START)
    times = [START.timestamp() + k * SLOT_S for k in range(9 * 288)]
    return times, {d.name: [float(model.reading(d, ts)["speed"]) for ts in times] for d in deployment.devices[:12]}


def test_the_forecast_beats_persistence_and_the_historical_average_on_held_out_days(
        history: tuple[list[float], dict[str, list[float]]]) -> None:
    times, series = history
    split = 7 * 288
    model = train({s: (times[:split], v[:split]) for s, v in series.items()}, horizon_steps=3)
    errors = {"model": 0.0, "persistence": 0.0, "average": 0.0}
    hits = 0
    n = 0
    for segment, speeds in series.items():
        for i in range(split, len(speeds) - 3):
            actual = speeds[i + 3]
            guess = model.predict(segment, speeds, i, times[i])
            errors["model"] += abs(guess - actual) / actual
            errors["persistence"] += abs(speeds[i] - actual) / actual
            errors["average"] += abs(model.profiles.mean(segment, times[i] + 900, speeds[i]) - actual) / actual
            hits += level_at(guess, "arterial") == level_at(actual, "arterial")
            n += 1
    assert errors["model"] < errors["persistence"] and errors["model"] < errors["average"]
    assert hits / n >= 0.85


def test_a_model_is_versioned_by_its_window_and_coefficients(
        history: tuple[list[float], dict[str, list[float]]]) -> None:
    times, series = history
    a = train({s: (times[:288 * 3], v[:288 * 3]) for s, v in series.items()})
    b = train({s: (times[:288 * 3], v[:288 * 3]) for s, v in series.items()})
    c = train({s: (times[:288 * 4], v[:288 * 4]) for s, v in series.items()})
    assert a.version == b.version != c.version
    with pytest.raises(ValueError, match="not enough history"):
        train({"s": (times[:3], [30.0, 31.0, 29.0])})


def test_diversions_avoid_segments_forecast_congested() -> None:
    graph = {"A": {"B": ("ab", 2.0), "C": ("ac", 3.0)}, "B": {"D": ("bd", 2.0)}, "C": {"D": ("cd", 3.0)},
             "D": {}}
    assert diversions(graph, {}, "A", "D")[0]["segments"] == ["ab", "bd"]
    routes = diversions(graph, {"bd": 3}, "A", "D")  # 中度拥堵 forecast on b→d: go by C
    assert [r["segments"] for r in routes] == [["ac", "cd"]] and routes[0]["minutes"] == 6.0
    assert diversions(graph, {"bd": 4, "cd": 4}, "A", "D") == []
    assert diversions(graph, {}, "A", "nowhere") == []
