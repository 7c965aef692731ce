"""Unit conversion of readings (`<key>@<UN/CEFACT code>`), through the real HTTP device API, and the
pure conversion table."""

from __future__ import annotations

import math
from typing import Any

import pytest
from iot_helpers import history_count

from cityos.iot.models import load_profiles
from cityos.iot.units import UNITS, UnitError, check_profiles, convert, to_canonical

AQ = {"name": "aq-u", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "Meilan"}
WL = {"name": "wl-u", "profile": "water-level", "lon": 110.3, "lat": 20.0, "district": "Meilan"}


async def provision(client: Any, auth: Any, spec: dict[str, Any]) -> str:
    response = await client.post("/api/iot/devices", json=spec, headers=auth.headers("sys_admin"))
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def entity(client: Any, auth: Any, entity_id: str) -> dict[str, Any]:
    response = await client.get(f"/ngsi-ld/v1/entities/{entity_id}", headers=auth.headers("sys_admin"))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def letters(client: Any, auth: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/iot/dead-letters", headers=auth.headers("sys_admin"))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


# ---------------------------------------------------------------------- through the HTTP ingest


async def test_readings_in_other_units_are_stored_in_the_canonical_unit(client: Any, auth: Any, app: Any) -> None:
    token = await provision(client, auth, AQ)
    payload = {"temperature@FAH": 71.6, "co@59": 1.2, "no2@61": 40, "pm25@GP": 0.035, "pressure@KPA": 101.3,
               "so2": 8}
    response = await client.post(f"/api/v1/{token}/telemetry", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 6
    body = await entity(client, auth, "urn:ngsi-ld:AirQualityObserved:aq-u")
    assert body["temperature"]["value"] == 22.0 and body["temperature"]["unitCode"] == "CEL"
    # CO: 1.2 ppm x 28.010 g/mol / 24.465 L/mol = 1.3739 mg/m3 (25 degC, 1 atm)
    assert body["co"]["value"] == pytest.approx(1.3739, abs=1e-4) and body["co"]["unitCode"] == "GP"
    assert body["no2"]["value"] == pytest.approx(75.22, abs=0.01) and body["no2"]["unitCode"] == "GQ"
    assert body["pm25"]["value"] == 35.0 and body["pm25"]["unitCode"] == "GQ"
    assert body["atmosphericPressure"]["value"] == 1013.0 and body["atmosphericPressure"]["unitCode"] == "A97"
    assert body["so2"]["value"] == 8
    assert await history_count(app, "urn:ngsi-ld:AirQualityObserved:aq-u", "temperature") == 1
    assert await letters(client, auth) == []


async def test_lengths_and_flows_convert(client: Any, auth: Any) -> None:
    token = await provision(client, auth, WL)
    response = await client.post(f"/api/v1/{token}/telemetry",
                                 json={"level@CMT": 231, "rain@INH": 0.5, "flow@MQH": 7200})
    assert response.status_code == 200, response.text
    body = await entity(client, auth, "urn:ngsi-ld:WaterObserved:wl-u")
    assert body["height"]["value"] == 2.31 and body["height"]["unitCode"] == "MTR"
    assert body["precipitation"]["value"] == 12.7 and body["precipitation"]["unitCode"] == "MMT"
    assert body["flow"]["value"] == 2.0 and body["flow"]["unitCode"] == "MQS"


async def test_canonical_unit_suffix_is_accepted_as_is(client: Any, auth: Any) -> None:
    token = await provision(client, auth, WL)
    assert (await client.post(f"/api/v1/{token}/telemetry", json={"level@MTR": 3.5})).status_code == 200
    assert (await entity(client, auth, "urn:ngsi-ld:WaterObserved:wl-u"))["height"]["value"] == 3.5


async def test_unknown_and_incompatible_units_are_dead_letters(client: Any, auth: Any) -> None:
    token = await provision(client, auth, AQ)
    response = await client.post(f"/api/v1/{token}/telemetry",
                                 json={"pm25": 12, "temperature@XYZ": 70, "humidity@KPA": 3})
    assert response.status_code == 200, response.text  # the good reading is kept
    body = await entity(client, auth, "urn:ngsi-ld:AirQualityObserved:aq-u")
    assert body["pm25"]["value"] == 12 and "temperature" not in body and "relativeHumidity" not in body
    [letter] = await letters(client, auth)
    assert letter["reason"] == "unknown_unit"
    assert "'XYZ' is not a known UN/CEFACT unit code" in letter["detail"]
    assert "humidity is reported in P1" in letter["detail"] and "not in KPA" in letter["detail"]
    assert letter["payload"]["values"] == {"temperature@XYZ": 70, "humidity@KPA": 3}


async def test_a_unit_of_another_quantity_is_refused_with_the_reason(client: Any, auth: Any) -> None:
    token = await provision(client, auth, AQ)
    response = await client.post(f"/api/v1/{token}/telemetry", json={"temperature@KPA": 20})
    assert response.status_code == 400, response.text  # nothing usable in the message
    [letter] = await letters(client, auth)
    assert letter["reason"] == "incompatible_unit"
    assert "temperature is reported in CEL" in letter["detail"] and "FAH, KEL" in letter["detail"]


async def test_range_is_checked_after_conversion(client: Any, auth: Any) -> None:
    token = await provision(client, auth, AQ)
    # 150 degF = 65.6 degC: above the profile's 60 degC although 150 < 60 is false only in Fahrenheit
    response = await client.post(f"/api/v1/{token}/telemetry", json={"temperature@FAH": 150, "pm25": 3})
    assert response.status_code == 200
    [letter] = await letters(client, auth)
    assert letter["reason"] == "out_of_range"
    assert "temperature=65.5555556 is outside [-50, 60]" in letter["detail"]
    assert "reported as temperature@FAH=150" in letter["detail"]
    # and -40 degF (= -40 degC) is inside, though -40 would be fine either way; 140 K is not
    response = await client.post(f"/api/v1/{token}/telemetry", json={"temperature@KEL": 140})
    assert response.status_code == 400


async def test_wrong_type_with_a_unit_is_a_wrong_type(client: Any, auth: Any) -> None:
    token = await provision(client, auth, AQ)
    response = await client.post(f"/api/v1/{token}/telemetry", json={"temperature@FAH": "hot"})
    assert response.status_code == 400
    [letter] = await letters(client, auth)
    assert letter["reason"] == "wrong_type" and "must be a finite number" in letter["detail"]


async def test_unit_on_a_boolean_attribute_is_incompatible(client: Any, auth: Any) -> None:
    token = await provision(client, auth, {"name": "tf-u", "profile": "traffic-flow", "lon": 110.3, "lat": 20.0})
    response = await client.post(f"/api/v1/{token}/telemetry", json={"congested@C62": True, "intensity": 5})
    assert response.status_code == 200
    [letter] = await letters(client, auth)
    assert letter["reason"] == "incompatible_unit" and "'congested' has no unit" in letter["detail"]


# ---------------------------------------------------------------------- the pure conversions


@pytest.mark.parametrize(("value", "source", "target", "expected"), [
    (32, "FAH", "CEL", 0.0), (212, "FAH", "CEL", 100.0), (-40, "FAH", "CEL", -40.0), (273.15, "KEL", "CEL", 0.0),
    (25, "CEL", "FAH", 77.0), (1.5, "GP", "GQ", 1500.0), (750, "GQ", "GP", 0.75), (101.325, "KPA", "A97", 1013.25),
    (1013.25, "A97", "KPA", 101.325), (100000, "PAL", "A97", 1000.0), (1234, "MMT", "MTR", 1.234),
    (5, "CMT", "MTR", 0.05), (10, "FOT", "MTR", 3.048), (1, "M1", "H29", 1000.0), (250, "H29", "M1", 0.25),
    (50, "P1", "C62", 0.5), (36, "KMH", "MTS", 10.0), (1, "59", "61", 1000.0),
])
def test_convert(value: float, source: str, target: str, expected: float) -> None:
    assert convert(value, source, target) == pytest.approx(expected, rel=1e-9)


def test_gas_conversion_uses_molar_mass_at_25_degrees() -> None:
    # SO2 (64.066 g/mol): 1 ppb = 2.6187 ug/m3; O3 (47.997): 1 ppm = 1.9619 mg/m3
    assert convert(1, "61", "GQ", 64.066) == pytest.approx(2.6187, abs=1e-4)
    assert convert(1, "59", "GP", 47.997) == pytest.approx(1.9619, abs=1e-4)
    assert convert(convert(80, "61", "GQ", 46.0055), "GQ", "61", 46.0055) == pytest.approx(80)
    with pytest.raises(UnitError) as info:
        convert(1, "59", "GQ")
    assert info.value.reason == "incompatible_unit" and "molar mass" in info.value.detail


def test_unknown_and_cross_quantity_units_raise() -> None:
    with pytest.raises(UnitError) as info:
        convert(1, "NOPE", "CEL")
    assert info.value.reason == "unknown_unit"
    with pytest.raises(UnitError) as info:
        convert(1, "CEL", "MTR")
    assert info.value.reason == "incompatible_unit" and "temperature" in info.value.detail


def test_to_canonical_passes_plain_keys_and_unknown_keys_through() -> None:
    profile = load_profiles()["air-quality"]
    assert to_canonical(profile, "pm25", 12) == ("pm25", 12)
    assert to_canonical(profile, "nonsense@FAH", 1) == ("nonsense@FAH", 1)  # reported as unknown_key
    key, value = to_canonical(profile, "temperature@FAH", 50)
    assert key == "temperature" and value == 10.0 and not math.isnan(value)


def test_shipped_profiles_declare_convertible_units_only() -> None:
    profiles = load_profiles()
    assert check_profiles(profiles) == []
    for profile in profiles.values():
        for spec in profile.keys.values():
            assert spec.unit_code is None or spec.unit_code in UNITS
