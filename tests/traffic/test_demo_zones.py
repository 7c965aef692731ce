"""The demo's video/radar zones (`cityos demo --traffic sumo`): a `traffic-zone` device over every incoming lane
of the city grid's arterials, reporting through the detector gateway the vehicles standing in its lane as SUMO
has them; a vehicle stalled in the middle of such a lane opens the lane's accident incident, over the real
broker and the platform's own ingest and accident watch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from auth_tokens import Auth
from cityos.sim.sumo_demo import DETECTOR_GATEWAY, city_network, provision_field
from cityos.sim.sumo_field import STEP_S, SumoField, ZoneLane, zones_of
from cityos.traffic.citynet import MORNING_PEAK_UTC
from cityos.traffic.stalls import StallThresholds
from iot.iot_helpers import history_count
from iot.mqtt_support import MQTT_URL, needs_mqtt, new_prefix, start_worker, stop_worker, wait_for

try:
    import libsumo
except ImportError:  # the SUMO test is skipped without it
    libsumo = None

Result = TypeVar("Result")
STALLED_S = StallThresholds().stalled_s
TELEPORT_S = 120.0  # the field's --time-to-teleport: the stalled vehicle's readings come before SUMO moves it


def observed(device: str) -> str:
    return f"urn:ngsi-ld:TrafficFlowObserved:{device}"


def step(sumo_field: SumoField, seconds: float) -> None:
    for _ in range(round(seconds / STEP_S)):
        sumo_field.step()


def stall_a_vehicle(zones: dict[str, tuple[ZoneLane, Any]]) -> tuple[ZoneLane, str]:
    """Stop a moving vehicle in the upstream half of a long zone lane, as an accident would (the bench's way)."""
    for zone, _site in sorted(zones.values(), key=lambda z: z[0].device):
        length = float(libsumo.lane.getLength(zone.lane))
        if length < 200:
            continue
        for vehicle in libsumo.lane.getLastStepVehicleIDs(zone.lane):
            position = float(libsumo.vehicle.getLanePosition(vehicle))
            if 0.15 * length <= position <= 0.5 * length and float(libsumo.vehicle.getSpeed(vehicle)) > 1.0:
                libsumo.vehicle.setLaneChangeMode(vehicle, 0)
                libsumo.vehicle.setSpeed(vehicle, 0.0)
                return zone, vehicle
    raise AssertionError("no moving vehicle in the upstream half of a zone lane")


def stand_until(sumo_field: SumoField, vehicle: str, stood: float) -> float:
    while float(libsumo.vehicle.getWaitingTime(vehicle)) < stood:
        step(sumo_field, STEP_S)
    return float(libsumo.vehicle.getWaitingTime(vehicle))


@needs_mqtt
@pytest.mark.skipif(libsumo is None, reason="libsumo is not installed")
async def test_the_demos_zones_report_standing_vehicles_and_a_stalled_one_opens_an_incident(
        client: Any, app: Any, auth: Auth, tmp_path: Path) -> None:
    network = await asyncio.to_thread(city_network, tmp_path, 42, MORNING_PEAK_UTC)
    zones = zones_of(network.sites)
    # Zones watch the arterials only: both lanes of each two-lane incoming road, no one-lane road.
    incoming = {lane for site in network.sites.values() for lane in site.in_lanes}
    lanes_of: dict[str, set[str]] = {}
    for lane in incoming:
        lanes_of.setdefault(lane.rsplit("_", 1)[0], set()).add(lane)
    assert {zone.lane for zone, _ in zones.values()} == {lane for group in lanes_of.values() if len(group) > 1
                                                          for lane in group}
    assert zones and len(zones) < len(incoming)
    tokens = await provision_field(app.state.iot, network.sites, DETECTOR_GATEWAY)
    device = (await client.get(f"/api/iot/devices/{next(iter(zones))}")).json()
    assert (device["profile"], device["gatewayName"]) == ("traffic-zone", DETECTOR_GATEWAY)

    assert MQTT_URL is not None
    prefix = new_prefix()
    worker = await start_worker(app, prefix)
    street = SumoField(network.net, network.routes, network.sites, MQTT_URL, prefix, DETECTOR_GATEWAY, tokens,
                       shared_cabinet_link=True)
    pool = ThreadPoolExecutor(1, thread_name_prefix="sumo-field")  # libsumo: every call from one thread
    loop = asyncio.get_running_loop()

    def field(call: Callable[..., Result], *args: Any) -> asyncio.Future[Result]:
        return loop.run_in_executor(pool, call, *args)

    entity = ""

    async def incident() -> list[dict[str, Any]]:
        listed = await client.get("/api/ops/incidents", headers=auth.headers("operator"))
        return [i for i in listed.json()["items"] if i["category"] == "traffic.accident" and i["entityId"] == entity]

    try:
        await field(street.start, {})
        await field(step, street, 120.0)  # the morning peak's traffic fills the grid
        zone, vehicle = await field(stall_a_vehicle, zones)
        entity = observed(zone.device)
        # The readings the stalled-vehicle test needs: standing 90 s and more, in two readings in a row (each
        # stored before the next goes out, as readings 30 s apart are).
        stood = []
        for count, wanted in enumerate((5.0, STALLED_S + 2, STALLED_S + 22), start=1):
            stood.append(await field(stand_until, street, vehicle, wanted))
            await field(street.publish_video)
            assert await wait_for(lambda count=count: _stored(app, entity, count), 30)
        assert stood[-1] < TELEPORT_S
        assert await wait_for(incident, 30)
        body = (await client.get(f"/ngsi-ld/v1/entities/{entity}")).json()
        head = [v for v in body["stoppedVehicles"]["value"] if v["stoppedFor"] >= STALLED_S]
        assert head and all(v["distanceToStopLine"] >= 30 for v in head), body["stoppedVehicles"]
        # Towed away: the vehicle drives on, its queue dissolves, and the next reading ends the zone's episode
        # (the session's accident watch is shared with the other traffic tests).
        await field(release, street, vehicle)
        await field(street.publish_video)
        assert await wait_for(lambda: _stored(app, entity, 4), 30)
        assert await wait_for(lambda: _calm(app, f"{zone.segment}#{zone.index}"), 30)
    finally:
        await field(street.close)
        pool.shutdown()
        await stop_worker(worker)

    assert street.zone_readings == 4 * len(zones)
    body = (await client.get(f"/ngsi-ld/v1/entities/{entity}")).json()
    assert body["refRoadSegment"]["object"] == f"urn:ngsi-ld:RoadSegment:{zone.segment}"
    assert body["laneId"]["value"] == zone.index
    # Only the first reading named the lane; every reading carried the standing vehicles.
    assert await history_count(app, entity, "refRoadSegment") == 1

    found = await incident()
    assert len(found) == 1 and f"{zone.segment}#{zone.index}" in found[0]["description"], found
    site = zones[zone.device][1]
    assert found[0]["location"] == {"type": "Point", "coordinates": [site.lon, site.lat]}
    letters = (await client.get("/api/iot/dead-letters")).json()["items"]
    assert letters == []  # every zone reading the field sent fitted the profile


def release(sumo_field: SumoField, vehicle: str) -> None:
    libsumo.vehicle.setSpeed(vehicle, -1)  # SUMO drives it again
    step(sumo_field, 40.0)


async def _calm(app: Any, zone: str) -> bool:
    return not [key for key in app.state.accident_watch.stalls.active() if key.endswith(zone)]


async def _stored(app: Any, entity: str, count: int) -> bool:
    return await history_count(app, entity, "stoppedVehicles") >= count
