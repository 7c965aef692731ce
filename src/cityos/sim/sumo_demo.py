"""`cityos demo --traffic sumo`: the simulated city's signals decided by the platform, SUMO as the street.

The city's 9×6 road grid (`cityos.traffic.citynet`) runs in libsumo with its seeded demand (the daily
pattern from the time the demo starts, looped when it ends), in a thread of the demo paced to the wall
clock (`cityos.sim.sumo_field`). Its 54 junctions are registered as `TrafficSignal`s (controller
`cityos`, the network's own plans) whose cabinets are IoT `traffic-signal` devices at the junctions (so
the cockpit's traffic layer shows them), and its detector lanes as `traffic-flow` devices behind one
detector gateway, with an advance detector device over the last 250 m of every incoming lane longer than
that (all the city's links are), and a video/radar zone (`traffic-zone` device) over every incoming lane of
the arterials (two-lane roads), whose standing vehicles feed the accident watch's stalled-vehicle test every
30 s; all of them talk to the demo's embedded broker with their own tokens. The
platform's control loop (`CITYOS_TRAFFIC_CONTROL_SECONDS`, 5 s unless set) decides the phases from the detectors in
the hub and commands them as RPC; the cabinets show them in SUMO and acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cityos.core import clock
from cityos.core.errors import AlreadyExists, ResourceNotFound
from cityos.iot.models import DeviceIn
from cityos.security.policy import Principal
from cityos.sim.sumo_field import (
    SignalSite,
    SumoField,
    detector_devices,
    detector_lanes,
    plan_doc,
    read_sites,
    zone_loops,
    zones_of,
)
from cityos.traffic import naming
from cityos.traffic.models import SignalIn

log = logging.getLogger("cityos.sim.sumo_demo")

DETECTOR_GATEWAY = "sumo-detector-gateway"
CONTROL_SECONDS = "5"  # the control loop's decision interval in the demo, unless CITYOS_TRAFFIC_CONTROL_SECONDS
DEMAND_HORIZON_S = 3600  # one hour of demand, then it starts again
DEPARTMENT = "transport"


class TrafficMode(StrEnum):
    """Where the demo's traffic comes from."""

    synthetic = "synthetic"  # road speeds from the daily pattern; signals not driven (the default)
    sumo = "sumo"  # SUMO's city grid; the signals decided by the platform's control loop


def signal_id(tls: str) -> str:
    return naming.signal_id(f"city-{tls}")


def cabinet_name(tls: str) -> str:
    return naming.device_name(f"signal-{tls}")


@dataclass(frozen=True)
class CityNetwork:
    net: Path
    routes: Path
    sites: dict[str, SignalSite]


def city_network(directory: Path, seed: int, start: datetime, horizon: int = DEMAND_HORIZON_S) -> CityNetwork:
    """The city's grid as a SUMO network, its demand from `start` on, and its signalised junctions."""
    from cityos.sim.city import build_city
    from cityos.traffic.citynet import build_network, grid, write_demand

    net = build_network(directory, seed)
    routes = write_demand(net, directory / f"city-{seed}-demo.rou.xml", seed=seed, horizon=horizon, start=start)
    nodes, _chains = grid(build_city(seed))
    positions = {node: (lon, lat) for node, (lon, lat, _kind) in nodes.items()}
    return CityNetwork(net, routes, read_sites(net, cabinet_of=cabinet_name, signal_of=signal_id, positions=positions))


async def provision_field(iot: Any, sites: Mapping[str, SignalSite], gateway: str) -> dict[str, str]:
    """The field's devices in the IoT registry; returns the tokens of those that connect (gateway, cabinets).

    Devices registered before (a restarted demo) get a fresh token: the field is their firmware."""
    from cityos.sim.platform import gateway_profile

    specs = [DeviceIn(name=gateway, profile=gateway_profile(iot.profiles), gateway=True, department=DEPARTMENT)]
    specs += [DeviceIn(name=name, profile="traffic-flow", gatewayName=gateway, department=DEPARTMENT)
              for name in detector_devices(sites)]
    # A zone reports against its lane's stop line: its place is the junction's (an incident's location).
    specs += [DeviceIn(name=name, profile="traffic-zone", gatewayName=gateway, lon=site.lon, lat=site.lat,
                       department=DEPARTMENT) for name, (_zone, site) in zones_of(sites).items()]
    specs += [DeviceIn(name=site.cabinet, profile="traffic-signal", lon=site.lon, lat=site.lat, department=DEPARTMENT)
              for site in sites.values()]
    result = await iot.provision_many(specs)
    tokens = {row["name"]: row["token"] for row in result.created}
    for error in result.errors:
        name = specs[int(error["row"])].name
        if "AlreadyExists" not in str(error["error"].get("type", "")):
            raise RuntimeError(f"the SUMO field's device {name} was refused: {error['error']}")
    connecting = [gateway, *dict.fromkeys(site.cabinet for site in sites.values())]
    for name in connecting:
        if name not in tokens:
            tokens[name] = await iot.rotate_token(name)
    return {name: tokens[name] for name in connecting}


