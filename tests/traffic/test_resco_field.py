"""The closed loop through the platform on a real city's network, on both backends: RESCO Cologne 3, whose 38
detector lanes all have SUMO ids that make no IoT device name (`-241660955#17_0`).

The test process plays the street with `cityos.sim.sumo_field` over the real broker (CITYOS_TEST_MQTT_URL): the
lanes' own detectors publish under the device names `cityos.traffic.naming.lane_detector` derives, the devices are
registered as the demo registers them (`provision_field`), the signals as the field's plans give them, and the
platform's `ControlLoop` finds each plan lane's detector entity by the same name, decides, and commands phases as
RPC, which the cabinets in SUMO show and acknowledge.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cityos.iot.commands import CommandSender
from cityos.sim.sumo_demo import FieldThread, provision_field
from cityos.sim.sumo_field import SumoField, detector_lanes, plan_doc, read_sites, zone_loops
from cityos.traffic.api import command_batch_sender
from cityos.traffic.control_loop import ControlLoop, detector_entity, detector_reading
from cityos.traffic.models import DETECTOR_NAME
from cityos.traffic.naming import lane_detector
from iot.mqtt_support import MQTT_URL, needs_mqtt, new_prefix, start_worker, stop_worker, wait_for

try:
    import libsumo
except ImportError:  # the SUMO test is skipped without it
    libsumo = None

NETWORK = "cologne3"
GATEWAY = "cologne3-detectors"
# Simulated seconds of the morning peak's demand, at the wall clock's pace (180 s took 6 min of CI on both databases).
RUN_S = 60.0
INTERVAL_S = 1.0  # the control loop's
STALE_S = 10.0  # a reading older than this sends its signal to fixed time (slack for a loaded machine)


@pytest.mark.slow
@needs_mqtt
@pytest.mark.skipif(libsumo is None, reason="libsumo is not installed")
async def test_the_platform_drives_a_real_citys_signals_whose_lane_ids_make_no_device_name(
        client: Any, app: Any) -> None:
    from cityos.traffic.sumo import resco_scenario

    scenario = resco_scenario(NETWORK)
    sites = await asyncio.to_thread(read_sites, scenario.net)
    lanes = detector_lanes(sites)
    assert len(sites) == 3 and len(lanes) == 38
    assert not any(DETECTOR_NAME.match(lane) for lane in lanes)  # before naming, no lane detector could register
    devices = {lane: lane_detector(lane) for lane in lanes}
    assert len(set(devices.values())) == len(lanes) and all(DETECTOR_NAME.match(d) for d in devices.values())

    await provision_field(app.state.iot, sites, GATEWAY)  # raises if the registry refuses a device
    for site in sites.values():
        made = await client.post("/api/traffic/signals", json={
            "id": site.signal, "name": site.tls, "device": site.cabinet, "controller": "cityos",
            "plan": plan_doc(site)})
        assert made.status_code == 201, made.text

    topics = new_prefix()
    worker = await start_worker(app, topics)
    assert MQTT_URL is not None
    commands = CommandSender(app.state.iot, MQTT_URL, prefix=topics)
    (routes,) = scenario.routes
    street = SumoField(scenario.net, routes, sites, MQTT_URL, topics, GATEWAY, report_every=1.0,
                       sumo_args=("--begin", str(scenario.begin)))
    running = FieldThread(street, {signal: site.plan.phases[0].state for signal, site in sites.items()})
    await running.start()
    loop = ControlLoop(app.state.traffic, app.state.hub.service, app.state.iot.tenant,
                       lambda: command_batch_sender(commands), app.state.iot.rpc_statuses, interval=INTERVAL_S,
                       stale_after=STALE_S, answers=app.state.iot.answer_signal)
    entities = [detector_entity(device) for device in devices.values()]
    try:
        async def fed() -> bool:  # every lane's detector has a reading in the hub
            found = await app.state.hub.service.retrieve_many(app.state.iot.tenant, entities)
            return len(found) == len(lanes) and all(detector_reading(r.attrs) is not None for r in found.values())

        assert await wait_for(fed, 20)
        loop.start()
        began = time.monotonic()
        await asyncio.sleep(RUN_S)
        await loop.stop()
        await asyncio.sleep(3 + 2 + 1)  # the last change's yellow and all-red reach the lamps
        ran = time.monotonic() - began
    finally:
        await loop.stop()
        await running.stop()
        await commands.close()
        await stop_worker(worker)

    # Every lane's readings reached the hub under its detector's name, through to the end of the run.
    found = await app.state.hub.service.retrieve_many(app.state.iot.tenant, entities)
    assert len(found) == len(lanes)
    readings = [detector_reading(r.attrs) for r in found.values()]
    assert all(r is not None and (began + ran - r.observed.timestamp()) < STALE_S + 5 for r in readings)
    assert any(r is not None and r.reading.vehicles > 0 for r in readings)  # the morning peak's traffic
    assert street.published >= len(lanes) * RUN_S * 0.9
    assert street.restarts == 0 and street.steps * 0.5 >= RUN_S

    # The controller decided on them (never on fixed time for want of a reading), its stop-line and advance
    # detectors included, and every phase command reached a cabinet as RPC and was acknowledged.
    assert loop.stats.fallback_rounds == 0 and loop.stats.refused == 0, loop.stats
    assert loop.stats.stopline_used > 0 and loop.stats.zones_missing == 0, loop.stats
    assert len(zone_loops(sites, "advance")) == 0 or loop.stats.advance_used > 0
    applied = {}
    for signal, site in sites.items():
        history = (await client.get(f"/api/traffic/signals/{signal}/commands?limit=1000")).json()
        applied[signal] = [c for c in history if c["outcome"] == "applied"]
        assert applied[signal] and {c["source"] for c in applied[signal]} == {"controller"}, (signal, history[:3])
        assert all(c["rpcStatus"] == "succeeded" and c["ackedMs"] is not None for c in applied[signal]), signal
        shown = (await client.get(f"/api/traffic/signals/{signal}")).json()
        assert street.shown[site.tls][-1][1] == shown["state"] and shown["fallback"] is False, (signal, shown)
    every = [c["rpcId"] for cs in applied.values() for c in cs]
    assert sorted(every) == sorted(street.acknowledged) == sorted(street.requests) and not street.rejected
    assert loop.stats.acknowledged == len(every) == loop.stats.commands and loop.stats.unacknowledged == 0
    print(f"\n{NETWORK}: {len(lanes)} lanes, {street.published} lane and zone readings, {len(every)} phase "
          f"commands acknowledged ({ {s: len(cs) for s, cs in applied.items()} }), ack ms p50 "
          f"{sorted(loop.stats.ack_ms)[len(loop.stats.ack_ms) // 2]}, rounds {loop.stats.rounds}")
