"""SUMO as the street (现场): lane detectors and signal cabinets that talk MQTT to the platform.

The field is what the platform's closed control loop (`cityos.traffic.control_loop`) drives. A libsumo
network, paced to the wall clock in a thread of its own, stands for the streets:

- each detector lane is an IoT `traffic-flow` device (`<lane>`) behind one detector gateway, which publishes
  the lanes' occupancy (%), mean speed (km/h) and vehicles entered since the last reading as ThingsBoard
  gateway telemetry (`<prefix>/<gateway>/gateway/telemetry`);
- each signalised incoming lane has a stop-line detector over its last `STOPLINE_ZONE_M` (`<lane>-stopline`),
  and each one longer than `ADVANCE_M` an advance detector over its last `ADVANCE_M` (`<lane>-advance`): SUMO
  lane-area detectors, as in the in-process benchmark, each a `traffic-flow` device of its own behind the same
  gateway, reporting the queue it sees (`queue`, metres: the jam over its zone, as a radar or video detector
  measures it) besides occupancy, speed and count. Their readings go out with the lanes', and once connected
  the gateway tells their client attributes (the lane each watches, its reach from the stop line, its kind);
  the signal's plan names them (`plan_doc`: `stopline`, `advance`), which is how the control loop links them
  to the approach;
- each incoming lane of an arterial (a road of two lanes or more, where loops miss a lane blocked while traffic
  passes in the next) has a video/radar zone (`<lane>-zone`), a `traffic-zone` device behind the same gateway
  reporting every `zone_every` seconds the vehicles standing in the lane (below 0.1 m/s: distance to the stop
  line, SUMO's waiting time as the time stood), which the platform's accident watch tests for a stalled vehicle
  (`cityos.traffic.stalls`); its first reading names its road section (the edge) and lane index;
- a lane id that makes no device name (real networks: `-201201945#0.78_1`) gives its devices a readable form
  with a digest instead (`cityos.traffic.naming`: the lane's own detector `lane_detector`, the zones', the
  cabinets' names and the signal ids alike; a valid id is kept as it is), which is also how the control loop
  finds the lane's detector entity;
- each signal's cabinet is an IoT `traffic-signal` device that takes `setPhase` RPC requests
  (`<prefix>/<cabinet>/rpc/request/<id>`), shows their yellow, all-red and green in SUMO at once, and
  acknowledges (`<prefix>/<cabinet>/rpc/response/<id>`).

Every device connects with its own access token as MQTT username (3.1.1, which both the demo's embedded
broker and Mosquitto speak). The platform only ever sees MQTT: nothing here calls into it. When the
demand ends, or SUMO fails, the simulation starts again from the same demand and the lamps show what the
cabinets were last told (`SumoField.restarts`).

`cityos demo --traffic sumo` runs the simulated city's grid this way (`cityos.sim.sumo_demo`); the control
loop's test runs a single junction.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cityos.traffic.models import MAX_LINK_CONNECTIONS
from cityos.traffic.naming import device_name, lane_detector, signal_id
from cityos.traffic.signals import SignalPlan
from cityos.traffic.stalls import MAX_STOPPED
from cityos.traffic.sumo import zone_report

ADVANCE_SUFFIX = "-advance"
STOPLINE_SUFFIX = "-stopline"
ZONE_SUFFIX = "-zone"
CABINET_SUFFIX = "-cabinet"

log = logging.getLogger("cityos.sim.sumo_field")

STEP_S = 0.5  # SUMO's step; the wall clock paces it
TICK_S = 0.02  # how often the thread looks for requests and lamp changes between steps
CONNECT_TIMEOUT_S = 10.0
MIN_ZONE_M = 5.0  # a stop-line zone shorter than a car is no detector (and `plan.stopline` refuses it)


@dataclass(frozen=True)
class ZoneLoop:
    """A stop-line or advance detector: a `traffic-flow` device over the last `distance` metres of one incoming
    lane."""

    lane: str
    device: str
    distance: float
    kind: str  # "stopline" or "advance"


@dataclass(frozen=True)
class ZoneLane:
    """A video or radar zone over one arterial incoming lane: a `traffic-zone` device reporting the vehicles
    standing in it (`cityos.traffic.stalls`), named by its road section (the SUMO edge) and lane index."""

    lane: str
    device: str
    segment: str
    index: str


def zone_lane(lane: str) -> ZoneLane:
    edge, index = lane.rsplit("_", 1)
    return ZoneLane(lane, device_name(lane, ZONE_SUFFIX), edge, index)


def advance_device(lane: str) -> str:
    return device_name(lane, ADVANCE_SUFFIX)


def stopline_device(lane: str) -> str:
    return device_name(lane, STOPLINE_SUFFIX)


def cabinet_device(tls: str) -> str:
    return device_name(tls, CABINET_SUFFIX)


@dataclass(frozen=True)
class SignalSite:
    """One signalised junction of the network as the platform registers it."""

    signal: str  # the platform's signal id
    tls: str  # SUMO's traffic light id
    plan: SignalPlan
    # Per link index, every (incoming lane, outgoing lane) connection it controls: one signal head often serves
    # several (RESCO Ingolstadt 21), and a route through another than the first must find the signal; () for an
    # index that drives no lane.
    connections: tuple[tuple[tuple[str, str], ...], ...]
    in_lanes: tuple[str, ...]
    lanes: tuple[str, ...]  # every detector lane of the plan: incoming, then outgoing
    cabinet: str  # the IoT `traffic-signal` device that takes its phase commands
    lon: float | None = None
    lat: float | None = None
    advance: tuple[ZoneLoop, ...] = ()  # the incoming lanes' advance detectors (lanes over `ADVANCE_M`)
    stopline: tuple[ZoneLoop, ...] = ()  # the incoming lanes' stop-line detectors
    zones: tuple[ZoneLane, ...] = ()  # the incoming arterial lanes' video/radar zones

    @property
    def links(self) -> tuple[tuple[str, str], ...]:
        """(incoming lane, outgoing lane) per link index, its first connection; ("", "") drives no lane."""
        return tuple(link[0] if link else ("", "") for link in self.connections)


def read_sites(net: Path, cabinet_of: Any = None, signal_of: Any = None,
               positions: Mapping[str, tuple[float, float]] | None = None) -> dict[str, SignalSite]:
    """The network's signalised junctions, with their plans, links and detector lanes (libsumo, briefly)."""
    from cityos.traffic.sumo import (
        ADVANCE_M,
        STOPLINE_ZONE_M,
        intersections_of,
        load_libsumo,
        plans_from_net,
        sumo_binary,
        zone_lanes,
    )

    libsumo = load_libsumo()

    plans = plans_from_net(net)
    libsumo.start([sumo_binary("sumo"), "-n", str(net), "--no-step-log", "true", "--no-warnings", "true"])
    try:
        sites: dict[str, SignalSite] = {}
        for crossing in intersections_of(libsumo, plans):
            connections = tuple(tuple((lane_in, lane_out) for lane_in, lane_out, _via in link)
                                for link in libsumo.trafficlight.getControlledLinks(crossing.tls))
            signal = signal_of(crossing.tls) if signal_of else signal_id(crossing.tls)
            lon, lat = (positions or {}).get(crossing.tls, (None, None))
            length = {lane: float(libsumo.lane.getLength(lane)) for lane in crossing.in_lanes}
            advance = tuple(ZoneLoop(lane, advance_device(lane), ADVANCE_M, "advance") for lane in crossing.in_lanes
                            if length[lane] > ADVANCE_M)
            stopline = tuple(ZoneLoop(lane, stopline_device(lane), round(min(STOPLINE_ZONE_M, length[lane]), 1),
                                      "stopline") for lane in crossing.in_lanes if length[lane] >= MIN_ZONE_M)
            sites[signal] = SignalSite(signal, crossing.tls, crossing.plan, connections, crossing.in_lanes,
                                       tuple(dict.fromkeys((*crossing.in_lanes, *crossing.out_lanes))),
                                       cabinet_of(crossing.tls) if cabinet_of else cabinet_device(crossing.tls),
                                       lon, lat, advance, stopline,
                                       tuple(zone_lane(lane) for lane in zone_lanes(crossing.in_lanes)))
    finally:
        libsumo.close()
    return sites


