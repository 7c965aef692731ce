"""A commanded level repeated all night (a streetlight dimmed to 40 %) is not a frozen sensor; its
measured power stuck on one value is. This was the demo's flood of streetlight work orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from iot_helpers import recorder
from test_iot_health import telemetry

LAMP = {"name": "lamp-1", "profile": "streetlight", "lon": 110.3, "lat": 20.0, "district": "Meilan",
        "department": "UTIL"}


async def test_a_dimming_setpoint_held_all_night_or_switched_is_not_flagged(client: Any, app: Any,
                                                                          fixed_clock: Any) -> None:
    token = (await client.post("/api/iot/devices", json=LAMP)).json()["token"]
    quality = recorder(app, "iot.data.quality")
    await telemetry(client, app, token, {"state": "off", "dim": 0.0, "power": 1.4})
    fixed_clock[0] += timedelta(seconds=300)
    await telemetry(client, app, token, {"state": "on", "dim": 1.0, "power": 150.2})  # dusk: off to full
    for step in range(14):  # then 70 minutes at the 5-minute interval, dimmed to 0.4 throughout
        fixed_clock[0] += timedelta(seconds=300)
        await telemetry(client, app, token, {"state": "low", "dim": 0.4, "power": 60.0 + (step % 5) * 0.7})
    assert quality == []  # neither frozen nor a spike


async def test_a_stuck_power_meter_is_still_frozen(client: Any, app: Any, fixed_clock: Any) -> None:
    token = (await client.post("/api/iot/devices", json=LAMP)).json()["token"]
    quality = recorder(app, "iot.data.quality")
    for _ in range(12):
        fixed_clock[0] += timedelta(seconds=300)
        await telemetry(client, app, token, {"state": "low", "dim": 0.4, "power": 61.3})
    assert [(q["kind"], q["key"]) for q in quality] == [("frozen", "power")]


def test_no_simulated_lamp_repeats_an_in_range_measurement_for_ten_readings() -> None:
    """A day of every simulated streetlight at its 5-minute interval: the detector's rule (ten equal
    in-range values of a measured, not commanded, key) finds no lamp frozen without an injected fault."""
    from cityos.iot.models import load_profiles
    from cityos.sim.city import build_city
    from cityos.sim.devices import place_devices
    from cityos.sim.signals import SignalModel

    monday = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)
    city = build_city(42)
    model = SignalModel(city, place_devices(city, 600, 42), 42, monday)
    lamps = [d for d in model.deployment.devices if d.profile == "streetlight"]
    assert len(lamps) >= 10
    keys = load_profiles()["streetlight"].keys
    longest = 0
    for lamp in lamps:
        runs: dict[str, tuple[Any, int]] = {}
        for k in range(24 * 12):
            reading = model.reading(lamp, monday + timedelta(minutes=5 * k))
            for key, value in reading.items():
                spec = keys.get(key)
                if spec is None or spec.kind != "number" or spec.setpoint or value in (0, spec.min, spec.max):
                    runs.pop(key, None)
                    continue
                previous, count = runs.get(key, (None, 0))
                runs[key] = (value, count + 1 if value == previous else 1)
                longest = max(longest, runs[key][1])
    assert longest < 10
