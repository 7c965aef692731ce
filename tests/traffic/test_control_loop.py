"""The closed signal control loop through the platform, with SUMO as the field, on both backends.

The test process plays the street with `cityos.sim.sumo_field` (what `cityos demo --traffic sumo` runs for
the whole city): a four-arm junction in libsumo, paced to the wall clock. Its lane detectors are IoT
`traffic-flow` devices behind a gateway that publishes their readings over MQTT (the real broker at
CITYOS_TEST_MQTT_URL) to the app's ingest worker, which writes them to the hub; its signal cabinet is an
IoT `traffic-signal` device that takes `setPhase` RPC requests from the broker, shows the yellow,
all-red and green of each in SUMO, and acknowledges. The platform's `ControlLoop` reads the detectors
from the hub, runs the `cityos` controller through the safety supervisor, and commands phases as RPC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from cityos.core import clock
from cityos.iot.commands import CommandSender
from cityos.iot.models import DeviceIn, RpcIn, device_id
from cityos.sim.sumo_demo import FieldThread
from cityos.sim.sumo_field import SumoField, detector_devices, plan_doc, read_sites
from cityos.traffic.api import command_batch_sender
from cityos.traffic.control_loop import (
    ControlLoop,
    DetectorReading,
    approach_readings,
    control_interval,
    detector_entity,
    detector_reading,
    stale_seconds,
)
from cityos.traffic.controllers.adaptive import CityOSAdaptive
from cityos.traffic.service import one_by_one
from cityos.traffic.signals import ApproachReading, LaneReading, View
from detector_readings import LANES, STOPLINE, TWO_PHASES, reading_attrs, write_reading
from iot.mqtt_support import MQTT_URL, needs_mqtt, new_prefix, start_worker, stop_worker, wait_for

try:
    import libsumo
except ImportError:  # the SUMO test is skipped without it
    libsumo = None


TLS = "j0"
FIXED_GREEN_S = 5.0
MAX_GREEN_S = 10.0
MIN_GREEN_S = 3.0
LATENCY_SLACK_S = 3.0  # how late a decision may reach the lamps on a loaded machine and still count as "at once"
CABINET = "junction-c-cabinet"
GATEWAY = "junction-c-detectors"


@pytest.fixture(scope="module")
def junction(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signalised four-arm junction (`j0`) of 100 m single-lane roads; traffic only east-west."""
    from cityos.traffic.sumo import separate_junctions

    return separate_junctions(tmp_path_factory.mktemp("junction"), 1, period_ew=2.5)


def greens(shown: list[tuple[float, str]], state: str, since: float, until: float) -> list[float]:
    """How long each green `state` showed, for the greens that started and ended in [since, until]."""
    out = []
    for (start, current), (end, _) in itertools.pairwise(shown):
        if current == state and since <= start and end <= until:
            out.append(end - start)
    return out