def plan_doc(site: SignalSite, *, min_green: float | None = None, max_green: float | None = None,
             fixed_green: float | None = None, yellow: float | None = None,
             all_red: float | None = None) -> dict[str, Any]:
    """The body of `plan` for `POST /api/traffic/signals` (`SignalIn`): the net's greens, clearances, links
    and advance detectors, or the times given instead."""
    phases = [{"state": p.state, "minGreen": min_green if min_green is not None else p.min_green,
               "maxGreen": max_green if max_green is not None else p.max_green,
               "fixedGreen": fixed_green if fixed_green is not None else p.fixed_green}
              for p in site.plan.phases]
    doc: dict[str, Any] = {
        "phases": phases, "yellow": site.plan.yellow if yellow is None else yellow,
        "allRed": site.plan.all_red if all_red is None else all_red, "conflicts": sorted(site.plan.conflicts),
        "links": [link_doc(site, index) for index in range(len(site.connections))]}
    for kind, zones in (("advance", site.advance), ("stopline", site.stopline)):
        if zones:
            doc[kind] = [{"lane": a.lane, "detector": a.device, "distance": a.distance} for a in zones]
    return doc


def link_doc(site: SignalSite, index: int) -> dict[str, Any] | None:
    """A plan's link `index`: its first connection (`in`, `out`) and, when it controls more, the others (`also`);
    None for a signal index that drives no lane (RESCO Ingolstadt 21 has two)."""
    connections = site.connections[index]
    if not connections:
        return None
    (lane_in, lane_out), further = connections[0], connections[1:MAX_LINK_CONNECTIONS]
    # A link of more connections than a plan takes (none on the RESCO networks: at most 4) keeps its first ones.
    doc: dict[str, Any] = {"in": lane_in, "out": lane_out}
    if further:
        doc["also"] = [{"in": a, "out": b} for a, b in further]
    return doc


