"""The environment worker end to end, in process: readings go in through the IoT HTTP ingest of
provisioned devices, the injectable clock moves, and the indices appear on the hub entities, the
district AQI is published, and `ops.incident.requested` is published once per episode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from ops_env_helpers import NOW, Captured, entity, fixed_clock, ms, provision, send
from sqlalchemy import func, select

from cityos.hub.models import attribute_history
from cityos.ops.environment.service import TOPIC_INCIDENT, district_index_id

AIR_ID = "urn:ngsi-ld:AirQualityObserved:aq-env-1"
BASE = {"pm10": 60, "no2": 30, "so2": 8, "o3": 60, "co": 0.6}


@pytest.fixture
async def env(app: Any, client: Any) -> AsyncIterator[dict[str, Any]]:
    worker = app.state.environment_worker
    await worker.drain()
    worker.reset()
    captured = Captured(app, TOPIC_INCIDENT)
    try:
        yield {"worker": worker, "incidents": captured.events}
    finally:
        captured.close()
        worker.reset()


def day_of_readings(end: Any, pm25_now: float, hours: int = 23) -> list[dict[str, Any]]:
    """Hourly readings for the `hours` past hours (pm25 40) and one now."""
    past = [{"ts": ms(end - timedelta(hours=h)), "values": {"pm25": 40, **BASE}} for h in range(hours, 0, -1)]
    return [*past, {"ts": ms(end), "values": {"pm25": pm25_now, **BASE}}]


async def history_rows(app: Any, entity_id: str, attr_suffix: str) -> int:
    t = attribute_history.c
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(attribute_history).where(
            t.entity_id == entity_id, t.attr.like(f"%/{attr_suffix}")))).scalar_one())


async def test_air_station_indices_incident_throttle_and_rearm(app: Any, client: Any, auth: Any,
                                                               env: dict[str, Any]) -> None:
    worker, incidents = env["worker"], env["incidents"]
    with fixed_clock() as now:
        token = await provision(client, auth, "aq-env-1", "air-quality")
        await send(client, token, day_of_readings(now[0], pm25_now=130))
        await worker.drain()
        body = await entity(client, auth, AIR_ID)
        # hourly: PM2.5 130 -> IAQI 172, 中度污染; 24 h: PM2.5 mean (23*40+130)/24 = 43.75 -> 61, 良
        assert body["aqi"] == 172 and body["aqiLevel"] == 4 and body["aqiCategory"] == "中度污染"
        assert body["aqiColor"] == "#FF0000" and body["primaryPollutant"] == ["PM2.5"]
        assert body["iaqi"]["PM2.5_24h"] == 172 and body["iaqi"]["O3_8h"] == 30
        assert body["aqi24h"] == 61 and body["aqi24hCategory"] == "良" and body["primaryPollutant24h"] == ["PM2.5"]
        assert isinstance(body["aqiUsEpa"], int) and body["aqiUsEpaCategory"]
        # one incident request for the episode, with the station's point
        assert len(incidents) == 1
        event = incidents[0]
        assert event["category"] == "environment.air" and event["source"] == "environment"
        assert event["level"] == "general" and event["entityId"] == AIR_ID and event["tenant"] == ""
        assert event["location"] == {"type": "Point", "coordinates": [110.35, 20.02]}
        assert event["dedupKey"].startswith(f"environment.air:{AIR_ID}:") and "172" in event["title"]
        first_key = event["dedupKey"]
        # the write-back did not queue the station again (no loop) and was written once
        assert worker.queued == set() and worker.deferred == {}
        assert await history_rows(app, AIR_ID, "aqi") == 1
        # the district AQI for the cockpit map
        district = await entity(client, auth, district_index_id("Meilan"))
        assert district["aqi"] == 172 and district["aqiMax"] == 172 and district["stationCount"] == 1
        assert district["worstStation"] == AIR_ID and district["aqiCategory"] == "中度污染"

        # a new reading inside the interval is deferred, not computed
        processed = worker.processed
        now[0] += timedelta(seconds=20)
        await send(client, token, {"ts": ms(now[0]), "values": {"pm25": 140}})
        await worker.drain()
        assert worker.processed == processed and AIR_ID in {k[1] for k in worker.deferred}
        assert (await entity(client, auth, AIR_ID))["aqi"] == 172
        # ... and computed once the interval has passed; the episode is still open: no second incident
        now[0] += timedelta(seconds=45)
        await worker.drain()
        assert worker.processed == processed + 1
        assert (await entity(client, auth, AIR_ID))["aqi"] == 179  # PM2.5 135, the mean of 130 and 140
        assert len(incidents) == 1

        # the next hour is clean: the episode closes (re-arms) ...
        now[0] += timedelta(hours=1)
        await send(client, token, {"ts": ms(now[0]), "values": {"pm25": 20, **BASE}})
        await worker.drain()
        clean = await entity(client, auth, AIR_ID)
        assert clean["aqi"] <= 100 and clean["aqiLevel"] <= 2 and len(incidents) == 1
        # ... and a new one opens a new episode with a new dedupKey
        now[0] += timedelta(hours=1)
        await send(client, token, {"ts": ms(now[0]), "values": {"pm25": 200, **BASE}})
        await worker.drain()
        assert (await entity(client, auth, AIR_ID))["aqiCategory"] == "重度污染"
        assert len(incidents) == 2 and incidents[1]["dedupKey"] != first_key


async def test_hour_rollover_recomputes_before_the_interval(app: Any, client: Any, auth: Any,
                                                            env: dict[str, Any]) -> None:
    worker = env["worker"]
    with fixed_clock(NOW.replace(minute=59, second=40)) as now:
        token = await provision(client, auth, "aq-env-2", "air-quality")
        await send(client, token, {"ts": ms(now[0]), "values": {"pm25": 30}})
        await worker.drain()
        station = "urn:ngsi-ld:AirQualityObserved:aq-env-2"
        assert (await entity(client, auth, station))["aqi"] == 43
        now[0] += timedelta(seconds=25)  # 09:00:05: a new clock hour, 25 s after the last run
        await send(client, token, {"ts": ms(now[0]), "values": {"pm25": 80}})
        await worker.drain()
        assert (await entity(client, auth, station))["aqi"] == 107


async def test_a_burst_of_readings_is_coalesced(app: Any, client: Any, auth: Any, env: dict[str, Any]) -> None:
    worker = env["worker"]
    with fixed_clock() as now:
        token = await provision(client, auth, "aq-env-3", "air-quality")
        await worker.drain()  # the provisioning change
        processed = worker.processed
        now[0] += timedelta(minutes=5)
        for i in range(20):
            await send(client, token, {"ts": ms(now[0]) - i * 1000, "values": {"pm25": 10 + i}})
        await worker.drain()
        assert worker.processed == processed + 1


async def test_water_station_against_its_target_class(app: Any, client: Any, auth: Any,
                                                      env: dict[str, Any]) -> None:
    worker, incidents = env["worker"], env["incidents"]
    station = "urn:ngsi-ld:WaterQualityObserved:wq-env-1"
    with fixed_clock() as now:
        token = await provision(client, auth, "wq-env-1", "water-quality", district="Longhua")
        await send(client, token, {"ph": 7.2, "do": 4.0, "cod": 18, "nh3n": 0.4, "tp": 0.1})
        await worker.drain()
        body = await entity(client, auth, station)
        # DO 4.0 mg/L is class IV (>= 3, < 5); COD 18 class III: the water is IV, worse than the default III
        assert body["waterQualityClass"] == "IV" and body["waterQualityLevel"] == 4
        assert body["waterQualityLimiting"] == ["DO"] and body["waterQualityTarget"] == "III"
        assert body["waterQualityCompliant"] is False
        assert [e["category"] for e in incidents] == ["environment.water"]
        assert "IV" in incidents[0]["title"] and incidents[0]["entityId"] == station

        # the river's target class is IV: the station now complies, and the episode closes
        river = "urn:ngsi-ld:River:env-test"
        response = await client.post("/ngsi-ld/v1/entities", headers=auth.headers("sys_admin"), json={
            "id": river, "type": "River", "waterTargetClass": {"type": "Property", "value": "IV"}})
        assert response.status_code == 201, response.text
        response = await client.post(f"/ngsi-ld/v1/entities/{station}/attrs", headers=auth.headers("sys_admin"),
                                     json={"refWaterBody": {"type": "Relationship", "object": river}})
        assert response.status_code == 204, response.text
        now[0] += timedelta(minutes=2)
        await worker.drain()
        body = await entity(client, auth, station)
        assert body["waterQualityTarget"] == "IV" and body["waterQualityCompliant"] is True
        episodes = (await client.get(f"/api/ops/environment/stations/{station}",
                                     headers=auth.headers("sys_admin"))).json()["episodes"]
        assert episodes[0]["category"] == "environment.water" and episodes[0]["active"] is False

        # ammonia at 2.5 mg/L is worse than V
        now[0] += timedelta(minutes=2)
        await send(client, token, {"nh3n": 2.5})
        await worker.drain()
        body = await entity(client, auth, station)
        assert body["waterQualityClass"] == "劣V" and body["waterQualityLimiting"] == ["NH3N"]
        assert len(incidents) == 2


async def test_noise_station_at_night_in_zone_1(app: Any, client: Any, auth: Any, env: dict[str, Any]) -> None:
    worker, incidents = env["worker"], env["incidents"]
    station = "urn:ngsi-ld:NoiseLevelObserved:nz-env-1"
    night = NOW.replace(hour=15, minute=30)  # 23:30 in Haikou
    with fixed_clock(night) as now:
        token = await provision(client, auth, "nz-env-1", "noise")
        response = await client.post(f"/ngsi-ld/v1/entities/{station}/attrs", headers=auth.headers("sys_admin"),
                                     json={"noiseZoneClass": {"type": "Property", "value": "1"}})
        assert response.status_code == 204, response.text
        # 22:00 to 23:30: readings every 10 minutes, 48 and 52 dB alternately; one 65 dB event
        readings = [{"ts": ms(now[0] - timedelta(minutes=10 * i)),
                     "values": {"laeq": 48 if i % 2 else 52, "lamax": 65 if i == 3 else 55}} for i in range(9, -1, -1)]
        # and one from before 22:00 (the day period): not part of the night's Leq
        readings.insert(0, {"ts": ms(now[0] - timedelta(minutes=100)), "values": {"laeq": 90, "lamax": 95}})
        await send(client, token, readings)
        await worker.drain()
        body = await entity(client, auth, station)
        assert body["noisePeriod"] == "night" and body["noiseZone"] == "1" and body["noiseLimit"] == 45
        assert body["noiseLeqPeriod"] == 50.4  # energy mean of 48 and 52 dB
        assert body["noiseExceedance"] == 5.4 and body["noiseCompliant"] is False
        assert body["noiseLAmaxExceedance"] == 5.0  # 65 against 45 + 15
        assert [e["category"] for e in incidents] == ["environment.noise"]
        assert "5.4 dB" in incidents[0]["title"]


async def test_changes_to_other_entity_types_are_ignored(app: Any, client: Any, auth: Any,
                                                         env: dict[str, Any]) -> None:
    worker = env["worker"]
    with fixed_clock():
        token = await provision(client, auth, "tf-env-1", "traffic-flow")
        await send(client, token, {"intensity": 300})
        assert worker.queued == set() and worker.deferred == {}


async def test_indices_describe_the_hour_of_the_newest_reading(app: Any, client: Any, auth: Any,
                                                               env: dict[str, Any]) -> None:
    """A gateway's backfill (or a replayed day) gets the AQI of the hour its readings belong to,
    not an empty current hour."""
    worker = env["worker"]
    with fixed_clock() as now:
        token = await provision(client, auth, "aq-env-late", "air-quality")
        three_hours_ago = now[0] - timedelta(hours=3)
        await send(client, token, {"ts": ms(three_hours_ago), "values": {"pm25": 130, **BASE}})
        await worker.drain()
        body = await entity(client, auth, "urn:ngsi-ld:AirQualityObserved:aq-env-late")
        assert body["aqi"] == 172 and body["aqiCategory"] == "中度污染"