@needs_mqtt
@pytest.mark.skipif(libsumo is None, reason="libsumo is not installed")
async def test_closed_loop_through_mqtt_with_sumo_as_the_field(client: Any, app: Any,
                                                               junction: tuple[Path, Path]) -> None:
    net, routes = junction
    site = read_sites(net, cabinet_of=lambda _tls: CABINET, signal_of=lambda _tls: "junction-c")["junction-c"]
    north_south, east_west = site.plan.phases[0].state, site.plan.phases[1].state
    assert set(site.in_lanes) == {"j0_n_in_0", "j0_s_in_0", "j0_e_in_0", "j0_w_in_0"}
    assert site.advance == () and "advance" not in plan_doc(site)  # 100 m lanes: no advance detectors
    # A stop-line detector over the last 60 m of each incoming lane, a device of its own.
    assert {(z.lane, z.device, z.distance) for z in site.stopline} == {
        (lane, f"{lane}-stopline", 60.0) for lane in site.in_lanes}
    assert {d["detector"] for d in plan_doc(site)["stopline"]} == {z.device for z in site.stopline}

    result = await app.state.iot.provision_many(
        [DeviceIn(name=GATEWAY, profile="traffic-flow", gateway=True)] +
        [DeviceIn(name=name, profile="traffic-flow", gatewayName=GATEWAY)
         for name in detector_devices({"junction-c": site})] +
        [DeviceIn(name=CABINET, profile="traffic-signal")])
    assert not result.errors
    made = await client.post("/api/traffic/signals", json={
        "id": "junction-c", "device": CABINET, "controller": "cityos",
        "plan": plan_doc(site, min_green=MIN_GREEN_S, max_green=MAX_GREEN_S, fixed_green=FIXED_GREEN_S,
                         yellow=2, all_red=1)})
    assert made.status_code == 201, made.text
    assert made.json()["state"] == north_south
    registered = time.monotonic()

    topics = new_prefix()
    worker = await start_worker(app, topics)
    assert MQTT_URL is not None
    commands = CommandSender(app.state.iot, MQTT_URL, prefix=topics)
    street = SumoField(net, routes, {"junction-c": site}, MQTT_URL, topics, GATEWAY, report_every=1.0)
    running = FieldThread(street, {"junction-c": north_south})
    await running.start()
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant,
                       lambda: command_batch_sender(commands), app.state.iot.rpc_statuses, interval=0.5,
                       stale_after=2.0, answers=app.state.iot.answer_signal)
    try:
        async def fed() -> bool:  # every approach's detector has a reading in the hub
            found = await app.state.hub.service.retrieve_many(
                app.state.iot.tenant, [detector_entity(lane) for lane in site.in_lanes])
            return len(found) == 4 and all(detector_reading(r.attrs) is not None for r in found.values())

        assert await wait_for(fed, 10)
        begin = time.monotonic()
        loop.start()
        await asyncio.sleep(26)  # demand east-west only: two east-west greens and north-south's minimum between
        adaptive_end = time.monotonic()
        street.feeding = False   # the detectors fall silent

        async def in_fallback() -> bool:
            return bool((await client.get("/api/traffic/signals/junction-c")).json()["fallback"])

        assert await wait_for(in_fallback, 5)
        fallback_from = time.monotonic()
        await asyncio.sleep(24)  # a fixed-time cycle is 16 s: two whole greens fit
        end = time.monotonic()
    finally:
        await loop.stop()
        await running.stop()
        await commands.close()
        await stop_worker(worker)

    # Demand decided: east-west got green as soon as north-south's minimum green was served, and kept it
    # beyond the fixed-time green while its queue lasted; empty north-south got only its minimum.
    shown = street.shown[TLS]
    first_ew = next(at for at, state in shown if state == east_west)
    timeline = [(round(at - begin, 1), state) for at, state in shown]
    served = max(begin, registered + MIN_GREEN_S)  # north-south's minimum green, from its registration
    # Decided at once: yellow and all-red, then green; LATENCY_SLACK_S allows for a loaded CI machine (the
    # loop, the RPC round trip and SUMO's stepping share its two cores with the rest of the suite).
    assert first_ew - served < 2 + 1 + LATENCY_SLACK_S, timeline[:4]
    adaptive_ew = greens(shown, east_west, begin, adaptive_end)
    adaptive_ns = greens(shown, north_south, first_ew, adaptive_end)
    assert adaptive_ew and max(adaptive_ew) > FIXED_GREEN_S + 2, (adaptive_ew, timeline)
    assert adaptive_ns and max(adaptive_ns) < MIN_GREEN_S + LATENCY_SLACK_S, (adaptive_ns, timeline)
    assert max(adaptive_ns) < max(adaptive_ew) - 2, (adaptive_ns, adaptive_ew)

    # Without readings the fixed-time plan ran: each green for its fixed 5 s whatever the queue.
    fixed_ew = greens(shown, east_west, fallback_from, end)
    fixed_ns = greens(shown, north_south, fallback_from, end)
    assert fixed_ew and fixed_ns, (round(fallback_from - begin, 1), timeline[6:])
    assert all(FIXED_GREEN_S - 0.5 <= g <= FIXED_GREEN_S + LATENCY_SLACK_S for g in fixed_ew + fixed_ns), \
        (fixed_ew, fixed_ns)

    # Every phase command went to the cabinet as RPC and was acknowledged; the time is kept with it.
    history = (await client.get("/api/traffic/signals/junction-c/commands?limit=1000")).json()
    applied = [c for c in history if c["outcome"] == "applied"]
    assert len(applied) >= 5 and loop.stats.commands == len(applied)
    assert {c["source"] for c in applied} == {"controller", "fallback"}
    assert all(c["rpcStatus"] == "succeeded" and c["ackedMs"] is not None and c["ackedMs"] < 5000
               for c in applied), applied
    assert sorted(c["rpcId"] for c in applied) == sorted(street.acknowledged) == sorted(street.requests)
    assert not street.rejected
    assert loop.stats.acknowledged == len(applied) and loop.stats.unacknowledged == 0
    sources = [c["source"] for c in reversed(history) if c["outcome"] == "applied"]  # oldest first
    assert sources[-1] == "fallback" and "controller" in sources[:2], sources
    # The controller decided on the stop-line detectors, which reported the queue they saw.
    assert loop.stats.stopline_used > 0
    stop_lines = await app.state.hub.service.retrieve_many(
        app.state.iot.tenant, [detector_entity(z.device) for z in site.stopline])
    assert len(stop_lines) == 4 and all(any(k.endswith("queueLength") for k in r.attrs) for r in stop_lines.values())


