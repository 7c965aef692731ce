"""Device events survive a process that dies between its commit and their publication (the outbox)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from iot_helpers import recorder
from sqlalchemy import func, select

from cityos.iot import health
from cityos.iot.models import event_outbox

AQ = {"name": "aq-out", "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "Meilan",
      "department": "EPB"}


async def outbox_rows(app: Any) -> int:
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(event_outbox))).scalar_one())


async def device(client: Any) -> str:
    r = await client.post("/api/iot/devices", json=AQ)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def test_published_events_leave_the_outbox_and_are_not_sent_again(client: Any, app: Any,
                                                                         fixed_clock: Any) -> None:
    token = await device(client)
    alarms = recorder(app, "iot.device.alarm")
    assert (await client.post(f"/api/v1/{token}/telemetry", json={"battery": 15})).status_code == 200
    await app.state.iot.events.drain()
    assert [a["kind"] for a in alarms] == ["lowBattery"]
    fixed_clock[0] += timedelta(minutes=5)  # well past the redelivery age
    result = await health.run_once(app.state.iot)  # its transaction deletes what was published
    assert result["eventsRecovered"] == 0
    assert await outbox_rows(app) == 0
    assert len(alarms) == 1


async def test_events_of_a_process_that_died_after_its_commit_are_published_later(
        client: Any, app: Any, fixed_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    token = await device(client)
    alarms = recorder(app, "iot.device.alarm")

    async def died_before_publishing(*_args: Any) -> None:
        return None

    with monkeypatch.context() as patch:
        patch.setattr(app.state.iot.outbox, "publish", died_before_publishing)
        assert (await client.post(f"/api/v1/{token}/telemetry", json={"battery": 12})).status_code == 200
        await app.state.iot.events.drain()
    assert alarms == [] and await outbox_rows(app) == 1  # committed with the reading, never published
    fixed_clock[0] += timedelta(seconds=30)  # younger than the redelivery age: maybe still on its way
    assert (await health.run_once(app.state.iot))["eventsRecovered"] == 0
    fixed_clock[0] += timedelta(seconds=31)
    assert (await health.run_once(app.state.iot))["eventsRecovered"] == 1
    assert [(a["kind"], a["battery"], a["name"]) for a in alarms] == [("lowBattery", 12.0, "aq-out")]
    assert await outbox_rows(app) == 0
    assert (await health.run_once(app.state.iot))["eventsRecovered"] == 0  # once only


async def test_offline_events_go_through_the_outbox(client: Any, app: Any, fixed_clock: Any) -> None:
    token = await device(client)
    assert (await client.post(f"/api/v1/{token}/telemetry", json={"pm25": 3})).status_code == 200
    await app.state.iot.events.drain()
    offline = recorder(app, "iot.device.offline")
    fixed_clock[0] += timedelta(hours=1)
    assert len((await health.run_once(app.state.iot))["offline"]) == 1
    assert [e["name"] for e in offline] == ["aq-out"]
    await health.run_once(app.state.iot)  # the next transaction deletes the published row
    assert await outbox_rows(app) == 0 and len(offline) == 1
