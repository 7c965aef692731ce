"""Rain and road incidents in the simulated detectors' history, and the forecaster's weather feature.

The detector model slows traffic in rain (less capacity, slower drivers) and blocks lanes for 15–90
minutes, the queue spilling upstream to the detectors behind; both come from the seed alone. The
forecaster reads the city's rain intensity as a feature and keeps wet-weather coefficients of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos.sim.city import build_city
from cityos.sim.devices import Deployment, place_devices
from cityos.sim.signals import (
    INCIDENT_MINUTES,
    RainEvent,
    RoadIncident,
    Scenario,
    SignalModel,
    weather_scenario,
)
from cityos.traffic.congestion.forecast import FEATURES, REGIMES, SLOT_S, ForecastModel, regime_of, train
from cityos.traffic.congestion.forecasting import RainBySlot

START = datetime(2026, 2, 1, 16, 0, tzinfo=UTC)  # Monday 00:00 in the city (UTC+8)
MORNING_PEAK = START + timedelta(hours=8)


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return place_devices(build_city(42), 200, seed=42, kinds={"traffic-flow": 1.0})


def speeds(model: SignalModel, device_index: int, times: list[float]) -> list[float]:
    device = model.deployment.devices[device_index]
    return [float(model.reading(device, ts)["speed"]) for ts in times]


def test_the_weather_scenario_is_seeded() -> None:
    a, b, c = (weather_scenario(seed, START, 14) for seed in (5, 5, 6))
    assert a == b and a.rains != c.rains
    assert a.rains and a.incidents_per_road_day > 0
    assert all(START <= r.start < START + timedelta(days=14) and r.mm_per_hour > 0 for r in a.rains)


def test_rain_slows_the_detectors(deployment: Deployment) -> None:
    city = build_city(42)
    shower = RainEvent(START + timedelta(hours=13), hours=2.0, mm_per_hour=30.0)
    dry = SignalModel(city, deployment, 3, START, Scenario())
    wet = SignalModel(city, deployment, 3, START, Scenario(rains=(shower,)))
    times = [START.timestamp() + k * SLOT_S for k in range(16 * 12)]
    raining = [wet.rain(ts) >= 5 for ts in times]
    assert sum(raining) > 12
    for device in range(5):
        before, after = speeds(dry, device, times), speeds(wet, device, times)
        # The same detector noise: identical readings before the shower, every wet one slower than dry.
        assert after[:13 * 12] == before[:13 * 12]
        pairs = [(w, d) for w, d, r in zip(after, before, raining, strict=True) if r]
        assert all(w <= d for w, d in pairs)
        assert sum(w for w, _ in pairs) < 0.92 * sum(d for _, d in pairs)


def test_incidents_are_seeded_and_last_15_to_90_minutes(deployment: Deployment) -> None:
    city = build_city(42)
    scenario = Scenario(incidents_per_road_day=6.0)
    first = SignalModel(city, deployment, 3, START, scenario)
    second = SignalModel(city, deployment, 3, START, scenario)
    other_seed = SignalModel(city, deployment, 4, START, scenario)
    hours = range(int(START.timestamp() // 3600), int(START.timestamp() // 3600) + 72)
    roads = [r.id for r in city.roads]
    drawn = [i for road in roads for h in hours for i in first.incidents(road, h)]
    # Asked in another order, the same incidents; another seed, others.
    assert [i for road in reversed(roads) for h in reversed(hours) for i in second.incidents(road, h)] == \
        list(reversed([i for road in roads for h in hours for i in first.incidents(road, h)]))
    assert drawn != [i for road in roads for h in hours for i in other_seed.incidents(road, h)]
    assert 0.5 * 6 * 3 * len(roads) < len(drawn) < 1.5 * 6 * 3 * len(roads)
    assert all(INCIDENT_MINUTES[0] <= i.minutes <= INCIDENT_MINUTES[1] for i in drawn)
    assert Scenario().incidents_per_road_day == 0  # the demo's scenarios have none unless asked


def test_an_incident_queue_spills_upstream_and_drains(deployment: Deployment) -> None:
    start = MORNING_PEAK.timestamp()
    incident = RoadIncident("road", start, minutes=60.0, position_m=5000.0, direction=1, severity=0.6)
    effect = SignalModel._queue_effect
    # At the blockage at once; a kilometre upstream only once the queue has grown back to it.
    assert effect(incident, 5000.0, start + 60) == 0.6
    assert effect(incident, 4000.0, start + 60) == 0.0
    assert effect(incident, 4000.0, start + 40 * 60) > 0.0
    # Downstream of the blockage traffic is not held up.
    assert effect(incident, 6000.0, start + 40 * 60) == 0.0
    # After the lanes reopen the queue drains from the front, then is gone.
    assert effect(incident, 5000.0, start + 62 * 60) == 0.0
    assert effect(incident, 2500.0, start + 62 * 60) > 0.0
    assert effect(incident, 2500.0, start + 120 * 60) == 0.0
    # The same road with traffic the other way: upstream is the other side.
    reverse = RoadIncident("road", start, 60.0, 5000.0, -1, 0.6)
    assert effect(reverse, 6000.0, start + 40 * 60) > 0.0 and effect(reverse, 4000.0, start + 40 * 60) == 0.0


def test_a_detector_behind_an_incident_reads_slower(deployment: Deployment) -> None:
    city = build_city(42)
    blocked = SignalModel(city, deployment, 3, START, Scenario(incidents_per_road_day=6.0))
    clear = SignalModel(city, deployment, 3, START, Scenario())
    times = [START.timestamp() + k * SLOT_S for k in range(2 * 288)]
    slowed = 0
    for device in deployment.devices[:40]:
        hit = [blocked.incident_slowdown(device, ts) for ts in times]
        if not any(hit):
            continue
        index = deployment.devices.index(device)
        with_incident, without = speeds(blocked, index, times), speeds(clear, index, times)
        for share, a, b in zip(hit, with_incident, without, strict=True):
            assert (a < b or a == 4.0) if share > 0 else a == b
        slowed += 1
    assert slowed >= 3


@pytest.fixture(scope="module")
def rainy_history(deployment: Deployment) -> tuple[list[float], dict[str, list[float]], SignalModel]:
    model = SignalModel(build_city(42), deployment, 3, START, weather_scenario(3, START, 9, 0.0))
    times = [START.timestamp() + k * SLOT_S for k in range(9 * 288)]
    return times, {d.name: speeds(model, i, times) for i, d in enumerate(deployment.devices[:12])}, model


def test_the_forecaster_uses_the_rain(rainy_history: tuple[list[float], dict[str, list[float]], SignalModel]
                                      ) -> None:
    times, series, sim = rainy_history
    split = 7 * 288
    fitted = train({s: (times[:split], v[:split]) for s, v in series.items()}, 3, sim.rain)
    blind = train({s: (times[:split], v[:split]) for s, v in series.items()}, 3)
    assert "rain_wetness" in FEATURES and fitted.metrics["wetRows"] > 0 and blind.metrics["wetRows"] == 0
    assert fitted.version != blind.version
    # Same recent speeds, same time: forecast slower when it rains now.
    segment, speeds_now = next(iter(series.items()))
    i, ts = split + 8 * 12, times[split + 8 * 12]
    assert fitted.predict(segment, speeds_now, i, ts, 25.0) < fitted.predict(segment, speeds_now, i, ts, 0.0)
    assert regime_of(ts + 900, 25.0) != regime_of(ts + 900, 0.0)
    assert REGIMES[regime_of(ts + 900, 25.0)].endswith("/wet")
    # On the held-out days' rainy slots the rain-aware model's speed error is below the blind one's.
    errors = {"rain-aware": 0.0, "blind": 0.0}
    wet_slots = 0
    for segment, values in series.items():
        for k in range(split, len(values) - 3):
            if sim.rain(times[k]) < 1.0:
                continue
            wet_slots += 1
            actual = values[k + 3]
            for name, model in (("rain-aware", fitted), ("blind", blind)):
                errors[name] += abs(model.predict(segment, values, k, times[k], sim.rain(times[k])) - actual) / actual
    assert wet_slots > 100
    assert errors["rain-aware"] < errors["blind"]
    # The rain's coefficients survive the JSON round trip.
    assert ForecastModel.from_params(fitted.to_params()).coefficients == fitted.coefficients


def test_rain_by_slot_averages_the_gauges_and_holds_an_hour() -> None:
    at = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    rain = RainBySlot([(at, 10.0), (at + timedelta(seconds=60), 20.0), (at + timedelta(minutes=10), 4.0)])
    ts = at.timestamp()
    assert rain(ts - SLOT_S) == 0.0
    assert rain(ts) == 15.0 and rain(ts + SLOT_S) == 15.0
    assert rain(ts + 2 * SLOT_S) == 4.0 and rain(ts + 14 * SLOT_S) == 4.0
    assert rain(ts + 15 * SLOT_S) == 0.0  # the gauges silent for over an hour say nothing
    assert RainBySlot([])(ts) == 0.0


def test_a_speed_far_below_the_slots_average_is_forecast_to_hold(
        rainy_history: tuple[list[float], dict[str, list[float]], SignalModel]) -> None:
    times, series, _sim = rainy_history
    fitted = train({s: (times[:7 * 288], v[:7 * 288]) for s, v in series.items()}, 3)
    segment = next(iter(series))
    i = 7 * 288 + 14 * 12  # 14:00 on a weekday: no peak, the average well above a blocked lane's speed
    usual = fitted.profiles.mean(segment, times[i], 0.0)
    blocked = [usual] * 3 + [0.3 * usual]
    assert fitted.predict(segment, blocked, 3, times[i]) == 0.3 * usual
    # A speed a little under the average is the regression's: it moves back towards the average.
    slower = [usual] * 3 + [0.8 * usual]
    assert 0.8 * usual < fitted.predict(segment, slower, 3, times[i]) < usual