def test_detector_readings_become_lane_readings() -> None:
    found = detector_reading(reading_attrs(occupancy=(40.0, "P1"), averageVehicleSpeed=(3.6, "KMH"),
                                           intensity=(4, "E27")))
    assert isinstance(found, DetectorReading)
    assert found.reading.vehicles == pytest.approx(8.0) and found.reading.halting == pytest.approx(8.0)
    assert found.reading.mean_speed == pytest.approx(1.0) and found.intensity == 4
    moving = detector_reading(reading_attrs(occupancy=(0.1, ""), averageVehicleSpeed=(40.0, "KMH")))
    assert moving is not None and moving.reading.halting == 0 and moving.reading.occupancy == pytest.approx(0.1)


@pytest.mark.parametrize("attrs", [
    reading_attrs(averageVehicleSpeed=(30.0, "KMH")),                             # no occupancy
    reading_attrs(occupancy=(20.0, "P1")),                                         # no speed
    reading_attrs(occupancy=(20.0, "P1"), averageVehicleSpeed=(30.0, "KMH"), at=""),  # no time
    reading_attrs(occupancy=(20.0, "P1"), averageVehicleSpeed=(30.0, "KMH"), at="yesterday"),
    reading_attrs(occupancy=(250.0, "P1"), averageVehicleSpeed=(30.0, "KMH")),     # impossible occupancy
    reading_attrs(occupancy=(20.0, "P1"), averageVehicleSpeed=(900.0, "KMH")),     # impossible speed
    reading_attrs(occupancy=(20.0, "P1"), averageVehicleSpeed=("fast", "KMH")),    # wrong type
    {},
])
def test_missing_or_impossible_readings_are_not_used(attrs: dict[str, Any]) -> None:
    assert detector_reading(attrs) is None


def test_the_loop_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in (("", 0.0), ("0", 0.0), ("-1", 0.0), ("nan", 0.0), ("soon", 0.0), ("1.5", 1.5)):
        monkeypatch.setenv("CITYOS_TRAFFIC_CONTROL_SECONDS", raw)
        assert control_interval() == expected
    monkeypatch.delenv("CITYOS_TRAFFIC_CONTROL_SECONDS")
    assert control_interval() == 0.0
    monkeypatch.setenv("CITYOS_TRAFFIC_DETECTOR_STALE_SECONDS", "1")
    assert stale_seconds(2.0) == 4.0  # never shorter than two decisions
    monkeypatch.setenv("CITYOS_TRAFFIC_DETECTOR_STALE_SECONDS", "x")
    assert stale_seconds(1.0) == 30.0


# ---------------------------------------------------------------------- the loop without a broker

T0 = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


async def write_readings(client: Any, at: dt.datetime, queues: dict[str, float]) -> None:
    """Detector entities written to the hub the NGSI-LD way (as an integrator's detectors would)."""
    stamp = clock.iso(at)
    for lane in ("n_in", "s_in", "e_in", "w_in"):
        body = {"id": detector_entity(lane), "type": "TrafficFlowObserved",
                "occupancy": {"type": "Property", "value": queues.get(lane, 0.0), "unitCode": "P1",
                              "observedAt": stamp},
                "averageVehicleSpeed": {"type": "Property", "value": 2.0 if queues.get(lane) else 40.0,
                                        "unitCode": "KMH", "observedAt": stamp}}
        written = await client.post("/ngsi-ld/v1/entityOperations/upsert", json=[body])
        assert written.status_code in (201, 204), written.text


