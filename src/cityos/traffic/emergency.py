"""Fire engines get a green wave: a dispatched fire incident requests signal pre-emption along its route.

Event-driven and small: the incident domain publishes `ops.incident.changed` for every change; when a
fire incident (the routing table's `fire*` / `smoke*` categories, e.g. one opened by the smoke-detector
rule) is dispatched, the responding station is the `FireStation` entity of the hub with the shortest
drive to it on the road network (the city's grid, `citynet.road_graph`). The station starts on the
road section nearest to it and drives to the junction nearest the incident; the signals on that route
(their plans' links name the incoming and outgoing lanes) and the phase serving the route through each
are found as the SUMO pre-emption does (`preemption.route_signals`), and one pre-emption request goes
to `TrafficService.preempt`: the signals the engine reaches within the lead time are commanded through
the safety layer at once, the rest answer `later` and are served as the vehicle's progress comes in
(`POST /api/traffic/preemptions`). `traffic.preemption.requested` carries the route and the outcome.

One request per dispatch (incident id and dispatch time): replays and later changes of the same incident
(accepted, on site) request nothing more; a re-dispatch requests again.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from cityos.core.errors import NonexistentTenant, ProblemError
from cityos.core.events import Event, EventBus
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.hub.store import EntityQuery
from cityos.security.policy import Principal
from cityos.traffic.models import PreemptIn, PreemptSignalIn
from cityos.traffic.preemption import route_signals
from cityos.traffic.service import RpcSender, TrafficService

log = logging.getLogger("cityos.traffic.emergency")

INCIDENT_CHANGED = "ops.incident.changed"
REQUESTED = "traffic.preemption.requested"
FIRE_CATEGORIES = ("fire*", "smoke*")
STATION_TYPE = "FireStation"
LOCATION = "https://uri.etsi.org/ngsi-ld/location"
MAX_SIGNALS = 64  # PreemptIn's bound
MAX_REMEMBERED = 10_000


def city_seed() -> int:
    """The simulated city whose roads the platform routes on: the base map's (CITYOS_MAP_SEED, else 42)."""
    try:
        return int(os.environ.get("CITYOS_MAP_SEED", "42"))
    except ValueError:
        return 42


def default_graph() -> nx.DiGraph:
    from cityos.sim.city import build_city
    from cityos.traffic.citynet import road_graph

    return road_graph(build_city(city_seed()))


def xy(lon: float, lat: float, lat0: float) -> tuple[float, float]:
    return lon * 111_320.0 * math.cos(math.radians(lat0)), lat * 110_540.0


def point_of(location: Any) -> tuple[float, float] | None:
    if not isinstance(location, dict) or location.get("type") != "Point":
        return None
    coordinates = location.get("coordinates")
    if (not isinstance(coordinates, list | tuple) or len(coordinates) < 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in coordinates[:2])):
        return None
    lon, lat = float(coordinates[0]), float(coordinates[1])
    return (lon, lat) if -180 <= lon <= 180 and -90 <= lat <= 90 else None


@dataclass(frozen=True)
class Route:
    edges: list[str]
    nodes: list[str]
    offset: float  # metres along the first edge where the vehicle starts
    length: float  # metres to drive


def nearest_node(g: nx.DiGraph, lon: float, lat: float) -> str:
    px, py = xy(lon, lat, lat)
    return str(min(g.nodes, key=lambda n: math.dist((px, py), xy(g.nodes[n]["lon"], g.nodes[n]["lat"], lat))))


def nearest_edges(g: nx.DiGraph, lon: float, lat: float) -> list[tuple[str, str, float]]:
    """The road section nearest to the point, both ways: (from, to, metres along it to the point)."""
    px, py = xy(lon, lat, lat)
    best: tuple[float, str, str, float] | None = None
    for a, b, data in g.edges(data=True):
        ax, ay = xy(g.nodes[a]["lon"], g.nodes[a]["lat"], lat)
        bx, by = xy(g.nodes[b]["lon"], g.nodes[b]["lat"], lat)
        dx, dy = bx - ax, by - ay
        span = dx * dx + dy * dy
        t = 0.0 if span == 0 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / span))
        gap = math.dist((px, py), (ax + t * dx, ay + t * dy))
        if best is None or gap < best[0]:
            best = (gap, a, b, t * float(data["length"]))
    if best is None:
        return []
    _gap, a, b, along = best
    return [(a, b, along), (b, a, float(g[b][a]["length"]) - along)]


