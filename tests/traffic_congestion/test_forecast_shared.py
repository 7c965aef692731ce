"""Trained forecast versions live in the database as JSON parameters: a second app instance on the same
database (another API worker, or the same one after a restart) forecasts with the version the first one
trained, identically; a stored version this code cannot use falls back to persistence. On both backends."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from auth_tokens import Auth
from cityos.app import create_app
from cityos.config import Settings
from cityos.core import clock
from cityos.traffic.congestion.forecast import FEATURES, SLOT_S, ForecastModel, ModelMismatch, train
from cityos.traffic.congestion.forecasting import KEPT_VERSIONS, Trained
from cityos.traffic.congestion.models import forecast_models

API = "/api/traffic/congestion"
SEGMENTS = [("s-jam", "arterial", 8.0), ("s-free", "arterial", 48.0), ("s-side", "branch", 25.0)]


@pytest.fixture
async def other_worker(client: httpx.AsyncClient, settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A second, fresh app instance on the session app's database: it has trained nothing itself."""
    second = create_app(settings)
    transport = httpx.ASGITransport(app=second)
    async with second.router.lifespan_context(second), httpx.AsyncClient(transport=transport,
                                                                         base_url="http://cityos.test") as http:
        yield second, http


async def seed(client: httpx.AsyncClient, headers: dict[str, str], slots: int = 14) -> None:
    for segment, road_class, _ in SEGMENTS:
        created = await client.post(f"{API}/segments", headers=headers, json={
            "id": segment, "name": segment, "district": "龙华区", "roadClass": road_class, "lengthM": 600})
        assert created.status_code == 201, created.text
    start = clock.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=5 * slots)
    rng = random.Random(5)
    for k in range(slots):
        readings = [{"segmentId": s, "speedKmh": round(base + rng.uniform(-3, 3), 2), "flowVph": 500 + 10 * k,
                     "observedAt": clock.iso(start + dt.timedelta(minutes=5 * k))} for s, _, base in SEGMENTS]
        reported = await client.post(f"{API}/readings", headers=headers, json={"readings": readings})
        assert reported.status_code == 200, reported.text


def test_parameters_round_trip_through_json_to_identical_forecasts() -> None:
    rng = random.Random(11)
    times = [1_772_000_000.0 + k * SLOT_S for k in range(400)]
    series = {f"seg-{n}": [max(1.0, 40 + 15 * rng.random() - 10 * (k % 50 > 40)) for k in range(400)]
              for n in range(4)}
    model = train({s: (times, v) for s, v in series.items()}, horizon_steps=3)
    stored = json.dumps(model.to_params())
    assert "coefficients" in stored and model.metrics["maeKmh"] >= 0 and model.metrics["rows"] > 0
    loaded = ForecastModel.from_params(json.loads(stored))
    assert loaded.version == model.version and loaded.coefficients == model.coefficients
    for segment, speeds in series.items():
        for i in range(3, 400, 7):
            assert loaded.predict(segment, speeds, i, times[i]) == model.predict(segment, speeds, i, times[i])
    assert loaded.predict("unseen", [30.0] * 4, 3, times[3]) == model.predict("unseen", [30.0] * 4, 3, times[3])
    params = model.to_params()
    for broken in ({**params, "featureSpec": {**params["featureSpec"], "lags": 6}},
                   {**params, "coefficients": params["coefficients"][:-1]}, {**params, "kind": "pickle"},
                   {**params, "profiles": {"s": [["x", 1]]}}, {k: v for k, v in params.items() if k != "trainedTo"}):
        with pytest.raises(ModelMismatch):
            ForecastModel.from_params(broken)


async def test_a_model_trained_by_one_worker_forecasts_the_same_in_another(
        client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any,
        other_worker: tuple[Any, httpx.AsyncClient]) -> None:
    second_app, second = other_worker
    staff = Auth(app).headers("official", department="transport")
    await seed(client, staff)
    assert (await second.get(f"{API}/forecast")).json()["model"]["kind"] == "persistence"

    trained = await client.post(f"{API}/forecast/train", headers=staff, json={"days": 1})
    assert trained.status_code == 200, trained.text
    version = trained.json()["version"]
    assert trained.json()["previous"] == []
    for query in ({}, {"segment": "s-jam"}, {"district": "龙华区"}):
        here = (await anon_client.get(f"{API}/forecast", params=query)).json()
        there = (await second.get(f"{API}/forecast", params=query)).json()
        assert here == there and there["model"]["version"] == version and there["model"]["kind"] == "ridge"
    assert (await anon_client.get(f"{API}/diversions", params={"segment": "s-jam"})).json() == \
        (await second.get(f"{API}/diversions", params={"segment": "s-jam"})).json()

    # What is stored: JSON parameters with the feature spec, window, metrics and version number.
    async with app.state.engine.connect() as conn:
        row = (await conn.execute(select(forecast_models).where(forecast_models.c.tenant == ""))).one()
    assert row.number == 1 and row.version == version and row.segments == len(SEGMENTS)
    assert set(row.params) == {"kind", "coefficients", "profiles", "featureSpec", "trainedFrom", "trainedTo",
                               "metrics"}
    assert row.params["featureSpec"]["features"][0] == "intercept" and set(row.metrics) >= {"maeKmh"}
    assert clock.as_utc(row.trained_to) > clock.as_utc(row.trained_from)

    # The second worker retrains: the first one forecasts with that newer version; older ones are listed.
    again = await second.post(f"{API}/forecast/train", headers=Auth(second_app).headers(
        "official", department="transport"), json={"days": 1})
    assert again.status_code == 200, again.text
    assert [p["version"] for p in again.json()["previous"]] == [version]
    newest = (await anon_client.get(f"{API}/forecast")).json()["model"]
    assert newest["trainedAt"] == again.json()["trainedAt"]
    assert await app.state.congestion_forecast.latest("") is not None
    # A scheduled round skips a tenant whose newest version is younger than the round.
    assert await app.state.congestion_forecast.retrain_all() == 0

    # Only the last KEPT_VERSIONS versions are kept.
    for _ in range(KEPT_VERSIONS):
        assert (await client.post(f"{API}/forecast/train", headers=staff, json={"days": 1})).status_code == 200
    async with app.state.engine.connect() as conn:
        numbers = (await conn.execute(select(forecast_models.c.number).order_by(forecast_models.c.number))).scalars()
        assert list(numbers) == list(range(3, KEPT_VERSIONS + 3))


