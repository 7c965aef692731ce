"""Phase commands in batches (what the control loop sends each round), on both backends.

`TrafficService.command_phases` applies the same safety rules as one `command_phase` per signal and keeps
every outcome in place; `CommandSender.send_many` stores a batch of device RPCs, publishes them to the real
broker at CITYOS_TEST_MQTT_URL and marks them sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.iot.commands import CommandSender
from cityos.iot.models import DeviceIn, RpcIn
from cityos.security.policy import Principal
from cityos.traffic.service import one_by_one
from iot.mqtt_support import MQTT_URL, Publisher, needs_mqtt, new_prefix

T0 = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)
PLAN = {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10},
                   {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10}],
        "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]]}


async def register(client: Any, signal: str, device: str | None = None) -> None:
    body: dict[str, Any] = {"id": signal, "plan": PLAN, **({"device": device} if device else {})}
    made = await client.post("/api/traffic/signals", json=body)
    assert made.status_code == 201, made.text


async def test_a_batch_keeps_each_commands_outcome_in_place(client: Any, app: Any,
                                                            moving_clock: list[dt.datetime]) -> None:
    iot = app.state.iot
    assert not (await iot.provision_many([DeviceIn(name=f"{s}-cab", profile="traffic-signal")
                                          for s in ("served", "early", "same")])).errors
    for signal in ("served", "early", "same", "unwired"):
        await register(client, signal, None if signal == "unwired" else f"{signal}-cab")
    moving_clock[0] += dt.timedelta(seconds=4)
    sent: list[tuple[str, str, dict[str, Any]]] = []

    async def send(device: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if device == "same-cab":
            raise ResourceNotFound("the cabinet was removed")  # as the registry answers for a removed device
        sent.append((device, method, params))
        return {"id": 1000 + len(sent), "status": "sent"}

    # "early" has had 4 s of its 5 s minimum green: refused, and so is a phase the plan does not have.
    operator = Principal("op", kind="service", role="operator", tenant=iot.tenant)
    outcomes = await app.state.traffic.command_phases(operator, iot.tenant, [
        ("early", 1, "controller"), ("nowhere", 1, "controller"), ("served", 7, "controller")],
        one_by_one(send))
    assert isinstance(outcomes[0], Conflict) and isinstance(outcomes[1], ResourceNotFound)
    assert isinstance(outcomes[2], BadRequestData) and sent == []

    moving_clock[0] += dt.timedelta(seconds=2)  # every minimum green served
    outcomes = await app.state.traffic.command_phases(operator, iot.tenant, [
        ("served", 1, "controller"), ("same", 0, "controller"), ("unwired", 1, "fallback"),
        ("early", 1, "controller")], one_by_one(send))
    served, held, unwired, early = outcomes
    assert isinstance(served, dict) and served["outcome"] == "applied" and served["rpc"] == {"id": 1001,
                                                                                            "status": "sent"}
    assert [s["state"] for s in served["sequence"]] == ["yyrr", "rrrr", "rrGG"]
    assert isinstance(held, dict) and held["outcome"] == "held" and held["rpc"] is None  # phase 0 already
    assert isinstance(unwired, dict) and unwired["outcome"] == "applied" and unwired["rpc"] is None
    assert isinstance(early, dict) and early["rpc"] == {"id": 1002, "status": "sent"}
    assert [(device, params["phase"]) for device, _, params in sent] == [("served-cab", 1), ("early-cab", 1)]

    async def history(signal: str) -> list[tuple[str, int | None, str, int | None]]:
        rows = (await client.get(f"/api/traffic/signals/{signal}/commands")).json()
        return [(c["outcome"], c["phase"], c["source"], c["rpcId"]) for c in reversed(rows)]

    assert await history("served") == [("refused", 7, "controller", None), ("applied", 1, "controller", 1001)]
    assert await history("early") == [("refused", 1, "controller", None), ("applied", 1, "controller", 1002)]
    assert await history("same") == [("held", 0, "controller", None)]
    assert await history("unwired") == [("applied", 1, "fallback", None)]
    shown = {s: (await client.get(f"/api/traffic/signals/{s}")).json() for s in ("served", "same", "unwired")}
    assert shown["served"]["phase"] == 1 and shown["served"]["fallback"] is False
    assert shown["unwired"]["phase"] == 1 and shown["unwired"]["fallback"] is True
    assert shown["same"]["phase"] == 0

    # A device the registry no longer has: that command is not applied, the others of the batch are.
    moving_clock[0] += dt.timedelta(seconds=11)  # the greens started at 6 + 5 s have served their minimum
    outcomes = await app.state.traffic.command_phases(operator, iot.tenant, [
        ("same", 1, "controller"), ("unwired", 0, "controller")], one_by_one(send))
    assert isinstance(outcomes[0], ResourceNotFound) and isinstance(outcomes[1], dict)
    assert await history("same") == [("held", 0, "controller", None)]  # nothing recorded, lamps unchanged
    assert (await client.get("/api/traffic/signals/same")).json()["phase"] == 0
    assert (await client.get("/api/traffic/signals/unwired")).json()["phase"] == 0


@needs_mqtt
async def test_send_many_stores_publishes_and_marks_a_batch(app: Any) -> None:
    iot = app.state.iot
    names = ["batch-cab-a", "batch-cab-b"]
    assert not (await iot.provision_many([DeviceIn(name=n, profile="traffic-signal") for n in names])).errors
    topics = new_prefix()
    device = Publisher()
    received: list[str] = []
    got = threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        received.append(message.topic)
        if len(received) == 2:
            got.set()

    device.client.on_message = on_message
    device.client.subscribe(f"{topics}/+/rpc/request/+", qos=1)
    assert MQTT_URL is not None
    sender = CommandSender(iot, MQTT_URL, prefix=topics)
    try:
        await asyncio.sleep(0.3)  # the subscription is in place
        out = await sender.send_many([(names[0], RpcIn(method="setPhase", params={"phase": 1})),
                                      ("no-such-cabinet", RpcIn(method="setPhase", params={"phase": 1})),
                                      (names[1], RpcIn(method="reboot", params={}, oneway=True))])
        first, missing, second = out
        assert isinstance(missing, ResourceNotFound)
        assert isinstance(first, dict) and first["status"] == "sent"
        assert isinstance(second, dict) and second["status"] == "delivered"  # one-way: no answer will come
        assert await iot.rpc_statuses([first["id"], second["id"]]) == {first["id"]: "sent",
                                                                       second["id"]: "delivered"}
        assert await asyncio.to_thread(got.wait, 10)
        assert sorted(received) == sorted([f"{topics}/{names[0]}/rpc/request/{first['id']}",
                                           f"{topics}/{names[1]}/rpc/request/{second['id']}"])
    finally:
        device.close()
        await sender.close()

    unconfigured = CommandSender(iot, None, prefix=topics)
    (failed,) = await unconfigured.send_many([(names[0], RpcIn(method="setPhase", params={"phase": 0}))])
    assert isinstance(failed, dict) and failed["status"] == "failed"
    assert (await iot.get_rpc(failed["id"]))["error"] == "MQTT is not configured (CITYOS_MQTT_URL)"

