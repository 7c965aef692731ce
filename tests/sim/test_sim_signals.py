"""Simulated readings: reproducible, in range, with rush hours, episodes that spread and floods that lag rain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cityos.sim.city import build_city
from cityos.sim.devices import place_devices
from cityos.sim.faults import FaultConfig
from cityos.sim.runner import SimOptions, Simulation
from cityos.sim.signals import PollutionEpisode, RainEvent, Scenario, SignalModel, traffic_factor

# Monday 2026-11-23 00:00 local (UTC+8).
MONDAY = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)


def _model(scenario: Scenario | None = None, devices: int = 300) -> SignalModel:
    city = build_city(42)
    return SignalModel(city, place_devices(city, devices, 42), 42, MONDAY, scenario)


def _day_of_readings(model: SignalModel, step_minutes: int = 15) -> list[tuple[str, dict[str, object]]]:
    out = []
    for k in range(24 * 60 // step_minutes):
        at = MONDAY + timedelta(minutes=k * step_minutes)
        for device in model.deployment.devices[::7]:
            out.append((device.profile, model.reading(device, at)))
    return out


def test_same_seed_same_readings() -> None:
    options = SimOptions(devices=120, seed=5, start=MONDAY)
    a, b = Simulation(options), Simulation(options)
    end = MONDAY.timestamp() + 3600
    assert [m.payload for m in a.advance(end)] == [m.payload for m in b.advance(end)]
    c = Simulation(SimOptions(devices=120, seed=6, start=MONDAY))
    assert [m.payload for m in c.advance(end)] != [m.payload for m in a.advance(end + 3600)]


# Profile attributes the simulated city's devices do not report: its traffic detectors are loops over a road
# section, which count and time vehicles but measure no queue (the SUMO field's stop-line and advance zones do,
# `cityos.sim.sumo_field`).
NOT_MEASURED = {"traffic-flow": {"queue"}}


def test_readings_stay_in_profile_ranges() -> None:
    model = _model(Scenario(
        episodes=(PollutionEpisode("district-03", MONDAY + timedelta(hours=2), peak_pm25=300),),
        rains=(RainEvent(MONDAY + timedelta(hours=3), 3, 80),)))
    profiles = model.deployment.profiles
    checked = 0
    for kind, values in _day_of_readings(model):
        profile = profiles[kind]
        assert set(values) == set(profile.attributes) - NOT_MEASURED.get(kind, set()), kind
        for key, value in values.items():
            assert profile.in_range(key, value), (kind, key, value)
            checked += 1
    assert checked > 10_000


def test_only_injected_spikes_leave_the_range() -> None:
    faults = FaultConfig(dropout=0, spike=0.05, stuck=0, duplicate=0, out_of_order=0, fast_drain=0,
                         gateway_outages_per_day=0)
    sim = Simulation(SimOptions(devices=200, seed=3, start=MONDAY, faults=faults))
    profiles = sim.deployment.profiles
    out_of_range = 0
    # Readings are checked as the injector hands them on, flags and all.
    sim2 = sim
    for device in sim2.deployment.devices[:60]:
        for k in range(40):
            at = MONDAY.timestamp() + device.phase + k * device.interval
            values = sim2.model.reading(device, at)
            for reading in sim2.faults.apply(device.name, int(at * 1000), values, profiles[device.profile]):
                bad = [key for key, v in reading.values.items() if not profiles[device.profile].in_range(key, v)]
                if bad:
                    out_of_range += 1
                    assert "spike" in reading.flags, (device.name, bad)
    assert out_of_range > 0


def test_rush_hour_beats_the_night() -> None:
    def at(hour: float, day: int = 0) -> float:
        return (MONDAY + timedelta(days=day, hours=hour)).timestamp()

    assert traffic_factor(at(8)) > 4 * traffic_factor(at(3))
    assert traffic_factor(at(18)) > 4 * traffic_factor(at(3))
    assert traffic_factor(at(8)) > traffic_factor(at(8, day=6))  # Sunday mornings are calmer
    model = _model()
    detector = next(d for d in model.deployment.devices if d.profile == "traffic-flow")
    noise = next(d for d in model.deployment.devices if d.profile == "noise")
    rush = [model.reading(detector, at(8) + k * 60)["intensity"] for k in range(10)]
    night = [model.reading(detector, at(27) + k * 60)["intensity"] for k in range(10)]
    assert min(rush) > max(night)
    loud = model.reading(noise, at(8))["laeq"]
    assert loud > model.reading(noise, at(27))["laeq"] + 5


def test_episode_spreads_to_neighbours_with_delay() -> None:
    city = build_city(42)
    origin = city.districts[2]
    neighbour = origin.neighbours[0]
    far_hops = city.hops_from(origin.id)
    far = max(far_hops, key=lambda k: far_hops[k])
    episode = PollutionEpisode(origin.id, MONDAY, peak_pm25=200, ramp_hours=1, hold_hours=4, spread_hours=1)
    model = SignalModel(city, place_devices(city, 50, 42), 42, MONDAY, Scenario(episodes=(episode,)))

    def pm(district: str, hours: float) -> float:
        return model.episode_pm25(district, (MONDAY + timedelta(hours=hours)).timestamp())

    assert pm(origin.id, 1.0) == pytest.approx(200)
    assert pm(neighbour, 1.0) == 0.0  # not arrived yet
    assert pm(neighbour, 2.5) > 100  # one ring out, an hour later, a bit weaker
    assert pm(neighbour, 2.5) < pm(origin.id, 2.5)
    assert pm(far, 2.5) < pm(neighbour, 2.5)


def test_rain_raises_rivers_with_lag() -> None:
    rain_start = MONDAY + timedelta(hours=1)
    model = _model(Scenario(rains=(RainEvent(rain_start, 2, 50),), river_lag_hours=2))
    river = model.city.rivers[0].id

    def level(hours: float) -> float:
        return model.river_level(river, (MONDAY + timedelta(hours=hours)).timestamp())

    base = level(0.5)
    assert level(1.2) - base < 0.5  # barely moved when the rain starts
    peak_hour = max((h / 4 for h in range(4, 40)), key=level)
    assert peak_hour > 2.5  # the rain peaks at 2 h; the river answers later
    assert level(peak_hour) > base + 1.0
    assert level(12) < level(peak_hour)  # and recedes


def test_parking_fuller_at_midday_and_batteries_drain() -> None:
    model = _model(devices=600)
    bays = [d for d in model.deployment.devices if d.profile == "parking-spot"]

    def occupancy(hour: float) -> float:
        ts = (MONDAY + timedelta(hours=hour)).timestamp()
        return sum(model.reading(b, ts)["status"] == "occupied" for b in bays) / len(bays)

    for h in (0, 1, 2, 3, 4):
        occupancy(h)  # let the Markov chains settle at night
    night = occupancy(4.5)
    for h in (8, 9, 10):
        occupancy(h)
    midday = occupancy(11)
    assert midday > night + 0.2
    sensor = next(d for d in model.deployment.devices if d.profile == "air-quality")
    first = model.reading(sensor, MONDAY.timestamp() + 86400 * 2)["battery"]
    later = model.reading(sensor, MONDAY.timestamp() + 86400 * 60)["battery"]
    assert later < first
