"""The environment HTTP API: station lists by district, one station, the stateless calculators, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from ops_env_helpers import Captured, fixed_clock, provision, send

from cityos.ops.environment.service import TOPIC_INCIDENT

API = "/api/ops/environment"


@pytest.fixture
async def stations(app: Any, client: Any, auth: Any) -> AsyncIterator[Any]:
    """Two air stations in Meilan, one in Longhua, a water and a noise station, all computed."""
    worker = app.state.environment_worker
    worker.reset()
    captured = Captured(app, TOPIC_INCIDENT)
    with fixed_clock():
        for name, district, pm25 in (("aq-a", "Meilan", 30), ("aq-b", "Meilan", 80), ("aq-c", "Longhua", 10)):
            token = await provision(client, auth, name, "air-quality", district=district)
            await send(client, token, {"pm25": pm25})
        token = await provision(client, auth, "wq-a", "water-quality", district="Meilan")
        await send(client, token, {"ph": 7.0, "do": 8.0, "nh3n": 0.1, "tp": 0.01})
        token = await provision(client, auth, "nz-a", "noise", district="Longhua")
        await send(client, token, {"laeq": 58.0, "lamax": 70})
        await worker.drain()
        yield auth.headers("sys_admin")
    captured.close()
    worker.reset()


async def test_aqi_by_district(client: Any, stations: Any) -> None:
    response = await client.get(f"{API}/aqi", params={"district": "Meilan"}, headers=stations)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["standard"] == "hj633"
    assert [(s["id"].rsplit(":", 1)[1], s["aqi"], s["category"]) for s in body["stations"]] == [
        ("aq-a", 43, "优"), ("aq-b", 107, "轻度污染")]
    assert body["stations"][1]["primaryPollutant"] == ["PM2.5"]
    # mean 75 (良), max 107
    assert body["districts"] == [{"district": "Meilan", "aqi": 75, "aqiMean": 75, "aqiMax": 107, "level": 2,
                                  "category": "良", "color": "#FFFF00", "stationCount": 2,
                                  "worstStation": "urn:ngsi-ld:AirQualityObserved:aq-b"}]
    everything = (await client.get(f"{API}/aqi", headers=stations)).json()
    assert [d["district"] for d in everything["districts"]] == ["Longhua", "Meilan"]
    nowhere = (await client.get(f"{API}/aqi", params={"district": "Atlantis"}, headers=stations)).json()
    assert nowhere["stations"] == [] and nowhere["districts"] == []


async def test_aqi_us_epa_option(client: Any, stations: Any) -> None:
    response = await client.get(f"{API}/aqi", params={"standard": "us-epa"}, headers=stations)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["standard"] == "us-epa"
    # a single hour of data: no 24-h average yet (GB 3095 validity: 20 hours), so no EPA PM index
    assert all(s["aqi"] is None for s in body["stations"])
    bad = await client.get(f"{API}/aqi", params={"standard": "who"}, headers=stations)
    assert bad.status_code == 400 and "standard" in bad.json()["detail"]


async def test_water_and_noise_lists(client: Any, stations: Any) -> None:
    water = (await client.get(f"{API}/water", params={"district": "Meilan"}, headers=stations)).json()
    [station] = water["stations"]
    assert station["waterQualityClass"] == "I" and station["waterQualityCompliant"] is True
    noise = (await client.get(f"{API}/noise", headers=stations)).json()
    [station] = noise["stations"]
    assert station["noisePeriod"] == "day" and station["noiseLimit"] == 60 and station["noiseExceedance"] == 0
    assert station["LAeq"] == 58.0


async def test_one_station_and_unknown_ones(client: Any, stations: Any) -> None:
    found = await client.get(f"{API}/stations/urn:ngsi-ld:AirQualityObserved:aq-b", headers=stations)
    assert found.status_code == 200 and found.json()["aqi"] == 107 and found.json()["episodes"] == []
    missing = await client.get(f"{API}/stations/urn:ngsi-ld:AirQualityObserved:nope", headers=stations)
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    device = await client.get(f"{API}/stations/urn:ngsi-ld:Device:aq-b", headers=stations)
    assert device.status_code == 404 and "not an environment station" in device.json()["detail"]


# ---------------------------------------------------------------------- calculators


async def test_calculate_hj633(client: Any, auth: Any) -> None:
    response = await client.post(f"{API}/aqi/calculate", headers=auth.headers("sys_admin"), json={
        "concentrations": {"pm25": 76, "pm10": 120, "so2": 900, "so2_24h": 100, "pm25_24h": 40, "o3_8h_max": 850,
                           "o3_1h_max": 900}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["hourly"]["aqi"] == 102 and body["hourly"]["primaryPollutant"] == ["PM2.5"]
    assert body["hourly"]["iaqi"] == {"PM10_24h": 85, "PM2.5_24h": 102, "SO2_24h": 75}
    assert body["hourly"]["category"] == "轻度污染" and body["hourly"]["level"] == 3
    assert body["daily"]["aqi"] == 350 and body["daily"]["primaryPollutant"] == ["O3"]
    assert any("1-h O3" in n for n in body["daily"]["notes"])


async def test_calculate_us_epa(client: Any, auth: Any) -> None:
    response = await client.post(f"{API}/aqi/calculate", headers=auth.headers("sys_admin"),
                                 json={"standard": "us-epa", "concentrations": {"pm25": 35.9, "no2": 188}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["aqi"] == 102 and body["category"] == "Unhealthy for Sensitive Groups"
    assert body["iaqi"] == {"PM2.5_24h": 102, "NO2_1h": 99}


@pytest.mark.parametrize(("payload", "message"), [
    ({"concentrations": {"pm25": -5}}, "must not be negative"),
    ({"concentrations": {"pm25": "lots"}}, "pm25"),
    ({"concentrations": {}}, "at least one concentration"),
    ({"concentrations": {"pm2_5": 10}}, "pm2_5"),
    ({"standard": "who", "concentrations": {"pm25": 10}}, "standard"),
    ({"pm25": 10}, "concentrations"),
])
async def test_calculate_refuses_bad_input(client: Any, auth: Any, payload: Any, message: str) -> None:
    response = await client.post(f"{API}/aqi/calculate", headers=auth.headers("sys_admin"), json=payload)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


async def test_calculate_refuses_nan(client: Any, auth: Any) -> None:
    response = await client.post(f"{API}/aqi/calculate", content=b'{"concentrations": {"pm25": NaN}}',
                                 headers={**auth.headers("sys_admin"), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "finite" in response.json()["detail"] or "JSON" in response.json()["detail"]


async def test_water_classify(client: Any, auth: Any) -> None:
    headers = auth.headers("sys_admin")
    response = await client.post(f"{API}/water/classify", headers=headers,
                                 json={"body": "lake", "target": "II", "values": {"DO": 7.0, "TP": 0.03, "TN": 0.4}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["class"] == "III" and body["limitingParameters"] == ["TP"] and body["compliant"] is False
    bad = await client.post(f"{API}/water/classify", headers=headers, json={"target": "VII", "values": {"DO": 5}})
    assert bad.status_code == 400 and "not a water quality class" in bad.json()["detail"]
    negative = await client.post(f"{API}/water/classify", headers=headers, json={"values": {"NH3N": -1}})
    assert negative.status_code == 400 and "must not be negative" in negative.json()["detail"]
    wrong = await client.post(f"{API}/water/classify", headers=headers, json={"values": {"NH3N": "x"}})
    assert wrong.status_code == 400


async def test_noise_assess(client: Any, auth: Any) -> None:
    headers = auth.headers("sys_admin")
    response = await client.post(f"{API}/noise/assess", headers=headers,
                                 json={"zone": "4a", "period": "night", "leq": 58.26, "lamax": 72})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["limit"] == 55 and body["exceedance"] == 3.3 and body["lamaxExceedance"] == 2.0
    assert body["compliant"] is False
    bad = await client.post(f"{API}/noise/assess", headers=headers, json={"zone": "9", "period": "day", "leq": 50})
    assert bad.status_code == 400 and "zone class" in bad.json()["detail"]
    odd = await client.post(f"{API}/noise/assess", headers=headers, json={"zone": "1", "period": "dusk", "leq": 50})
    assert odd.status_code == 400