def route_between(g: nx.DiGraph, start: tuple[float, float], target: tuple[float, float]) -> Route | None:
    """The shortest drive from a point (on its nearest road section, either way) to the junction nearest
    the target."""
    goal = nearest_node(g, *target)
    best: Route | None = None
    for a, b, along in nearest_edges(g, *start):
        try:
            rest = nx.shortest_path(g, b, goal, weight="length")
        except nx.NetworkXNoPath:
            continue
        nodes = [a, *rest]
        edges = [str(g[u][v]["id"]) for u, v in itertools.pairwise(nodes)]
        length = sum(float(g[u][v]["length"]) for u, v in itertools.pairwise(nodes)) - along
        if best is None or length < best.length:
            best = Route(edges, nodes, along, length)
    return best


def is_fire(category: Any) -> bool:
    return isinstance(category, str) and any(fnmatch.fnmatchcase(category, p) for p in FIRE_CATEGORIES)


@dataclass
class EmergencyRoutes:
    """The `ops.incident.changed` consumer that asks for a green wave for each dispatched fire incident."""

    bus: EventBus
    hub: HubService
    ctx: ActiveContext
    traffic: TrafficService
    sender: Callable[[], RpcSender | None] = lambda: None
    graph_factory: Callable[[], nx.DiGraph] = default_graph
    handled: dict[tuple[str, str, str], None] = field(default_factory=dict)
    _graph: nx.DiGraph | None = None

    def subscribe(self) -> Any:
        return self.bus.subscribe(INCIDENT_CHANGED, self.on_incident, group="traffic-emergency")

    async def graph(self) -> nx.DiGraph:
        if self._graph is None:
            self._graph = await asyncio.to_thread(self.graph_factory)
        return self._graph

    async def on_incident(self, event: Event) -> None:
        view = event.payload.get("incident")
        if not isinstance(view, dict) or view.get("status") != "dispatched" or not is_fire(view.get("category")):
            return
        target = point_of(view.get("location"))
        if target is None:
            return
        tenant = str(event.payload.get("tenant") or "")
        key = (tenant, str(view.get("id")), str(view.get("dispatchedAt")))
        if key in self.handled:
            return  # one request per dispatch
        self.handled[key] = None
        if len(self.handled) > MAX_REMEMBERED:
            self.handled.pop(next(iter(self.handled)))
        try:
            await self.request(tenant, str(view["id"]), target)
        except ProblemError as exc:  # an unknown signal or tenant: nothing to pre-empt, the dispatch stands
            log.warning("pre-emption for incident %s not requested: %s", view.get("id"), exc.detail)

    async def stations(self, tenant: str) -> list[tuple[str, tuple[float, float]]]:
        try:
            found, _ = await self.hub.query(tenant, EntityQuery(types=[self.ctx.expand(STATION_TYPE)], limit=1000))
        except NonexistentTenant:
            return []
        out = []
        for record in found:
            instances = record.attrs.get(LOCATION) or []
            point = point_of(instances[0].get("value")) if instances else None
            if point is not None:
                out.append((record.id, point))
        return out

    async def request(self, tenant: str, incident: str, target: tuple[float, float]) -> dict[str, Any] | None:
        """Route the nearest station's engine to the incident and request pre-emption along the route."""
        stations = await self.stations(tenant)
        if not stations:
            log.info("fire incident %s: no FireStation in the hub, no route", incident)
            return None
        g = await self.graph()
        routes = [(route, station) for station, point in stations
                  if (route := route_between(g, point, target)) is not None]
        if not routes:
            return None
        route, station = min(routes, key=lambda pair: pair[0].length)
        principal = Principal("cityos-emergency-routes", kind="service", role="operator", tenant=tenant)
        lengths = {str(d["id"]): float(d["length"]) for _a, _b, d in g.edges(data=True)}
        signals = route_signals(route.edges, lengths, await self.traffic.movements(principal, tenant))
        vehicle = f"fire-{incident}"[:64]
        outcome: dict[str, Any] | None = None
        if signals:
            spec = PreemptIn(vehicle=vehicle, incident=incident[:64], speed=0, signals=[
                PreemptSignalIn(signal=s.tls, phase=s.phase, distance=round(max(0.0, s.stop_at - route.offset), 1),
                                flushPhase=s.flush_phase)
                for s in signals[:MAX_SIGNALS]])
            outcome = await self.traffic.preempt(principal, tenant, spec, self.sender())
        result = {"tenant": tenant, "incident": incident, "vehicle": vehicle, "station": station,
                  "route": {"nodes": route.nodes, "edges": route.edges, "lengthM": round(route.length)},
                  "signals": (outcome or {}).get("signals", [])}
        await self.bus.publish(REQUESTED, result)
        return result
