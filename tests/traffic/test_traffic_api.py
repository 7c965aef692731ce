"""Traffic signal API on both backends: registration, safe phase commands through IoT RPC, decisions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from problem_details import problem

T0 = dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)
LINKS = [{"in": "n_in", "out": "s_out"}, {"in": "s_in", "out": "n_out"},
         {"in": "e_in", "out": "w_out"}, {"in": "w_in", "out": "e_out"}]


def signal(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "sig-1", "name": "Binhai Ave / Longkun Rd",
        "plan": {"phases": [{"state": "GGrr", "minGreen": 10, "maxGreen": 60, "pedestrianMin": 15, "fixedGreen": 30},
                            {"state": "rrGG", "minGreen": 8, "maxGreen": 60, "fixedGreen": 30}],
                 "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]], "links": LINKS}}
    body.update(overrides)
    return body


async def test_register_and_read(client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    created = await client.post("/api/traffic/signals", json=signal())
    assert created.status_code == 201, created.text
    assert created.json()["phase"] == 0 and created.json()["state"] == "GGrr"
    problem(await client.post("/api/traffic/signals", json=signal()), 409)
    listed = (await client.get("/api/traffic/signals")).json()
    assert [s["id"] for s in listed] == ["sig-1"]
    problem(await client.get("/api/traffic/signals/nope"), 404)
    problem(await client.post("/api/traffic/signals/nope/phase", json={"phase": 1}), 404)
    problem(await client.get("/api/traffic/signals/nope/commands"), 404)


@pytest.mark.parametrize("bad", [
    {"plan": {"phases": [{"state": "GGGr"}], "conflicts": [[0, 2]]}},             # conflicting greens
    {"plan": {"phases": [{"state": "GGrr", "minGreen": 20, "maxGreen": 10, "fixedGreen": 15}]}},
    {"plan": {"phases": [{"state": "GGrr", "pedestrianMin": 90, "maxGreen": 60, "fixedGreen": 30}]}},
    {"plan": {"phases": [{"state": "GyGr"}]}},                                      # yellow is not a phase
    {"plan": {"phases": [{"state": "rrrr"}]}},                                      # no green
    {"plan": {"phases": [{"state": "GGrr"}, {"state": "rrG"}]}},                    # widths differ
    {"plan": {"phases": [{"state": "GGrr"}], "yellow": 1}},
    {"plan": {"phases": []}},
    {"plan": {"phases": [{"state": "GGrr", "minGreen": "ten"}]}},                    # wrong type
    {"plan": {"phases": [{"state": "GGrr"}], "conflicts": [[0, 9]]}},
    {"id": "bad id; DROP TABLE"},
    {"controller": "magic"},
    {"unexpected": 1},
])
async def test_unsafe_or_malformed_plans_are_refused(client: httpx.AsyncClient, bad: dict[str, Any]) -> None:
    response = await client.post("/api/traffic/signals", json=signal(**bad))
    assert response.status_code in (400, 422), response.text
    assert {"type", "title", "detail"} <= set(response.json())
    assert (await client.get("/api/traffic/signals")).json() == []


async def test_malformed_json_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/traffic/signals", content=b"{not json",
                                 headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422)


async def test_phase_commands_follow_the_safety_rules(client: httpx.AsyncClient,
                                                      moving_clock: list[dt.datetime]) -> None:
    await client.post("/api/iot/devices", json={"name": "sig-1-cabinet", "profile": "traffic-signal"})
    assert (await client.post("/api/traffic/signals", json=signal(device="sig-1-cabinet"))).status_code == 201
    early = problem(await client.post("/api/traffic/signals/sig-1/phase", json={"phase": 1}), 409)
    assert "minimum green" in early["detail"]  # pedestrian clearance 15 s not served yet
    for bad in ({"phase": 2}, {"phase": -1}, {"phase": "1"}, {"phase": 1.5}, {"phase": True}, {}, {"phase": None}):
        response = await client.post("/api/traffic/signals/sig-1/phase", json=bad)
        assert response.status_code in (400, 422), (bad, response.text)
    moving_clock[0] = T0 + dt.timedelta(seconds=15)
    held = await client.post("/api/traffic/signals/sig-1/phase", json={"phase": 0})
    assert held.json()["outcome"] == "held"
    applied = await client.post("/api/traffic/signals/sig-1/phase", json={"phase": 1})
    assert applied.status_code == 200, applied.text
    change = applied.json()
    assert change["outcome"] == "applied"
    assert [s["state"] for s in change["sequence"]] == ["yyrr", "rrrr", "rrGG"]
    rpc = change["rpc"]
    assert rpc is not None and rpc["id"] and rpc["status"] in {"sent", "failed", "delivered"}
    stored = (await client.get(f"/api/iot/rpc/{rpc['id']}")).json()
    assert stored["method"] == "setPhase" and stored["params"]["phase"] == 1
    moving_clock[0] = T0 + dt.timedelta(seconds=16)
    shown = (await client.get("/api/traffic/signals/sig-1")).json()
    assert shown["stage"] == "yellow" and shown["state"] == "yyrr"
    moving_clock[0] = T0 + dt.timedelta(seconds=19)
    assert (await client.get("/api/traffic/signals/sig-1")).json()["state"] == "rrrr"
    moving_clock[0] = T0 + dt.timedelta(seconds=21)
    assert (await client.get("/api/traffic/signals/sig-1")).json()["state"] == "rrGG"
    problem(await client.post("/api/traffic/signals/sig-1/phase", json={"phase": 0}), 409)  # 8 s minimum
    commands = (await client.get("/api/traffic/signals/sig-1/commands")).json()
    outcomes = [c["outcome"] for c in commands]
    assert outcomes.count("applied") == 1 and outcomes.count("refused") >= 3


async def test_decide_from_detector_readings(client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    await client.post("/api/traffic/signals", json=signal())
    queue_east_west = {"e_in": {"vehicles": 12, "halting": 10, "speed": 0.5, "occupancy": 0.6, "waiting": 300},
                       "w_in": {"vehicles": 9, "halting": 9, "occupancy": 0.5, "waiting": 200},
                       "n_in": {"vehicles": 0}, "s_in": {"vehicles": 0}}
    advice = await client.post("/api/traffic/signals/sig-1/decide", json={"lanes": queue_east_west})
    assert advice.status_code == 200, advice.text
    assert advice.json()["requested"] == 1 and advice.json()["outcome"] == "advice"
    held = await client.post("/api/traffic/signals/sig-1/decide", json={"lanes": queue_east_west, "apply": True})
    assert held.json()["outcome"] == "held"  # minimum green first
    moving_clock[0] = T0 + dt.timedelta(seconds=20)
    applied = await client.post("/api/traffic/signals/sig-1/decide", json={"lanes": queue_east_west, "apply": True})
    assert applied.json()["outcome"] == "applied"
    assert (await client.get("/api/traffic/signals/sig-1")).json()["phase"] == 1


@pytest.mark.parametrize("lanes", [
    {"e_in": {"vehicles": -1}},
    {"e_in": {"vehicles": 2, "halting": 5}},
    {"e_in": {"speed": 500}},
    {"e_in": {"occupancy": 1.7}},
    {"e_in": {"length": 0}},
    {"e_in": {"vehicles": "many"}},
    {"e_in": {"vehicles": 1, "colour": "red"}},
    {"nowhere": {"vehicles": 1}},
])
async def test_impossible_detector_readings_are_refused(client: httpx.AsyncClient, lanes: dict[str, Any]) -> None:
    await client.post("/api/traffic/signals", json=signal())
    response = await client.post("/api/traffic/signals/sig-1/decide", json={"lanes": lanes})
    assert response.status_code in (400, 422), response.text
    assert {"type", "title", "detail"} <= set(response.json())
    assert (await client.get("/api/traffic/signals/sig-1")).json()["phase"] == 0


async def test_rights(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, app: Any) -> None:
    problem(await anon_client.post("/api/traffic/signals", json=signal()), 401)
    citizen = Auth(app).headers("citizen", username="c1")
    problem(await client.post("/api/traffic/signals", json=signal(), headers=citizen), 403)
    assert (await client.post("/api/traffic/signals", json=signal())).status_code == 201
    problem(await client.post("/api/traffic/signals/sig-1/phase", json={"phase": 1}, headers=citizen), 403)
    auditor = Auth(app).headers("auditor", username="a1")
    assert (await client.get("/api/traffic/signals/sig-1", headers=auditor)).status_code == 200
    problem(await client.post("/api/traffic/signals/sig-1/phase", json={"phase": 1}, headers=auditor), 403)
    assert (await client.get("/api/traffic/preemptions", headers=auditor)).json() == []
    problem(await client.get("/api/traffic/preemptions", headers=citizen), 403)
    problem(await anon_client.get("/api/traffic/preemptions"), 401)


async def test_emergency_preemption_greens_the_signals_ahead_through_the_safety_layer(
        client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    await client.post("/api/iot/devices", json={"name": "sig-1-cabinet", "profile": "traffic-signal"})
    assert (await client.post("/api/traffic/signals", json=signal(device="sig-1-cabinet"))).status_code == 201
    assert (await client.post("/api/traffic/signals", json=signal(id="sig-2"))).status_code == 201
    body = {"vehicle": "ambulance-7", "incident": "42", "speed": 12.0,
            "signals": [{"signal": "sig-1", "phase": 1, "distance": 120}, {"signal": "sig-2", "phase": 1,
                                                                              "distance": 900}]}
    first = (await client.post("/api/traffic/preemptions", json=body)).json()
    outcomes = {s["signal"]: s["outcome"] for s in first["signals"]}
    assert outcomes == {"sig-1": "waiting", "sig-2": "later"}  # 10 s away, but the pedestrian minimum holds
    assert "minimum green" in first["signals"][0]["detail"]
    moving_clock[0] = T0 + dt.timedelta(seconds=15)
    second = (await client.post("/api/traffic/preemptions", json=body)).json()
    applied = second["signals"][0]
    assert applied["outcome"] == "applied" and applied["rpc"]["id"]
    stored = (await client.get(f"/api/iot/rpc/{applied['rpc']['id']}")).json()
    assert stored["method"] == "setPhase" and stored["params"]["phase"] == 1
    assert (await client.get("/api/traffic/signals/sig-2")).json()["phase"] == 0  # too far: untouched
    commands = (await client.get("/api/traffic/signals/sig-1/commands")).json()
    assert [c["source"] for c in commands] == ["preemption", "preemption"]
    assert [c["outcome"] for c in commands] == ["applied", "refused"]
    held = (await client.post("/api/traffic/preemptions", json=body)).json()  # already green for it: held
    assert held["signals"][0]["outcome"] == "held"
    # The run is in progress (the cockpit draws it) until its reports stop for two minutes.
    runs = (await client.get("/api/traffic/preemptions")).json()
    assert [(r["vehicle"], r["incident"], [s["signal"] for s in r["signals"]]) for r in runs] == [
        ("ambulance-7", "42", ["sig-1", "sig-2"])]
    assert runs[0]["signals"][0]["outcome"] == "held"
    moving_clock[0] = T0 + dt.timedelta(seconds=15 + 121)
    assert (await client.get("/api/traffic/preemptions")).json() == []


@pytest.mark.parametrize("bad", [
    {"vehicle": "ev", "signals": []}, {"vehicle": "", "signals": [{"signal": "sig-1", "phase": 0, "distance": 1}]},
    {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": 0, "distance": -1}]},
    {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": "1", "distance": 1}]},
    {"vehicle": "ev", "speed": 500, "signals": [{"signal": "sig-1", "phase": 0, "distance": 1}]},
    {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": 0, "distance": 1}], "extra": True},
    {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": 0, "distance": 1, "flushPhase": -1}]},
    {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": 0, "distance": 1, "flushPhase": "1"}]},
    {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": 0, "distance": 1, "flushPhase": 99}]},
    {"vehicle": "ev", "stoppedFor": -5, "signals": [{"signal": "sig-1", "phase": 0, "distance": 1}]},
    {"vehicle": "ev", "stoppedFor": "long", "signals": [{"signal": "sig-1", "phase": 0, "distance": 1}]},
])
async def test_malformed_preemptions_are_refused(client: httpx.AsyncClient, bad: dict[str, Any]) -> None:
    response = await client.post("/api/traffic/preemptions", json=bad)
    assert response.status_code in (400, 422), response.text


async def test_a_vehicle_held_at_its_green_gets_the_approach_flushed_for_the_rest_of_its_run(
        client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    assert (await client.post("/api/traffic/signals", json=signal())).status_code == 201
    moving_clock[0] = T0 + dt.timedelta(seconds=20)  # the pedestrian minimum of phase 0 is served

    async def report(stopped_for: float) -> dict[str, Any]:
        body = {"vehicle": "fire-3", "speed": 0, "stoppedFor": stopped_for,
                "signals": [{"signal": "sig-1", "phase": 0, "flushPhase": 1, "distance": 15}]}
        answer = await client.post("/api/traffic/preemptions", json=body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["signals"][0])

    first = await report(4)  # standing 4 s at its green: just a queue discharging, the phase is held
    assert (first["outcome"], first["phase"], first.get("flushing")) == ("held", 0, None)
    flushed = await report(12)  # 12 s at its green: something its phase does not serve holds it up
    assert (flushed["outcome"], flushed["phase"], flushed["flushing"]) == ("applied", 1, True)
    assert (await client.get("/api/traffic/signals/sig-1")).json()["phase"] == 1
    moving_clock[0] = T0 + dt.timedelta(seconds=40)
    moving = await report(0)  # moving again: the run keeps the flush until it has passed
    assert (moving["outcome"], moving["phase"], moving["flushing"]) == ("held", 1, True)
    runs = (await client.get("/api/traffic/preemptions")).json()
    assert runs[0]["signals"][0]["flushing"] is True
    commands = (await client.get("/api/traffic/signals/sig-1/commands")).json()
    assert [c["source"] for c in commands] == ["preemption"] * len(commands)


async def test_preemption_of_unknown_or_impossible_phases(client: httpx.AsyncClient,
                                                          moving_clock: list[dt.datetime]) -> None:
    assert (await client.post("/api/traffic/signals", json=signal())).status_code == 201
    body = {"vehicle": "ev", "signals": [{"signal": "nope", "phase": 0, "distance": 10}]}
    problem(await client.post("/api/traffic/preemptions", json=body), 404)
    moving_clock[0] = T0 + dt.timedelta(seconds=20)
    body = {"vehicle": "ev", "signals": [{"signal": "sig-1", "phase": 5, "distance": 10}]}
    answer = (await client.post("/api/traffic/preemptions", json=body)).json()
    assert answer["signals"][0]["outcome"] == "refused"  # the plan has two phases
    assert (await client.get("/api/traffic/signals/sig-1")).json()["phase"] == 0
