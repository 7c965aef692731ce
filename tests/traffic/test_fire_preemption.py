"""Fire engines' green wave on both backends: a fire incident (opened by the smoke-detector rule's alarm) is
dispatched; the nearest FireStation's route on the city's road network crosses a signal, which is asked for
the phase serving the route through the safety layer. One request per dispatch; other incidents, fire
incidents without a place, and tenants without stations request nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from auth_tokens import Auth
from cityos.core.events import Event
from cityos.traffic.emergency import REQUESTED, default_graph

T0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)
ENTITIES = "/ngsi-ld/v1/entities"


@pytest.fixture(scope="module")
def graph() -> Any:
    return default_graph()


@pytest.fixture
def requested(app: Any) -> Iterator[list[Event]]:
    seen: list[Event] = []

    async def keep(event: Event) -> None:
        seen.append(event)

    undo = app.state.bus.subscribe(REQUESTED, keep)
    yield seen
    undo()


def along(graph: Any, a: str, b: str, metres_before_b: float) -> list[float]:
    """[lon, lat] on the road from a to b, `metres_before_b` before b."""
    start, end = graph.nodes[a], graph.nodes[b]
    t = 1 - metres_before_b / graph[a][b]["length"]
    return [start["lon"] + t * (end["lon"] - start["lon"]), start["lat"] + t * (end["lat"] - start["lat"])]


def signal_j1_0() -> dict[str, Any]:
    """J1_0's plan: the cross street (phase 0) and the east-west through movement (phase 1)."""
    links = [{"in": "J1_1--J1_0_0", "out": "J1_0--road-ns-02-s_0"},
             {"in": "J0_0--J1_0_0", "out": "J1_0--J2_0_0"}, {"in": "J2_0--J1_0_0", "out": "J1_0--J0_0_0"}]
    return {"id": "J1_0", "name": "J1_0",
            "plan": {"phases": [{"state": "Grr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30},
                                {"state": "rGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30}],
                     "yellow": 3, "allRed": 2, "conflicts": [[0, 1], [0, 2]], "links": links}}


async def fire_incident(app: Any, client: httpx.AsyncClient, auth: Auth, alarm_id: str,
                        location: dict[str, Any] | None, category: str = "fire") -> str:
    """The smoke-detector rule's alarm (defaults.yaml `smoke-detected`) opens the fire incident."""
    await app.state.bus.publish("ops.alarm.raised", {"tenant": "", "alarm": {
        "id": alarm_id, "ruleId": "smoke-detected", "severity": "critical", "message": "烟感报警 Smoke alarm",
        "location": location, "department": "fire-rescue", "category": "security", "subCategory": "fire",
        "incident": {"category": category, "level": "large"}}})
    for _ in range(600):
        listed = (await client.get("/api/ops/incidents", headers=auth.headers("operator"))).json()["items"]
        found = [i["id"] for i in listed if i["category"] == category
                 and (i["location"] or {}) == (location or {})]
        if found:
            return str(found[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no incident opened: {listed}")


async def dispatch(client: httpx.AsyncClient, auth: Auth, incident: str, action: str = "dispatch") -> None:
    done = await client.post(f"/api/ops/incidents/{incident}/{action}", headers=auth.headers("sys_admin"), json={})
    assert done.status_code == 200, done.text


async def wait_for(seen: list[Event], count: int) -> None:
    for _ in range(600):
        if len(seen) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} pre-emption request(s), saw {len(seen)}")


async def test_a_dispatched_fire_incident_preempts_the_signal_on_the_engines_route(
        app: Any, client: httpx.AsyncClient, auth: Auth, graph: Any, moving_clock: list[dt.datetime],
        requested: list[Event]) -> None:
    admin = auth.headers("sys_admin")
    assert (await client.post("/api/traffic/signals", headers=admin, json=signal_j1_0())).status_code == 201
    moving_clock[0] = T0 + dt.timedelta(seconds=30)  # the cross street's minimum green is served
    for ident, place in (("near", along(graph, "J0_0", "J1_0", 100.0)), ("far", along(graph, "J7_5", "J8_5", 50))):
        made = await client.post(ENTITIES, headers=admin, json={
            "id": f"urn:ngsi-ld:FireStation:{ident}", "type": "FireStation",
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": place}}})
        assert made.status_code == 201, made.text
    fire_at = {"type": "Point", "coordinates": along(graph, "J1_0", "J2_0", 30.0)}
    incident = await fire_incident(app, client, auth, "smoke-detected:urn:ngsi-ld:Device:smoke-17", fire_at)
    await dispatch(client, auth, incident)
    await wait_for(requested, 1)
    request = requested[0].payload
    assert request["station"] == "urn:ngsi-ld:FireStation:near" and request["incident"] == incident
    assert request["route"]["nodes"] == ["J0_0", "J1_0", "J2_0"]
    (through,) = request["signals"]
    assert (through["signal"], through["phase"], through["outcome"]) == ("J1_0", 1, "applied")
    assert 9.0 <= through["eta"] <= 10.5  # 100 m at the 10 m/s approach floor
    commands = (await client.get("/api/traffic/signals/J1_0/commands", headers=admin)).json()
    assert [(c["source"], c["outcome"], c["phase"]) for c in commands] == [("preemption", "applied", 1)]

    # The same dispatch seen again (a replayed event, the crew accepting) asks for nothing more.
    view = (await client.get(f"/api/ops/incidents/{incident}", headers=admin)).json()
    await app.state.bus.publish("ops.incident.changed", {"tenant": "", "incident": view})
    await dispatch(client, auth, incident, "accept")
    assert len(requested) == 1
    assert len((await client.get("/api/traffic/signals/J1_0/commands", headers=admin)).json()) == 1


async def test_other_incidents_and_placeless_fires_request_nothing(
        app: Any, client: httpx.AsyncClient, auth: Auth, moving_clock: list[dt.datetime],
        requested: list[Event]) -> None:
    # No FireStation in the hub: a dispatched fire incident has no route and commands nothing.
    fire_at = {"type": "Point", "coordinates": [110.30, 20.00]}
    incident = await fire_incident(app, client, auth, "smoke-detected:urn:ngsi-ld:Device:smoke-1", fire_at)
    await dispatch(client, auth, incident)
    # A dispatched traffic incident is not a fire; a fire without a place cannot be routed.
    other = await fire_incident(app, client, auth, "traffic-accident:x#1", fire_at, category="traffic.accident")
    await dispatch(client, auth, other)
    placeless = await fire_incident(app, client, auth, "smoke-detected:urn:ngsi-ld:Device:smoke-2", None)
    await dispatch(client, auth, placeless)
    # A malformed incident view on the bus is ignored.
    await app.state.bus.publish("ops.incident.changed", {"tenant": "", "incident": {
        "id": "x", "status": "dispatched", "category": "fire", "location": {"type": "Point", "coordinates": ["a"]}}})
    await app.state.bus.publish("ops.incident.changed", {"tenant": "", "incident": "not a view"})
    assert requested == []
