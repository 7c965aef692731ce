"""A signal link controlling several lane-to-lane connections (`links[i].also`), on both backends: stored as sent,
found by the platform's route matching and pre-emption through any of them (the dispatch route → signals of a fire
engine, the clear-ahead lead's detectors), while the controllers still weigh each link's first connection; bad
connections are refused with nothing stored."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from cityos.security.policy import Principal
from cityos.traffic.models import MAX_LINK_CONNECTIONS
from cityos.traffic.preemption import (
    CLEAR_MARGIN_S,
    LEAD_S,
    SATURATION_HEADWAY_S,
    STARTUP_LOST_S,
    phase_serving,
    route_signals,
)
from cityos.traffic.service import movements_of, plan_from_doc
from detector_readings import write_reading
from problem_details import problem

T0 = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)
CLEARANCE_S = 3 + 2  # yellow + all-red
# A four-arm junction (SUMO lane ids: <edge>_<index>), north-south green in phase 0, east-west in phase 1. The north
# lane's signal head also serves its right turn; the west arm's signal head also serves its second lane, which turns
# right into the south road: a route west → south crosses the junction only through link 3's second connection.
LINKS: list[dict[str, Any]] = [
    {"in": "n2c_0", "out": "c2s_0", "also": [{"in": "n2c_0", "out": "c2w_0"}]},
    {"in": "s2c_0", "out": "c2n_0"},
    {"in": "e2c_0", "out": "c2w_0"},
    {"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_1", "out": "c2s_0"}]}]


def plan(links: list[dict[str, Any]] | None = None, **more: Any) -> dict[str, Any]:
    return {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30},
                       {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30}],
            "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]],
            "links": LINKS if links is None else links, **more}


def operator() -> Principal:
    return Principal("test-routes", kind="service", role="operator", tenant="")


async def test_a_signal_reached_only_through_a_links_second_connection_is_found_and_preempted(
        app: Any, client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    # An advance detector on the west arm's second lane: an incoming lane of the plan only through `also`.
    advance = [{"lane": "w2c_1", "detector": "w2c_1-advance", "distance": 250}]
    made = await client.post("/api/traffic/signals", json={"id": "multi", "controller": "fixed",
                                                           "plan": plan(advance=advance)})
    assert made.status_code == 201, made.text
    stored = (await client.get("/api/traffic/signals/multi")).json()["plan"]
    assert stored["links"] == LINKS  # a link of one connection stays {"in", "out"}, as plans always were

    # The platform's route → signals (what a dispatched fire engine's route is matched with) finds it.
    movements = await app.state.traffic.movements(operator(), "")
    (found,) = route_signals(["w2c", "c2s"], {"w2c": 300.0, "c2s": 100.0}, movements)
    assert (found.tls, found.phase, found.lanes) == ("multi", 1, ("w2c_1",))
    assert [s.phase for s in route_signals(["n2c", "c2w"], {}, movements)] == [0]
    # The controllers' view is each link's first connection, as the simulator's controllers see it.
    assert phase_serving(movements_of(stored, plan_from_doc(stored)), "w2c", "c2s") is None

    # Pre-emption times the signal by the queue on that lane (10 vehicles): read through the second connection.
    moving_clock[0] = now = T0 + dt.timedelta(seconds=40)
    await write_reading(client, "w2c_1", now, 50.0)
    lead = CLEARANCE_S + STARTUP_LOST_S + 10 * SATURATION_HEADWAY_S + CLEAR_MARGIN_S
    answer = await client.post("/api/traffic/preemptions", json={
        "vehicle": "engine-1", "speed": 10, "signals": [{"signal": found.tls, "phase": found.phase,
                                                         "distance": 10 * (lead - 1)}]})
    assert answer.status_code == 200, answer.text
    (entry,) = answer.json()["signals"]
    assert (entry["leadBasis"], entry["outcome"]) == ("clear-ahead", "applied"), entry
    assert entry["lead"] == pytest.approx(lead) and entry["eta"] > LEAD_S
    assert (await client.get("/api/traffic/signals/multi")).json()["phase"] == 1


async def test_on_ingolstadt21_the_platform_finds_a_signal_through_a_links_third_connection(
        app: Any, client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    # RESCO Ingolstadt 21: signal 243641585's link 3 carries four connections, its first into another road than a
    # route -201201945#0.78 → -174800513 takes (the simulator's pre-emption finds it through every connection).
    pytest.importorskip("libsumo")
    from cityos.sim.sumo_field import plan_doc, read_sites
    from cityos.traffic.sumo import resco_scenario

    sites = await asyncio.to_thread(read_sites, resco_scenario("ingolstadt21", 600).net)
    doc = plan_doc(sites["243641585"])
    assert [len(link.get("also", ())) for link in doc["links"]] == [3, 0, 0, 3]
    # Its zone detectors watch lanes like `-201201945#0.78_1`, under device names derived from them.
    assert "-201201945#0.78_1" in {d["lane"] for d in doc["stopline"]} and "advance" not in doc  # lanes < 250 m
    made = await client.post("/api/traffic/signals", json={"id": "243641585", "controller": "fixed", "plan": doc})
    assert made.status_code == 201, made.text
    stored = (await client.get("/api/traffic/signals/243641585")).json()["plan"]
    assert (stored["links"], stored["stopline"]) == (doc["links"], doc["stopline"])

    edges = ["-201201945#0.78", "-174800513"]
    movements = await app.state.traffic.movements(operator(), "")
    assert [(s.tls, s.phase) for s in route_signals(edges, {}, movements)][:1] == [("243641585", 0)]
    assert phase_serving(movements_of(stored, plan_from_doc(stored)), *edges) is None  # the first connections only

    # Another phase shown: the route's pre-emption brings phase 0 back, through the safety layer.
    first_min = plan_from_doc(stored).phases[0].earliest_end
    moving_clock[0] = T0 + dt.timedelta(seconds=first_min + 1)
    assert (await client.post("/api/traffic/signals/243641585/phase", json={"phase": 1})).status_code == 200
    moving_clock[0] += dt.timedelta(seconds=CLEARANCE_S + plan_from_doc(stored).phases[1].earliest_end + 1)
    answer = await client.post("/api/traffic/preemptions", json={
        "vehicle": "engine-2", "speed": 10, "signals": [{"signal": "243641585", "phase": 0, "distance": 100}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["signals"][0]["outcome"] == "applied"


def with_link(link: dict[str, Any]) -> list[dict[str, Any]]:
    return [*LINKS[:3], link]


@pytest.mark.parametrize("links", [
    with_link({"in": "w2c_0", "out": "c2e_0", "also": "w2c_1"}),                           # not a list
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [["w2c_1", "c2s_0"]]}),               # not a connection
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": 7, "out": "c2s_0"}]}),         # a lane not a string
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_1"}]}),                  # no outgoing lane
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "", "out": "c2s_0"}]}),       # an empty lane
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_1", "out": "x" * 129}]}),  # a lane too long
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_1", "out": "c2s_0", "via": ":c_0"}]}),
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_1", "out": f"c2s_{i}"}
                                                       for i in range(MAX_LINK_CONNECTIONS)]}),  # too many
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_0", "out": "c2e_0"}]}),  # its first again
    with_link({"in": "w2c_0", "out": "c2e_0", "also": [{"in": "w2c_1", "out": "c2s_0"},
                                                       {"in": "w2c_1", "out": "c2s_0"}]}),  # listed twice
])
async def test_malformed_connections_are_refused_and_nothing_is_stored(client: httpx.AsyncClient,
                                                                       links: list[dict[str, Any]]) -> None:
    body = problem(await client.post("/api/traffic/signals", json={"id": "bad", "plan": plan(links)}), 400)
    assert "links.3" in body["detail"], body
    assert (await client.get("/api/traffic/signals")).json() == []


async def test_a_link_may_list_as_many_connections_as_a_plan_takes(client: httpx.AsyncClient) -> None:
    also = [{"in": "w2c_1", "out": f"c2s_{i}"} for i in range(MAX_LINK_CONNECTIONS - 1)]
    made = await client.post("/api/traffic/signals", json={"id": "wide", "plan": plan(with_link(
        {"in": "w2c_0", "out": "c2e_0", "also": also}))})
    assert made.status_code == 201, made.text
    assert made.json()["plan"]["links"][3]["also"] == also