def detector_lanes(sites: Mapping[str, SignalSite]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(lane for site in sites.values() for lane in site.lanes))


def zone_loops(sites: Mapping[str, SignalSite], kind: str | None = None) -> dict[str, ZoneLoop]:
    """Every site's stop-line and advance detectors (or those of one `kind`) by device name."""
    return {a.device: a for site in sites.values() for a in (*site.stopline, *site.advance)
            if kind is None or a.kind == kind}


def zones_of(sites: Mapping[str, SignalSite]) -> dict[str, tuple[ZoneLane, SignalSite]]:
    """Every site's video/radar zones by device name, with the junction whose stop line they report against."""
    return {zone.device: (zone, site) for site in sites.values() for zone in site.zones}


def detector_devices(sites: Mapping[str, SignalSite]) -> tuple[str, ...]:
    """The field's `traffic-flow` devices: the detector lanes' own (`lane_detector`), then the stop-line and advance
    detectors."""
    return (*map(lane_detector, detector_lanes(sites)), *zone_loops(sites))


def zone_detectors_file(net: Path, loops: Mapping[str, ZoneLoop], path: Path) -> Path:
    """An additional file with a lane-area detector per zone loop, named as its device."""
    from cityos.traffic.sumo import lane_end_detectors

    return lane_end_detectors(net, ((loop.device, loop.lane, loop.distance) for loop in loops.values()), path)


