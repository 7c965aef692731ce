"""The hall's and waste sorting's KPI sources measure their own tables for the evaluation domain."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from test_hall import Hall
from test_waste import Sorting

from cityos.core import clock
from cityos.core.indicators import Period
from cityos.livelihood.hall.indicators import hall_wait_minutes
from cityos.livelihood.waste.indicators import accuracy, participation


def today() -> Period:
    now = clock.now()
    return Period(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))


async def test_hall_wait_indicator(client: httpx.AsyncClient, app: Any) -> None:
    hall = Hall(app, client)
    await hall.set_up({1: ["A"]})
    async with app.state.engine.connect() as conn:
        assert await hall_wait_minutes(conn, today()) is None  # no data is "no data", never 0
    start = clock.now()
    clock.set_clock(lambda: start)
    try:
        await hall.ticket("u1")
        clock.set_clock(lambda: start + dt.timedelta(minutes=12))
        await hall.call(1)
    finally:
        clock.reset_clock()
    async with app.state.engine.connect() as conn:
        measure = await hall_wait_minutes(conn, today())
    assert measure is not None and measure.value == 12.0 and measure.samples == 1


async def test_waste_indicators(client: httpx.AsyncClient, app: Any) -> None:
    sorting = Sorting(app, client)
    for n in range(4):
        await sorting.card(f"h{n}", f"QR-H{n}")
    await sorting.deposit("k1", "QR-H0", correct=True)
    await sorting.deposit("k2", "QR-H1", correct=False)
    await sorting.deposit("k3", "QR-H1", correct=True)
    async with app.state.engine.connect() as conn:
        joined = await participation(conn, today())
        right = await accuracy(conn, today())
    assert joined is not None and joined.value == 50.0 and joined.samples == 4
    assert right is not None and right.value == 66.67 and right.samples == 3
    indicators = (await client.get("/api/evaluation/indicators")).json()
    listed = indicators if isinstance(indicators, list) else indicators.get("indicators", indicators.get("items", []))
    ids = {item.get("id") for item in listed if isinstance(item, dict)}
    assert {"livelihood.waste_sorting_participation", "livelihood.waste_sorting_accuracy",
            "livelihood.hall_wait_minutes"} <= ids, sorted(ids)[:5]