async def test_a_stored_version_this_code_cannot_use_falls_back_to_persistence(
        client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any,
        other_worker: tuple[Any, httpx.AsyncClient]) -> None:
    _second_app, second = other_worker
    staff = Auth(app).headers("official", department="transport")
    await seed(client, staff)
    assert (await client.post(f"{API}/forecast/train", headers=staff, json={"days": 1})).status_code == 200
    async with app.state.engine.begin() as conn:
        await conn.execute(update(forecast_models).values(params={"kind": "ridge", "featureSpec": {"lags": 99}}))
    for http in (anon_client, second):
        answer = await http.get(f"{API}/forecast", params={"segment": "s-jam"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["kind"] == "persistence"
        assert answer.json()["forecast"]["speedKmh"] == answer.json()["current"]["speedKmh"]


async def test_the_stored_version_is_the_trained_model_bit_for_bit(
        client: httpx.AsyncClient, app: Any, other_worker: tuple[Any, httpx.AsyncClient]) -> None:
    """Through the database's JSON (JSONB on PostgreSQL) and back, every float is the one trained."""
    second_app, _second = other_worker
    await seed(client, Auth(app).headers("official", department="transport"))
    trained = await app.state.congestion_forecast._train("", 1)
    assert trained is not None and trained.number == 1
    loaded = await second_app.state.congestion_forecast.latest("")
    assert loaded is not None and loaded.number == 1
    assert loaded.model.coefficients == trained.model.coefficients
    assert loaded.model.metrics == trained.model.metrics and loaded.model.version == trained.model.version
    assert (loaded.model.trained_from, loaded.model.trained_to) == (trained.model.trained_from,
                                                                    trained.model.trained_to)
    rng = random.Random(3)
    now = clock.now().timestamp()
    for segment, _, base in SEGMENTS:
        for k in range(50):
            speeds = [base + rng.uniform(-5, 5) for _ in range(6)]
            at = now - k * SLOT_S
            assert loaded.model.predict(segment, speeds, 5, at) == trained.model.predict(segment, speeds, 5, at)


async def test_training_and_forecasts_read_the_rain_gauges_from_the_hub(
        client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    """The weather feature is the gauges' `precipitation` in the hub (WaterObserved): a model trained while
    it rained part of the time has wet rows, and the forecast takes the newest gauge reading as the rain now."""
    staff = Auth(app).headers("official", department="transport")
    await seed(client, staff)
    service = app.state.congestion_forecast
    dry = await service._train("", 1)
    assert dry is not None and dry.model.metrics["wetRows"] == 0
    start = clock.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=5 * 14)

    async def gauge(entity_type: str, values: dict[int, float]) -> None:
        body = {"id": f"urn:ngsi-ld:{entity_type}:gauge-1", "type": entity_type, "precipitation": [
            {"type": "Property", "value": v, "unitCode": "MMT",
             "observedAt": clock.iso(start + dt.timedelta(minutes=5 * k))} for k, v in values.items()]}
        posted = await client.post("/ngsi-ld/v1/temporal/entities", json=body,
                                   headers={"Content-Type": "application/json"})
        assert posted.status_code in (201, 204), posted.text

    await gauge("WaterObserved", {k: 40.0 for k in range(7, 13)})  # a shower in the second half
    await gauge("Thing", {k: 99.0 for k in range(7)})              # not a gauge: not read
    wet = await service._train("", 1)
    assert wet is not None and 0 < wet.model.metrics["wetRows"] < wet.model.metrics["rows"]
    assert wet.model.version != dry.model.version
    # Fourteen slots teach the model little about rain: store a version of it whose rain coefficient is
    # large (half the target slot's average speed lost at full wetness), to see that forecasts feed it the rain now.
    rain_column = FEATURES.index("rain_wetness_x_profile_target")
    steep = [[-0.5 if n == rain_column else c for n, c in enumerate(regime)] for regime in wet.model.coefficients]
    model = ForecastModel(steep, wet.model.horizon_steps, wet.model.profiles, wet.model.trained_from,
                          wet.model.trained_to, wet.model.metrics)
    await service._store("", Trained(model, clock.now(), wet.segments, wet.samples), model.to_params())
    raining = (await anon_client.get(f"{API}/forecast", params={"segment": "s-jam"})).json()
    assert raining["model"]["version"] == model.version
    # Rain now is the gauges' reading in the slot of the segments' latest reading (the last one, 40 mm/h,
    # held into it), until a reading in that slot says the shower is over.
    await gauge("WaterObserved", {13: 0.0})
    stopped = (await anon_client.get(f"{API}/forecast", params={"segment": "s-jam"})).json()
    assert stopped["model"]["version"] == model.version
    assert stopped["forecast"]["speedKmh"] > 1.5 * raining["forecast"]["speedKmh"], (raining, stopped)