async def test_stale_detectors_make_the_loop_run_fixed_time(client: Any, app: Any,
                                                            moving_clock: list[dt.datetime]) -> None:
    plan = {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10},
                       {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10}],
            "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]], "links": LANES}
    for body in ({"id": "adaptive", "controller": "cityos", "plan": plan},
                 {"id": "timed", "controller": "fixed", "plan": plan}):
        assert (await client.post("/api/traffic/signals", json=body)).status_code == 201
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant, lambda: None, None,
                       interval=1.0, stale_after=5.0)

    async def step(seconds: float, queues: dict[str, float] | None) -> dict[str, Any]:
        moving_clock[0] += dt.timedelta(seconds=seconds)
        if queues is not None:
            await write_readings(client, moving_clock[0], queues)
        await loop.round()
        return dict((await client.get("/api/traffic/signals/adaptive")).json())

    assert set(loop.signals) == set()
    shown = await step(6, {"e_in": 60.0, "w_in": 50.0})  # a queue east-west, minimum green served
    assert set(loop.signals) == {"adaptive"}  # a fixed-time signal is not the loop's
    assert shown["phase"] == 1 and shown["fallback"] is False
    for _ in range(4):  # the queue holds: east-west keeps green past its fixed 10 s
        shown = await step(5, {"e_in": 60.0, "w_in": 50.0})
    assert shown["phase"] == 1 and shown["greenElapsed"] >= 14
    shown = await step(6, None)  # the detectors fall silent: readings 6 s old
    assert shown["fallback"] is True and shown["phase"] == 0  # fixed time: east-west had its 10 s
    shown = await step(7, None)
    assert shown["phase"] == 0  # north-south's fixed green is not over
    shown = await step(9, None)
    assert shown["phase"] == 1 and shown["fallback"] is True
    shown = await step(10, {"n_in": 70.0})  # fresh again: the controller serves the north-south queue
    assert shown["fallback"] is False and shown["phase"] == 0
    history = (await client.get("/api/traffic/signals/adaptive/commands")).json()
    assert [c["source"] for c in reversed(history)] == ["controller", "fallback", "fallback", "controller"]
    assert all(c["rpcId"] is None and c["ackedMs"] is None for c in history)  # no cabinet registered
    assert (await client.get("/api/traffic/signals/timed/commands")).json() == []

    # An ambulance approaching asks for east-west: the loop leaves the signal to the green wave while it runs.
    moving_clock[0] += dt.timedelta(seconds=10)  # north-south's minimum green served
    wave = await client.post("/api/traffic/preemptions", json={"vehicle": "amb-1", "speed": 10,
                                                               "signals": [{"signal": "adaptive", "phase": 1,
                                                                            "distance": 100}]})
    assert wave.status_code == 200 and wave.json()["signals"][0]["outcome"] == "applied", wave.text
    for _ in range(3):  # the north-south queue would win, but the vehicle's run is in progress
        shown = await step(6, {"n_in": 70.0, "s_in": 70.0})
        assert shown["phase"] == 1
    assert loop.stats.preempted_rounds == 3
    shown = await step(120, {"n_in": 70.0, "s_in": 70.0})  # the run is over: the controller again
    assert shown["phase"] == 0


async def test_one_loop_drives_a_tenants_signals(client: Any, app: Any) -> None:
    """On PostgreSQL the loop holds a lease: a second process's loop stays idle until the first stops."""
    first, second = (ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant, lambda: None,
                                 None, interval=1.0) for _ in range(2))
    try:
        assert await first._holds_lease()
        if app.state.engine.dialect.name == "postgresql":
            assert not await second._holds_lease()
            assert await first._holds_lease()  # still its own
            await first.stop()
            assert await second._holds_lease()
        else:  # SQLite: one process
            assert await second._holds_lease()
    finally:
        await first.stop()
        await second.stop()


