"""The demo's simulated road speeds: plausible, following the daily pattern, and fed through the service
until the forecast has a model and the cockpit's segments have levels."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import httpx

from cityos.sim.congestion import BACKFILL_SLOTS, run_live, segment_speed, sumo_readings
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


def test_sumo_edges_become_segment_readings_both_directions_together() -> None:
    sections = city_sections(42)
    first, second = sections[0], sections[1]
    edges = {f"{first.start}--{first.end}": (12.0, 300.0), f"{first.end}--{first.start}": (18.0, 200.0),
             f"{second.end}--{second.start}": (250.0, 30_000.0)}  # one direction only, beyond the limits
    at = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    rows = {r["segmentId"]: r for r in sumo_readings(sections, edges, at)}
    assert set(rows) == {first.id, second.id}  # segments SUMO did not sample keep their last reading
    assert (rows[first.id]["speedKmh"], rows[first.id]["flowVph"]) == (15.0, 500)
    assert (rows[second.id]["speedKmh"], rows[second.id]["flowVph"]) == (200.0, 20_000)  # what reports accept
    assert rows[first.id]["observedAt"].startswith("2026-03-02T00:00:00")
    assert sumo_readings(sections, {}, at) == []


async def test_the_demo_feed_trains_a_model(anon_client: httpx.AsyncClient, app: Any) -> None:
    """The backfill trains the first model; then the live reports come from SUMO's edges when there are
    some (`cityos demo --traffic sumo`), here one segment's, both directions."""
    forecasts = app.state.congestion_forecast
    assert await forecasts.latest("") is None  # the tables were emptied: no earlier test's model
    first = city_sections(42)[0]
    sumo_edges = {f"{first.start}--{first.end}": (6.0, 900.0), f"{first.end}--{first.start}": (8.0, 700.0)}
    task = asyncio.create_task(run_live(app, 42, every_s=3600, live_traffic=lambda: sumo_edges))
    try:
        for _ in range(600):  # generous: the three-hour backfill is 36 reports of 123 segments
            if await forecasts.latest("") is not None or task.done():
                break
            await asyncio.sleep(0.5)
        assert not task.done(), task.exception()
        assert await forecasts.latest("") is not None

        async def jammed() -> dict[str, Any] | None:
            overview = (await anon_client.get("/api/traffic/congestion")).json()
            found = [s for s in overview["segments"] if s["id"] == first.id and s["speedKmh"] == 7.0]
            return found[0] if found else None

        for _ in range(100):
            if await jammed():
                break
            await asyncio.sleep(0.2)
        segment = await jammed()
        assert segment is not None and segment["flowVph"] == 1600
        assert segment["tpi"] >= 8  # 7 km/h on the arterial: 严重拥堵
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    city = (await anon_client.get("/api/traffic/congestion/forecast")).json()
    assert city["segments"] == len(city_sections(42)) and city["model"]["kind"] == "ridge"
    history = (await anon_client.get("/api/traffic/congestion/history", params={"scope": "city"})).json()
    assert len(history) >= BACKFILL_SLOTS