async def lamps_now(traffic: Any, principal: Principal, tenant: str,
                    sites: Mapping[str, SignalSite]) -> dict[str, str]:
    """What each junction's lamps show: its registered phase (a restarted demo), else its plan's first."""
    states = {}
    for site in sites.values():
        try:
            states[site.signal] = str((await traffic.get(principal, tenant, site.signal))["state"])
        except ResourceNotFound:
            states[site.signal] = site.plan.phases[0].state
    return states


async def register_signals(traffic: Any, principal: Principal, tenant: str, sites: Mapping[str, SignalSite],
                           controller: str = "cityos", **greens: float) -> int:
    """Each junction as a `TrafficSignal` (kept as it is if registered before); returns how many are new."""
    made = 0
    for site in sites.values():
        spec = SignalIn.model_validate({"id": site.signal, "name": site.tls, "device": site.cabinet,
                                        "controller": controller, "plan": plan_doc(site, **greens)})
        with contextlib.suppress(AlreadyExists):
            await traffic.register(principal, tenant, spec)
            made += 1
    return made


class FieldThread:
    """A `SumoField` in a thread of its own: started, run until `stop`, closed, all there (libsumo's rule)."""

    def __init__(self, sumo_field: SumoField, initial: Mapping[str, str]) -> None:
        self.field = sumo_field
        self._initial = dict(initial)
        self._stop = threading.Event()
        self._started: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._main, name="sumo-field", daemon=True)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._loop = loop
        self._thread.start()
        await self._started

    def _tell(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self._started is not None and not self._started.done():
                if error is None:
                    self._started.set_result(None)
                else:
                    self._started.set_exception(error)

        self._loop.call_soon_threadsafe(settle)

    def _main(self) -> None:
        try:
            try:
                self.field.start(self._initial)
            except BaseException as exc:  # reported to start()'s caller
                self._tell(exc)
                return
            self._tell(None)
            self.field.run(self._stop)
        except Exception:
            log.exception("the SUMO field stopped")
        finally:
            self.field.close()

    async def stop(self, within: float = 10.0) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, within)


async def start_city_traffic(app: Any, mqtt_url: str, seed: int, directory: Path, *,
                             report_every: float = 5.0, start: datetime | None = None,
                             prefix: str = "cityos/devices") -> FieldThread:
    """Register the city's signals and the field's devices, then run SUMO as the street (see the module)."""
    began = start or clock.now()
    network = await asyncio.to_thread(city_network, directory, seed, began)
    iot = app.state.iot
    tokens = await provision_field(iot, network.sites, DETECTOR_GATEWAY)
    principal = Principal("cityos-demo", kind="service", role="sys_admin", tenant=iot.tenant)
    initial = await lamps_now(app.state.traffic, principal, iot.tenant, network.sites)
    street = SumoField(network.net, network.routes, network.sites, mqtt_url, prefix, DETECTOR_GATEWAY, tokens,
                       report_every=report_every, seed=seed)
    running = FieldThread(street, initial)
    try:
        await running.start()
        # After the detectors' first readings went out: the control loop finds them with the signals.
        await register_signals(app.state.traffic, principal, iot.tenant, network.sites)
    except BaseException:
        with contextlib.suppress(Exception):
            await running.stop()
        raise
    log.info("SUMO field: %d signals, %d detector lanes, %d stop-line and %d advance detectors, %d video/radar zones",
             len(network.sites), len(detector_lanes(network.sites)), len(zone_loops(network.sites, "stopline")),
             len(zone_loops(network.sites, "advance")), len(zones_of(network.sites)))
    return running
