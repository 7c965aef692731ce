"""The RESCO real-city networks' signal plans register whole on both backends: every signal of Ingolstadt 21 and
Cologne 8 with its stop-line and advance detectors and every device of the field, the lanes' own detectors
included (device names derived from any SUMO lane id), a signal link that drives no lane (`null`), and a traffic
light whose SUMO id is no signal id (mapped to one). Bad links, and links that are not one per signal index, are
refused with nothing stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import httpx
import pytest

from cityos.security.policy import Principal
from cityos.traffic.models import DETECTOR_NAME, SIGNAL_ID
from cityos.traffic.naming import device_name, lane_detector, signal_id
from cityos.traffic.service import movements_of, plan_from_doc
from problem_details import problem

T0 = dt.datetime(2026, 3, 5, 8, 0, tzinfo=dt.UTC)

# Five signal links; link 4 drives no lane (its lamp exists, as on RESCO Ingolstadt 21's
# cluster_1427494838_273472399, but no connection runs under it).
LINKS: list[dict[str, Any] | None] = [
    {"in": "n2c_0", "out": "c2s_0"}, {"in": "s2c_0", "out": "c2n_0"},
    {"in": "e2c_0", "out": "c2w_0"}, {"in": "w2c_0", "out": "c2e_0"}, None]


def plan(links: Any = None, **more: Any) -> dict[str, Any]:
    return {"phases": [{"state": "GGrrG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30},
                       {"state": "rrGGr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 30}],
            "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]],
            "links": LINKS if links is None else links, **more}


def operator() -> Principal:
    return Principal("test-resco", kind="service", role="operator", tenant="")


# ---------------------------------------------------------------------- names


@pytest.mark.parametrize("lane", ["n2c_0", "j0_e_in_0", "243641585_1", "city-j3.2_0"])
def test_a_lane_id_that_makes_a_device_name_keeps_it(lane: str) -> None:
    assert device_name(lane, "-advance") == f"{lane}-advance"
    assert signal_id("cluster_1:2") == "cluster_1:2"


@pytest.mark.parametrize("source", [
    "-201201945#0.78_1", "170018165#0_1", "#1_0", "---", "straße_0", "a b_0", "x" * 70, "cluster_" + "9" * 158])
def test_any_sumo_id_gives_a_valid_deterministic_device_name_and_signal_id(source: str) -> None:
    for suffix in ("", "-advance", "-stopline", "-zone", "-cabinet"):
        name = device_name(source, suffix)
        assert DETECTOR_NAME.match(name) and name.endswith(suffix), name
        assert name == device_name(source, suffix)
    assert SIGNAL_ID.match(signal_id(source)) and signal_id(source) == signal_id(source)


def test_ids_differing_only_where_a_name_cannot_show_it_get_different_names() -> None:
    # `-E_0` is E_0's reverse edge; `#`, ` ` and `_` sanitise alike; long ids alike up to the cut.
    alike = ["E_0", "-E_0", "--E_0", "a#b_0", "a b_0", "a_b_0", "x" * 60 + "_0", "x" * 60 + "_1"]
    assert len({device_name(lane, "-stopline") for lane in alike}) == len(alike)
    assert len({signal_id("c" * 130 + str(i)) for i in range(50)}) == 50


@pytest.mark.parametrize("lane", ["n2c_0", "j0_e_in_0", "243641585_1", "city-j3.2_0", "-201201945#0.78_1"])
def test_a_lanes_own_detector_is_the_lane_id_where_that_is_a_device_name(lane: str) -> None:
    device = lane_detector(lane)
    assert DETECTOR_NAME.match(device) and device == device_name(lane)
    assert (device == lane) == bool(DETECTOR_NAME.match(lane))


def test_a_sanitised_name_stays_readable() -> None:
    name = device_name("-201201945#0.78_1", "-advance")
    assert re.fullmatch(r"201201945_0\.78_1-[0-9a-f]{10}-advance", name), name


# ---------------------------------------------------------------------- null links


async def test_a_link_that_drives_no_lane_is_stored_as_null_and_used_by_no_movement(
        app: Any, client: httpx.AsyncClient, moving_clock: list[dt.datetime]) -> None:
    advance = [{"lane": "w2c_0", "detector": "w2c_0-advance", "distance": 250}]
    made = await client.post("/api/traffic/signals", json={"id": "unused", "plan": plan(advance=advance)})
    assert made.status_code == 201, made.text
    signal = (await client.get("/api/traffic/signals/unused")).json()
    assert signal["plan"]["links"] == LINKS and signal["state"] == "GGrrG"  # the lamp is in the state string
    stored = signal["plan"]
    for every_connection in (False, True):
        moves = movements_of(stored, plan_from_doc(stored), every_connection)
        assert [[m.link for m in phase] for phase in moves] == [[0, 1], [2, 3]]
    assert [[m.link for m in phase] for phase in (await app.state.traffic.movements(operator(), ""))["unused"]] \
        == [[0, 1], [2, 3]]
    # The safety layer changes the whole state, the unused lamp included.
    moving_clock[0] = T0 + dt.timedelta(seconds=6)
    assert (await client.post("/api/traffic/signals/unused/phase", json={"phase": 1})).status_code == 200
    assert (await client.get("/api/traffic/signals/unused")).json()["state"] == "yyrry"
    # A controller decides from the lanes of the links that drive one.
    decided = await client.post("/api/traffic/signals/unused/decide", json={"lanes": {"n2c_0": {"vehicles": 3}}})
    assert decided.status_code == 200, decided.text


@pytest.mark.parametrize("bad", [
    {"unused": True},         # not a link: null is
    {},                       # no lanes
    {"in": "", "out": ""},    # empty lanes (what the SUMO plans wrote before)
    "unused",                 # not an object
    0, False, [],
])
async def test_a_malformed_link_is_refused_and_nothing_is_stored(client: httpx.AsyncClient, bad: Any) -> None:
    body = problem(await client.post("/api/traffic/signals", json={"id": "bad", "plan": plan([*LINKS[:4], bad])}), 400)
    assert "links.4" in body["detail"], body
    assert (await client.get("/api/traffic/signals")).json() == []


async def test_a_plan_whose_every_link_is_null_is_refused(client: httpx.AsyncClient) -> None:
    body = problem(await client.post("/api/traffic/signals", json={"id": "bad", "plan": plan([None] * 5)}), 400)
    assert "every link is null" in body["detail"], body
    assert (await client.get("/api/traffic/signals")).json() == []


@pytest.mark.parametrize(("links", "given"), [(LINKS[:4], 4), ([*LINKS, {"in": "x2c_0", "out": "c2x_0"}], 6),
                                              ([], 0), ([LINKS[0]], 1)])
async def test_links_that_are_not_one_per_signal_index_are_refused_and_nothing_is_stored(
        client: httpx.AsyncClient, links: list[Any], given: int) -> None:
    body = problem(await client.post("/api/traffic/signals", json={"id": "bad", "plan": plan(links)}), 400)
    assert body["type"].endswith("/BadRequestData"), body
    assert f"links: {given} given, but the phases' states have 5 signal indices" in body["detail"], body
    assert (await client.get("/api/traffic/signals")).json() == []


@pytest.mark.parametrize("absent", [{}, {"links": None}])
async def test_a_plan_without_links_is_accepted_and_has_no_movements(
        client: httpx.AsyncClient, absent: dict[str, Any]) -> None:
    doc = {k: v for k, v in plan().items() if k != "links"} | absent
    made = await client.post("/api/traffic/signals", json={"id": "bare", "plan": doc})
    assert made.status_code == 201, made.text
    stored = (await client.get("/api/traffic/signals/bare")).json()["plan"]
    assert stored["links"] is None
    assert movements_of(stored, plan_from_doc(stored)) == ((), ())


async def test_links_one_per_signal_index_are_accepted(client: httpx.AsyncClient) -> None:
    made = await client.post("/api/traffic/signals", json={"id": "whole", "plan": plan()})
    assert made.status_code == 201, made.text
    assert (await client.get("/api/traffic/signals/whole")).json()["plan"]["links"] == LINKS
    assert [s["id"] for s in (await client.get("/api/traffic/signals")).json()] == ["whole"]


async def test_a_detector_cannot_watch_a_null_link(client: httpx.AsyncClient) -> None:
    links = [None, *LINKS[1:4], {"in": "x2c_0", "out": "c2x_0"}]
    advance = [{"lane": "n2c_0", "detector": "n2c_0-advance", "distance": 250}]  # link 0's lane, now null
    body = problem(await client.post("/api/traffic/signals", json={"id": "bad", "plan": plan(links, advance=advance)}),
                   400)
    assert "not an incoming lane" in body["detail"], body
    assert (await client.get("/api/traffic/signals")).json() == []


# ---------------------------------------------------------------------- RESCO real-city networks


@pytest.mark.parametrize(("network", "signals", "lanes", "renamed"),
                         [("ingolstadt21", 21, 247, 218), ("cologne8", 8, 60, 56)])
async def test_every_resco_signal_plan_registers_with_its_detectors(
        client: httpx.AsyncClient, network: str, signals: int, lanes: int, renamed: int) -> None:
    pytest.importorskip("libsumo")
    from cityos.sim.sumo_field import detector_devices, detector_lanes, plan_doc, read_sites, zone_loops, zones_of
    from cityos.traffic.sumo import resco_scenario

    sites = await asyncio.to_thread(read_sites, resco_scenario(network, 600).net)
    assert len(sites) == signals
    # Most lanes' ids make no device name: their own detectors get derived ones, the others keep the lane id.
    lane_ids = detector_lanes(sites)
    assert len(lane_ids) == lanes and sum(lane_detector(lane) != lane for lane in lane_ids) == renamed
    assert detector_devices(sites)[:lanes] == tuple(map(lane_detector, lane_ids))
    # Every device of the field: one name each, all taken by the IoT registry.
    profiles = {**dict.fromkeys(detector_devices(sites), "traffic-flow"),
                **dict.fromkeys(zones_of(sites), "traffic-zone"),
                **{site.cabinet: "traffic-signal" for site in sites.values()}}
    assert len(profiles) == lanes + len(zone_loops(sites)) + len(zones_of(sites)) + signals  # no name taken twice
    provisioned = await client.post("/api/iot/devices/bulk", json=[
        {"name": name, "profile": profile, "department": "transport"} for name, profile in profiles.items()])
    assert provisioned.status_code == 201, provisioned.text[:500]

    for site in sites.values():
        doc = plan_doc(site)
        made = await client.post("/api/traffic/signals", json={
            "id": site.signal, "name": site.tls, "device": site.cabinet, "controller": "cityos", "plan": doc})
        assert made.status_code == 201, (site.tls, made.text)
        stored = (await client.get(f"/api/traffic/signals/{site.signal}")).json()
        assert {k: stored["plan"].get(k) for k in ("links", "advance", "stopline")} == {
            k: doc.get(k) for k in ("links", "advance", "stopline")}
        assert stored["name"] == site.tls

    listed = (await client.get("/api/traffic/signals", params={"limit": 100})).json()
    assert len(listed) == signals
    zones = sum(len(s["plan"]["advance"] or []) + len(s["plan"]["stopline"] or []) for s in listed)
    assert zones == len(zone_loops(sites))
    if network == "ingolstadt21":
        unused = [s["plan"]["links"][:2] for s in listed if s["name"] == "cluster_1427494838_273472399"]
        assert unused == [[None, None]]
        (long_one,) = [s for s in listed if len(s["name"]) > 128]
        assert len(long_one["name"]) == 166 and SIGNAL_ID.match(long_one["id"])