class DeviceLink:
    """One device's MQTT connection (3.1.1, its token as username), with its own network thread."""

    def __init__(self, url: str, name: str, token: str | None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from cityos.iot.ingest import broker_address

        host, port = broker_address(url)
        self.name = name
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv311)
        if token:
            self.client.username_pw_set(token)
        self.client.reconnect_delay_set(1, 5)
        self.connected = threading.Event()
        self._subscriptions: list[str] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.connect_async(host, port, 30)
        self.client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("device %s: the broker refused the connection (%s)", self.name, reason)
            return
        for topic in self._subscriptions:  # again after a reconnection
            client.subscribe(topic, qos=1)
        self.connected.set()

    def subscribe(self, topic: str, on_message: Any) -> None:
        self._subscriptions.append(topic)
        self.client.on_message = on_message
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: Any) -> None:
        self.client.publish(topic, orjson.dumps(payload), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class SumoField:
    """SUMO as the street, paced to the wall clock; its detectors and signal cabinets talk MQTT.

    `start` then `run` (until `stop` is set) then `close`, all from one thread: libsumo is one per process.
    """

    net: Path
    routes: Path
    sites: Mapping[str, SignalSite]
    mqtt_url: str
    prefix: str
    gateway: str  # the detector gateway's device name
    tokens: Mapping[str, str] = field(default_factory=dict)  # device name → access token
    report_every: float = 1.0  # simulated seconds between detector readings
    # Simulated seconds between the zones' readings (the `traffic-zone` profile's interval): the stalled-vehicle
    # test wants 90 s of standing confirmed over two readings, so more often buys little and costs ingest.
    zone_every: float = 30.0
    chunk: int = 50  # lanes per gateway message
    seed: int = 5
    feeding: bool = True  # False: the detectors fall silent (a test's outage)
    # True: all cabinets take their requests and answer over ONE connection, subscribed to every device's
    # request topic; for a broker without per-device credentials and hundreds of cabinets (a process cannot
    # hold hundreds of MQTT clients: each takes three descriptors and paho's select() stops at 1,024).
    shared_cabinet_link: bool = False
    sumo_args: tuple[str, ...] = ()  # more SUMO options (a benchmark's trip output)
    end_s: float | None = None  # `run` returns once this much simulated time has passed (None: until `stop`)
    shown: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # tls → (wall time, state) per change
    requests: list[int] = field(default_factory=list)
    actuated: dict[int, float] = field(default_factory=dict)  # RPC id → time.monotonic() its first lamps showed
    acknowledged: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    restarts: int = 0
    steps: int = 0
    published: int = 0  # lane readings sent
    _pending: queue.Queue[tuple[str, int, bytes]] = field(default_factory=queue.Queue)
    _schedule: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    _entered: dict[str, int] = field(default_factory=dict)
    _seen: dict[str, set[str]] = field(default_factory=dict)
    _links: list[DeviceLink] = field(default_factory=list)
    _cabinets: dict[str, DeviceLink] = field(default_factory=dict)
    # Road traffic per edge since the congestion index last took it: [speed km/h, flow veh/h, samples].
    _edge_sums: dict[str, list[float]] = field(default_factory=dict)
    _edge_km: dict[str, float] = field(default_factory=dict)
    _edge_lock: threading.Lock = field(default_factory=threading.Lock)
    _zones: dict[str, ZoneLoop] = field(default_factory=dict)  # stop-line and advance detectors by device
    _video: dict[str, tuple[ZoneLane, float]] = field(default_factory=dict)  # video/radar zones: (zone, lane length)
    _video_named: bool = False  # the zones' first readings (since SUMO started) named their lanes
    zone_readings: int = 0  # video/radar zone readings sent
    _additional: Path | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, initial: Mapping[str, str]) -> None:
        """Start SUMO with each signal's lamps at `initial[signal]`, and connect the devices."""
        self._lamps = {site.tls: initial.get(site.signal, site.plan.phases[0].state) for site in self.sites.values()}
        self._by_signal = {site.signal: site for site in self.sites.values()}
        self._lanes = detector_lanes(self.sites)
        self._lane_devices = {lane: lane_detector(lane) for lane in self._lanes}
        self._zones = zone_loops(self.sites)
        if self._zones:
            self._additional = Path(tempfile.mkdtemp(prefix="cityos-field-")) / "zones.add.xml"
            zone_detectors_file(self.net, self._zones, self._additional)
        self._start_sumo()
        self._detectors = self._connect(self.gateway)
        cabinets = dict.fromkeys(site.cabinet for site in self.sites.values())
        if self.shared_cabinet_link:
            shared = self._connect(f"{self.gateway}-cabinets")
            shared.subscribe(f"{self.prefix}/+/rpc/request/+", self._on_request)
            self._cabinets = dict.fromkeys(cabinets, shared)
        else:
            for cabinet in cabinets:
                link = self._connect(cabinet)
                link.subscribe(f"{self.prefix}/{cabinet}/rpc/request/+", self._on_request)
                self._cabinets[cabinet] = link
        for link in self._links:
            if not link.connected.wait(CONNECT_TIMEOUT_S):
                raise ConnectionError(f"device {link.name} could not connect to {self.mqtt_url}")
        self.publish_zone_attributes()

    def _connect(self, name: str) -> DeviceLink:
        link = DeviceLink(self.mqtt_url, name, self.tokens.get(name))
        self._links.append(link)
        return link

    def _start_sumo(self) -> None:
        from cityos.traffic.sumo import load_libsumo, sumo_binary

        libsumo = load_libsumo()

        args = [sumo_binary("sumo"), "-n", str(self.net), "-r", str(self.routes), "--step-length", str(STEP_S),
                "--no-step-log", "true", "--no-warnings", "true", "--seed", str(self.seed), "--time-to-teleport", "120"]
        if self._additional is not None:
            args += ["-a", str(self._additional)]
        libsumo.start([*args, *self.sumo_args])
        for tls, state in self._lamps.items():
            self._show(tls, state)
        self._seen = {name: set() for name in (*self._lanes, *self._zones)}
        self._entered = dict.fromkeys((*self._lanes, *self._zones), 0)
        self._lane_speed = {a.lane: float(libsumo.lane.getMaxSpeed(a.lane)) for a in self._zones.values()}
        self._video = {device: (zone, float(libsumo.lane.getLength(zone.lane)))
                       for device, (zone, _site) in zones_of(self.sites).items()}
        self._video_named = False
        self._edge_km = {edge: libsumo.lane.getLength(f"{edge}_0") / 1000.0
                         for edge in libsumo.edge.getIDList() if not edge.startswith(":")}  # ':' = inside junctions

    def _restart(self, why: str) -> None:
        import libsumo

        log.info("SUMO field: %s; starting the demand again", why)
        self.restarts += 1
        try:
            libsumo.close()
        except Exception:  # already gone
            log.debug("libsumo.close failed", exc_info=True)
        self._start_sumo()

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._links.clear()
        self._close_street()
        if self._additional is not None:
            shutil.rmtree(self._additional.parent, ignore_errors=True)

    def _close_street(self) -> None:
        import libsumo

        try:
            libsumo.close()
        except Exception:  # never started, or SUMO ended on its own
            log.debug("libsumo.close failed", exc_info=True)

    # ------------------------------------------------------------------ the cabinets

    def _on_request(self, _client: Any, _userdata: Any, message: Any) -> None:  # an MQTT thread
        parts = message.topic.split("/")
        if parts[-1].isdecimal() and parts[-4] in self._cabinets:  # another device's request on a shared link
            self._pending.put((parts[-4], int(parts[-1]), message.payload))

    def _show(self, tls: str, state: str) -> None:
        self._set_lamps(tls, state)
        self._lamps[tls] = state
        self.shown.setdefault(tls, []).append((time.monotonic(), state))

    def _set_lamps(self, tls: str, state: str) -> None:
        import libsumo

        libsumo.trafficlight.setRedYellowGreenState(tls, state)

    def apply_requests(self) -> None:
        """Show each `setPhase` at once (its yellow first) and acknowledge it; refuse what the cabinet cannot do."""
        while not self._pending.empty():
            cabinet, rpc_id, payload = self._pending.get()
            self.requests.append(rpc_id)
            answer = self._schedule_phase(cabinet, payload)
            if "error" not in answer:
                self.actuated[rpc_id] = time.monotonic()
            self._cabinets[cabinet].publish(f"{self.prefix}/{cabinet}/rpc/response/{rpc_id}", answer)
            (self.rejected if "error" in answer else self.acknowledged).append(rpc_id)

    def _schedule_phase(self, cabinet: str, payload: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(payload)
            params = body["params"]
            site = self._by_signal[str(params["signal"])]
            if body.get("method") != "setPhase" or site.cabinet != cabinet:
                raise KeyError(body.get("method"))
            now = time.monotonic()
            schedule = []
            for stage in params["sequence"]:
                state = str(stage["state"])
                if len(state) != len(site.connections):
                    raise ValueError(f"state {state!r} does not fit {len(site.connections)} links")
                schedule.append((now, state))
                now += float(stage["seconds"] or 0.0)
            if not schedule:
                raise ValueError("an empty sequence")
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            log.warning("cabinet %s: request not applied: %r", cabinet, exc)
            return {"error": f"not applied: {exc!r}"[:200]}
        self._show(site.tls, schedule.pop(0)[1])  # the yellow at once: the decision is on the street now
        self._schedule[site.tls] = schedule
        return {"phase": params["phase"]}

    def advance_lamps(self) -> None:
        now = time.monotonic()
        for tls, schedule in self._schedule.items():
            while schedule and schedule[0][0] <= now:
                self._show(tls, schedule.pop(0)[1])

    # ------------------------------------------------------------------ the street and its detectors

    def step(self) -> None:
        import libsumo

        if libsumo.simulation.getMinExpectedNumber() == 0:
            self._restart("the demand is over")
        libsumo.simulationStep()
        self.steps += 1
        for lane in self._lanes:
            ids = set(libsumo.lane.getLastStepVehicleIDs(lane))
            self._entered[lane] += len(ids - self._seen[lane])
            self._seen[lane] = ids
        for device in self._zones:
            ids = set(libsumo.lanearea.getLastStepVehicleIDs(device))
            self._entered[device] += len(ids - self._seen[device])
            self._seen[device] = ids

    def readings(self) -> dict[str, dict[str, float]]:
        """Each detector's reading since the last call: the lanes' (by lane id), then the stop-line and advance
        detectors' (by device name)."""
        import libsumo

        values = {}
        for lane in self._lanes:
            values[lane] = {"occupancy": round(libsumo.lane.getLastStepOccupancy(lane), 2),
                            "speed": round(libsumo.lane.getLastStepMeanSpeed(lane) * 3.6, 2),
                            "intensity": self._entered[lane]}
            self._entered[lane] = 0
        for device, loop in self._zones.items():
            speed = libsumo.lanearea.getLastStepMeanSpeed(device)  # -1 with nobody on it: a loop reads free flow
            values[device] = {"occupancy": round(min(100.0, libsumo.lanearea.getLastStepOccupancy(device)), 2),
                              "speed": round((speed if speed >= 0 else self._lane_speed[loop.lane]) * 3.6, 2),
                              "queue": round(max(0.0, libsumo.lanearea.getJamLengthMeters(device)), 1),
                              "intensity": self._entered[device]}
            self._entered[device] = 0
        return values

    def publish_zone_attributes(self) -> None:
        """The stop-line and advance detectors' client attributes through the gateway: the lane each watches and
        how far up from the stop line it reaches (the Device entities carry them; the signal's plan links them)."""
        loops = list(self._zones.values())
        topic = f"{self.prefix}/{self.gateway}/gateway/attributes"
        for start in range(0, len(loops), self.chunk):
            self._detectors.publish(topic, {a.device: {"lane": a.lane, "distanceFromStopLine": a.distance,
                                                       "detectorKind": a.kind}
                                            for a in loops[start:start + self.chunk]})

    def sample_edges(self) -> None:
        """Add every road edge's mean speed and flow now to the sums the congestion index takes."""
        import libsumo

        samples = {}
        for edge, km in self._edge_km.items():
            speed = libsumo.edge.getLastStepMeanSpeed(edge) * 3.6  # the edge's limit when it is empty
            samples[edge] = (speed, libsumo.edge.getLastStepVehicleNumber(edge) / km * speed)  # density × speed
        with self._edge_lock:
            for edge, (speed, flow) in samples.items():
                sums = self._edge_sums.setdefault(edge, [0.0, 0.0, 0])
                sums[0] += speed
                sums[1] += flow
                sums[2] += 1

    def take_edge_traffic(self) -> dict[str, tuple[float, float]]:
        """Each edge's mean speed (km/h) and flow (veh/h) since the last call (any thread); then start again."""
        with self._edge_lock:
            sums, self._edge_sums = self._edge_sums, {}
        return {edge: (speed / n, flow / n) for edge, (speed, flow, n) in sums.items() if n}

    def publish_readings(self) -> None:
        stamp = int(time.time() * 1000)
        # A lane's reading goes out under its detector's device name; a zone detector's key is its device already.
        lanes = [(self._lane_devices.get(key, key), values) for key, values in self.readings().items()]
        topic = f"{self.prefix}/{self.gateway}/gateway/telemetry"
        self.published += len(lanes)
        for start in range(0, len(lanes), self.chunk):
            self._detectors.publish(topic, {device: [{"ts": stamp, "values": values}]
                                            for device, values in lanes[start:start + self.chunk]})

    def video_readings(self) -> dict[str, dict[str, Any]]:
        """Each video/radar zone's reading now: the vehicles standing in its lane. The first after SUMO (re)starts
        also names the lane (`segment`, `lane`): the hub keeps them on the zone's entity, and later readings need
        not repeat them (each would be a history row)."""
        import libsumo

        values: dict[str, dict[str, Any]] = {}
        for device, (zone, length) in self._video.items():
            stopped = [{"distanceToStopLine": distance, "stoppedFor": stood}
                       for distance, stood in zone_report(libsumo, zone.lane, length)]
            values[device] = {"stoppedVehicles": stopped[:MAX_STOPPED]}
            if not self._video_named:
                values[device].update(segment=zone.segment, lane=zone.index)
        self._video_named = True
        return values

    def publish_video(self) -> None:
        stamp = int(time.time() * 1000)
        zones = list(self.video_readings().items())
        topic = f"{self.prefix}/{self.gateway}/gateway/telemetry"
        self.zone_readings += len(zones)
        for start in range(0, len(zones), self.chunk):
            self._detectors.publish(topic, {device: [{"ts": stamp, "values": values}]
                                            for device, values in zones[start:start + self.chunk]})

    def run(self, stop: threading.Event) -> None:
        """Step SUMO at the wall clock's pace until `stop` is set."""
        began = time.monotonic()
        steps = 0
        every = max(1, round(self.report_every / STEP_S))
        zone_every = max(1, round(self.zone_every / STEP_S))
        while not stop.is_set() and (self.end_s is None or steps * STEP_S < self.end_s):
            self.apply_requests()
            self.advance_lamps()
            if time.monotonic() - began >= steps * STEP_S:
                try:
                    self.step()
                except Exception as exc:  # SUMO ended or failed: the city goes on
                    self._restart(f"SUMO failed ({exc!r})")
                steps += 1
                if (steps - 1) % every == 0:  # from the first step on
                    self.sample_edges()
                    if self.feeding:
                        self.publish_readings()
                if self._video and self.feeding and (steps - 1) % zone_every == 0:
                    self.publish_video()
            stop.wait(TICK_S)