async def test_the_app_starts_the_loop_when_configured(client: Any, app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`CITYOS_TRAFFIC_CONTROL_SECONDS` starts the loop; a signal whose detectors never reported runs fixed time."""
    from cityos.traffic.control_loop import start_control_loop

    monkeypatch.delenv("CITYOS_TRAFFIC_CONTROL_SECONDS", raising=False)
    assert start_control_loop(app) is None
    plan = {"phases": [{"state": "GGrr"}, {"state": "rrGG"}], "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]],
            "links": LANES}
    assert (await client.post("/api/traffic/signals", json={"id": "unfed", "plan": plan})).status_code == 201
    monkeypatch.setenv("CITYOS_TRAFFIC_CONTROL_SECONDS", "0.2")
    loop = start_control_loop(app)
    assert loop is not None and loop.interval == 0.2
    try:
        async def fixed_time() -> bool:
            return bool((await client.get("/api/traffic/signals/unfed")).json()["fallback"])

        assert await wait_for(fixed_time, 10)
        assert loop.stats.rounds >= 1 and loop.stats.fallback_rounds >= 1
    finally:
        await loop.stop()


async def test_answers_to_many_commands_are_watched_together(client: Any, app: Any, moving_clock: list[dt.datetime],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command the loop sends is settled by one watcher: answered, refused by the device, or timed out;
    the outcome and the time to the acknowledgement are kept with each command."""
    from cityos.traffic import control_loop

    monkeypatch.setattr(control_loop, "COMMAND_BATCH", 2)  # the round commands its signals in two slices
    plan = {"phases": [{"state": "GGrr", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10},
                       {"state": "rrGG", "minGreen": 5, "maxGreen": 60, "fixedGreen": 10}],
            "yellow": 3, "allRed": 2, "conflicts": [[0, 2], [0, 3], [1, 2], [1, 3]], "links": LANES}
    signals = ("answers", "refuses", "silent")
    iot = app.state.iot
    assert not (await iot.provision_many([DeviceIn(name=f"{s}-cabinet", profile="traffic-signal")
                                          for s in signals])).errors
    for signal in signals:
        made = await client.post("/api/traffic/signals", json={"id": signal, "device": f"{signal}-cabinet",
                                                               "controller": "cityos", "plan": plan})
        assert made.status_code == 201, made.text
    sent: dict[str, int] = {}

    async def send(device: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The RPC registry's record as the command path makes it (no broker: this test answers itself)."""
        request = await iot.create_rpc(device, RpcIn(method=method, params=params, timeout=5000))
        await iot.set_rpc_status(request["id"], "sent")
        sent[params["signal"]] = request["id"]
        return {"id": request["id"], "status": "sent"}

    loop = ControlLoop(app.state.traffic, app.state.hub.service, iot.tenant, lambda: one_by_one(send), iot.rpc_statuses,
                       interval=1.0, stale_after=5.0, ack_timeout=4.0)
    moving_clock[0] += dt.timedelta(seconds=6)
    await write_readings(client, moving_clock[0], {"e_in": 60.0, "w_in": 50.0})
    await loop.round()  # all three switch to the east-west queue
    assert set(sent) == set(signals) and loop.stats.commands == 3
    await iot.set_rpc_status(sent["answers"], "succeeded")
    await iot.set_rpc_status(sent["refuses"], "failed", "the cabinet is in manual control")
    assert await iot.rpc_statuses([sent["answers"], sent["refuses"], sent["silent"], 10**9]) == {
        sent["answers"]: "succeeded", sent["refuses"]: "failed", sent["silent"]: "sent"}  # unknown ids left out
    await loop.settle()  # the silent cabinet's command times out

    kept = {signal: (await client.get(f"/api/traffic/signals/{signal}/commands")).json() for signal in signals}
    assert {signal: [(c["rpcId"], c["rpcStatus"]) for c in commands] for signal, commands in kept.items()} == {
        "answers": [(sent["answers"], "succeeded")], "refuses": [(sent["refuses"], "failed")],
        "silent": [(sent["silent"], "timed_out")]}
    assert kept["answers"][0]["ackedMs"] is not None and kept["answers"][0]["ackedMs"] >= 0
    assert kept["refuses"][0]["ackedMs"] is None and kept["silent"][0]["ackedMs"] is None
    assert (loop.stats.acknowledged, loop.stats.unacknowledged) == (1, 2) and len(loop.stats.ack_ms) == 1
    await loop.stop()


# ---------------------------------------------------------------------- advance detectors


def test_readings_become_approaches_with_and_without_advance_detectors() -> None:
    stop = {"long_in": LaneReading(vehicles=4.0, halting=4.0, waiting=30.0, occupancy=0.2),
            "short_in": LaneReading(vehicles=2.0, halting=0.0, waiting=0.0, occupancy=0.1),
            "out": LaneReading(vehicles=9.0)}
    ahead = {"long_in": LaneReading(vehicles=11.0, halting=0.0, length=250.0)}
    approaches = approach_readings(("long_in", "short_in", "unread_in"), stop, ahead)
    assert set(approaches) == {"long_in", "short_in"}  # an incoming lane without a reading has no approach
    long_lane, short_lane = approaches["long_in"], approaches["short_in"]
    # The advance detector covers the stop-line zone too: the approach's vehicles are the larger count.
    assert long_lane == ApproachReading(stopline=4.0, vehicles=11.0, halting=4.0, waiting=30.0, arriving=11.0)
    assert long_lane.near == 11.0
    # A short lane has no advance detector: the stop-line detector stands for what a green serves now,
    # exactly what the controller counted from the whole-lane reading before.
    assert short_lane == ApproachReading(stopline=2.0, vehicles=2.0, halting=0.0, waiting=0.0, arriving=None)
    assert short_lane.near == 2.0
    # A queue standing over the stop-line detector counts even when the advance detector reads fewer.
    queued = approach_readings(("long_in",), stop, {"long_in": LaneReading(vehicles=1.0)})["long_in"]
    assert queued.near == 4.0 and queued.arriving == 1.0
    assert approach_readings(("long_in",), {}, ahead) == {}  # no stop-line reading: nothing to decide on


def test_an_advance_detector_reading_counts_vehicles_over_its_length() -> None:
    attrs = reading_attrs(occupancy=(20.0, "P1"), averageVehicleSpeed=(36.0, "KMH"), intensity=(3, "E27"))
    found = detector_reading(attrs, length=250.0)
    assert found is not None and found.reading.vehicles == pytest.approx(10.0)  # 20 % of 250 m / 5 m
    assert found.reading.halting == 0 and found.reading.length == 250.0
    assert detector_reading(attrs).reading.vehicles == pytest.approx(4.0)  # type: ignore[union-attr]


ADVANCE = [{"lane": "e_in", "detector": "e-in-advance", "distance": 250},
           {"lane": "w_in", "detector": "w-in-advance", "distance": 250}]


async def test_advance_detectors_reach_the_controller_and_call_a_green(client: Any, app: Any,
                                                                     moving_clock: list[dt.datetime],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A platoon on the east-west advance detectors, nobody yet on the 100 m stop-line detectors: the signal
    whose plan names them gives east-west the green; the same signal without them rests in north-south."""
    views: dict[float, list[View]] = {}
    decide = CityOSAdaptive.decide

    def seen(self: CityOSAdaptive, view: View) -> int:
        views.setdefault(view.now, []).append(view)
        return decide(self, view)

    monkeypatch.setattr(CityOSAdaptive, "decide", seen)
    made = await client.post("/api/traffic/signals", json={"id": "advanced", "controller": "cityos",
                                                           "plan": {**TWO_PHASES, "advance": ADVANCE}})
    assert made.status_code == 201, made.text
    assert made.json()["plan"]["advance"] == ADVANCE
    assert (await client.post("/api/traffic/signals", json={"id": "plain", "controller": "cityos",
                                                            "plan": TWO_PHASES})).status_code == 201
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant, lambda: None, None,
                       interval=1.0, stale_after=5.0)
    moving_clock[0] += dt.timedelta(seconds=6)  # north-south's minimum green served
    await write_readings(client, moving_clock[0], {})  # every stop line empty
    await write_reading(client, "e-in-advance", moving_clock[0], 16.0, 40.0)  # 8 vehicles coming at 40 km/h
    await write_reading(client, "w-in-advance", moving_clock[0], 0.0, 50.0)
    await loop.round()

    advanced = (await client.get("/api/traffic/signals/advanced")).json()
    plain = (await client.get("/api/traffic/signals/plain")).json()
    assert advanced["phase"] == 1 and advanced["fallback"] is False  # the platoon called the green
    assert plain["phase"] == 0 and plain["fallback"] is False  # nothing seen: resting in north-south
    decided = views[moving_clock[0].timestamp()]
    with_advance = next(v for v in decided if v.approaches.get("e_in") and v.approaches["e_in"].arriving is not None)
    assert with_advance.approaches["e_in"].arriving == pytest.approx(8.0)
    assert with_advance.approaches["w_in"].arriving == 0.0
    assert with_advance.approaches["n_in"].arriving is None  # north-south has no advance detector
    without = next(v for v in decided if v is not with_advance)
    assert set(without.approaches) == {"n_in", "s_in", "e_in", "w_in"}
    assert all(a.arriving is None for a in without.approaches.values())
    assert loop.stats.advance_used == 2 and loop.stats.zones_missing == 0

    # The advance detectors fall silent while the stop-line detectors report: the lanes lose `arriving`, the
    # signal keeps its controller (no fixed-time fallback).
    moving_clock[0] += dt.timedelta(seconds=10)
    await write_readings(client, moving_clock[0], {"e_in": 30.0})
    await loop.round()
    assert (await client.get("/api/traffic/signals/advanced")).json()["fallback"] is False
    latest = [v for v in views[moving_clock[0].timestamp()] if "e_in" in v.approaches]
    assert latest and all(a.arriving is None for v in latest for a in v.approaches.values())
    assert loop.stats.zones_missing == 2
    await loop.stop()


@pytest.mark.parametrize(("kind", "detectors"), [
    ("advance", [{"lane": "x_in", "detector": "x-advance", "distance": 250}]),     # not an incoming lane
    ("advance", [{"lane": "n_out", "detector": "n-advance", "distance": 250}]),    # an outgoing lane
    ("advance", [{"lane": "e_in", "detector": "a", "distance": 250},                # two for one lane
                 {"lane": "e_in", "detector": "b", "distance": 200}]),
    ("advance", [{"lane": "e_in", "detector": "bad name!", "distance": 250}]),     # not a device name
    ("advance", [{"lane": "e_in", "detector": "e-advance", "distance": 5}]),       # shorter than a loop zone
    ("advance", [{"lane": "e_in", "detector": "e-advance", "distance": 5000}]),    # beyond any approach
    ("advance", [{"lane": "e_in", "detector": "e-advance", "distance": "far"}]),   # not a number
    ("advance", [{"lane": "e_in", "detector": "e-advance"}]),                      # no distance
    ("advance", [{"lane": "e_in", "detector": "e-advance", "distance": 250, "kind": "x"}]),  # unknown field
    ("stopline", [{"lane": "x_in", "detector": "x-stopline", "distance": 60}]),    # not an incoming lane
    ("stopline", [{"lane": "e_out", "detector": "e-stopline", "distance": 60}]),   # an outgoing lane
    ("stopline", [{"lane": "e_in", "detector": "a", "distance": 60},               # two for one lane
                  {"lane": "e_in", "detector": "b", "distance": 30}]),
    ("stopline", [{"lane": "e_in", "detector": "bad name!", "distance": 60}]),     # not a device name
    ("stopline", [{"lane": "e_in", "detector": "e-stopline", "distance": 2}]),     # shorter than a car
    ("stopline", [{"lane": "e_in", "detector": "e-stopline", "distance": 500}]),   # an advance detector's reach
    ("stopline", [{"lane": "e_in", "detector": "e-stopline", "distance": "near"}]),  # not a number
    ("stopline", "e-stopline"),                                                     # not a list
])
async def test_bad_zone_detectors_are_refused(client: Any, kind: str, detectors: Any) -> None:
    response = await client.post("/api/traffic/signals", json={"id": "bad", "plan": {**TWO_PHASES,
                                                                                      kind: detectors}})
    assert response.status_code in (400, 422), response.text
    assert (await client.get("/api/traffic/signals/bad")).status_code == 404


@pytest.mark.parametrize(("kind", "detectors", "called"), [("advance", ADVANCE, "advance"),
                                                           ("stopline", STOPLINE, "stop-line")])
async def test_zone_detectors_need_the_plans_links(client: Any, kind: str, detectors: list[dict[str, Any]],
                                                   called: str) -> None:
    plan = {k: v for k, v in TWO_PHASES.items() if k != "links"}
    response = await client.post("/api/traffic/signals", json={"id": "unlinked", "plan": {**plan,
                                                                                           kind: detectors}})
    assert response.status_code == 400 and f"{called} detectors need the plan's links" in response.text


@pytest.fixture(scope="module")
def long_junction(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The four-arm junction with 400 m arms: every incoming lane is long enough for an advance detector."""
    from cityos.traffic.sumo import separate_junctions

    return separate_junctions(tmp_path_factory.mktemp("long-junction"), 1, period_ew=2.5, arm_m=400.0)


@needs_mqtt
@pytest.mark.skipif(libsumo is None, reason="libsumo is not installed")
async def test_advance_detector_readings_reach_the_controller_through_mqtt(
        client: Any, app: Any, long_junction: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """SUMO's advance detectors as devices of their own: their readings go through MQTT and the hub into the
    control loop's `ApproachReading`s, which the `cityos` controller decides on."""
    from cityos.traffic.sumo import ADVANCE_M

    net, routes = long_junction
    site = read_sites(net, cabinet_of=lambda _tls: "long-c-cabinet", signal_of=lambda _tls: "long-c")["long-c"]
    assert {a.lane for a in site.advance} == set(site.in_lanes)
    assert all(a.distance == ADVANCE_M and a.device == f"{a.lane}-advance" for a in site.advance)
    gateway = "long-c-detectors"
    result = await app.state.iot.provision_many(
        [DeviceIn(name=gateway, profile="traffic-flow", gateway=True)]
        + [DeviceIn(name=name, profile="traffic-flow", gatewayName=gateway)
           for name in detector_devices({"long-c": site})]
        + [DeviceIn(name="long-c-cabinet", profile="traffic-signal")])
    assert not result.errors
    made = await client.post("/api/traffic/signals", json={"id": "long-c", "device": "long-c-cabinet",
                                                           "controller": "cityos", "plan": plan_doc(site)})
    assert made.status_code == 201, made.text
    assert {a["lane"] for a in made.json()["plan"]["advance"]} == set(site.in_lanes)

    arriving: list[tuple[str, float]] = []
    decide = CityOSAdaptive.decide

    def seen(self: CityOSAdaptive, view: View) -> int:
        arriving.extend((lane, a.arriving) for lane, a in view.approaches.items() if a.arriving)
        return decide(self, view)

    monkeypatch.setattr(CityOSAdaptive, "decide", seen)
    topics = new_prefix()
    worker = await start_worker(app, topics)
    assert MQTT_URL is not None
    commands = CommandSender(app.state.iot, MQTT_URL, prefix=topics)
    street = SumoField(net, routes, {"long-c": site}, MQTT_URL, topics, gateway, report_every=1.0)
    running = FieldThread(street, {"long-c": site.plan.phases[0].state})
    await running.start()
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant,
                       lambda: command_batch_sender(commands), app.state.iot.rpc_statuses, interval=0.5,
                       stale_after=3.0)
    east, west = "j0_e_in_0-advance", "j0_w_in_0-advance"
    try:
        loop.start()

        async def platoon_seen() -> bool:  # east-west vehicles entered the advance zones and the controller saw them
            return any(lane in ("j0_e_in_0", "j0_w_in_0") for lane, _ in arriving)

        assert await wait_for(platoon_seen, 45), (loop.stats, street.published)
        found = await app.state.hub.service.retrieve_many(app.state.iot.tenant, [
            detector_entity(east), detector_entity(west), device_id(east)])
        readings = [detector_reading(found[detector_entity(d)].attrs, ADVANCE_M) for d in (east, west)]
        assert all(r is not None for r in readings)

        async def described() -> bool:  # the gateway told the advance device's lane and distance
            record = (await app.state.hub.service.retrieve_many(app.state.iot.tenant, [device_id(east)])).get(
                device_id(east))
            names = {iri.rsplit("/", 1)[-1]: v for iri, v in (record.attrs if record else {}).items()}
            return bool(names.get("lane")) and names["lane"][0]["value"] == "j0_e_in_0" \
                and names["distanceFromStopLine"][0]["value"] == ADVANCE_M

        assert await wait_for(described, 10)
    finally:
        await loop.stop()
        await running.stop()
        await commands.close()
        await stop_worker(worker)
    assert loop.stats.advance_used > 0
    assert not any(lane in ("j0_n_in_0", "j0_s_in_0") for lane, _ in arriving)  # no traffic north-south
    assert not street.rejected
