"""The demo's simulated road speeds: plausible, following the daily pattern, and fed through the service
until the forecast has a model and the cockpit's segments have levels."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import httpx

from cityos.sim.congestion import BACKFILL_SLOTS, run_live, segment_speed
from cityos.traffic.congestion.grid import city_sections

NIGHT = datetime(2026, 3, 2, 19, 0, tzinfo=UTC).timestamp()  # Tuesday 03:00 in the city
PEAK = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()    # Monday 08:00


def test_speeds_follow_the_day() -> None:
    sections = city_sections(42)
    night = [segment_speed(s, NIGHT, 42) for s in sections]
    peak = [segment_speed(s, PEAK, 42) for s in sections]
    assert all(0 < v <= 70 for v in night + peak)
    assert sum(peak) / len(peak) < 0.8 * sum(night) / len(night)
    assert segment_speed(sections[0], PEAK, 42) == segment_speed(sections[0], PEAK, 42)  # reproducible


async def test_the_demo_feed_trains_a_model(anon_client: httpx.AsyncClient, app: Any) -> None:
    forecasts = app.state.congestion_forecast
    assert await forecasts.latest("") is None  # the tables were emptied: no earlier test's model
    task = asyncio.create_task(run_live(app, 42, every_s=3600))
    try:
        for _ in range(600):  # generous: the three-hour backfill is 36 reports of 123 segments
            if await forecasts.latest("") is not None or task.done():
                break
            await asyncio.sleep(0.5)
        assert not task.done(), task.exception()
        assert await forecasts.latest("") is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    city = (await anon_client.get("/api/traffic/congestion/forecast")).json()
    assert city["segments"] == len(city_sections(42)) and city["model"]["kind"] == "ridge"
    history = (await anon_client.get("/api/traffic/congestion/history", params={"scope": "city"})).json()
    assert len(history) >= BACKFILL_SLOTS
