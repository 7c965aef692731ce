"""Placing devices in the simulated city: which kinds, where, and which gateway carries them.

Devices sit where a city would put them: traffic detectors and streetlights on roads, water gauges
on rivers, parking sensors by car parks, wristbands near elderly-care centres, smoke detectors in
schools and hospitals. Most devices report through a district gateway (one MQTT connection for
hundreds of devices, as ThingsBoard's gateway API intends); a few report over their own connection.
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from shapely.geometry import LineString, Point

from cityos.sim.city import City, random_point_in

# Share of each device kind in a deployment. Parking sensors and meters are the bulk of any real
# city's IoT estate; water gauges are few but matter for floods.
KIND_WEIGHTS: dict[str, float] = {
    "parking-spot": 0.22, "smart-meter": 0.15, "traffic-flow": 0.12, "smoke": 0.10, "waste-bin": 0.10,
    "streetlight": 0.10, "air-quality": 0.06, "noise": 0.06, "water-level": 0.03, "water-quality": 0.03,
    "wearable": 0.03,
}
ON_ROADS = {"traffic-flow", "streetlight", "noise"}
ON_RIVERS = {"water-level", "water-quality"}
NEAR_POI = {"parking-spot": ("carPark",), "wearable": ("eldercare",), "smoke": ("school", "hospital", "eldercare"),
            "air-quality": ("school", "hospital")}


@dataclass(frozen=True)
class AttributeSpec:
    key: str
    attr: str
    kind: str  # "number", "boolean" or "string"
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    entity_type: str
    interval: int
    attributes: dict[str, AttributeSpec]

    def in_range(self, key: str, value: Any) -> bool:
        spec = self.attributes.get(key)
        if spec is None:
            return False
        if spec.kind == "boolean":
            return isinstance(value, bool)
        if spec.kind == "string":
            return isinstance(value, str) and (not spec.enum or value in spec.enum)
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high))


def load_profiles() -> dict[str, Profile]:
    """The IoT domain's device profiles (src/cityos/iot/profiles.json), the simulator's single source of ranges."""
    raw = json.loads(resources.files("cityos.iot").joinpath("profiles.json").read_text(encoding="utf-8"))
    profiles = {}
    for p in raw["profiles"]:
        attrs = {}
        for key, a in p["attributes"].items():
            kind = a.get("type", "number")
            attrs[key] = AttributeSpec(key, a["attr"], kind, a.get("unitCode"), a.get("min"), a.get("max"),
                                       tuple(a.get("enum", ())))
        profiles[p["id"]] = Profile(p["id"], p["name"], p["entityType"], int(p["intervalSeconds"]), attrs)
    return profiles


@dataclass(frozen=True)
class SimDevice:
    name: str
    index: int
    profile: str
    lon: float
    lat: float
    district_id: str
    anchor: str | None  # the road, river or point of interest the device belongs to
    interval: int  # seconds between readings
    phase: float  # seconds into the interval of the first reading, so devices do not all report at once
    gateway: str | None = None  # None: the device has its own MQTT connection


@dataclass(frozen=True)
class Gateway:
    name: str
    district_id: str
    devices: tuple[str, ...]


@dataclass
class Deployment:
    devices: list[SimDevice]
    gateways: list[Gateway]
    profiles: dict[str, Profile]
    by_name: dict[str, SimDevice] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {d.name: d for d in self.devices}

    @property
    def direct(self) -> list[SimDevice]:
        return [d for d in self.devices if d.gateway is None]


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` devices across kinds by weight (largest remainder), at least one of each when possible."""
    kinds = sorted(weights)
    floor_share = 1 if total >= len(kinds) else 0
    rest = total - floor_share * len(kinds)
    norm = sum(weights.values())
    exact = {k: rest * weights[k] / norm for k in kinds}
    counts = {k: floor_share + int(exact[k]) for k in kinds}
    leftover = total - sum(counts.values())
    for k in sorted(kinds, key=lambda k: (-(exact[k] - int(exact[k])), k))[:leftover]:
        counts[k] += 1
    return counts


def place_devices(city: City, total: int, seed: int = 42, *, per_gateway: int = 250, direct: int = 8,
                  kinds: dict[str, float] | None = None) -> Deployment:
    """Place `total` devices in `city`; the same city, total and seed always give the same deployment."""
    profiles = load_profiles()
    weights = kinds or KIND_WEIGHTS
    unknown = set(weights) - set(profiles)
    if unknown:
        raise ValueError(f"unknown device kinds: {sorted(unknown)}")
    rng = random.Random(f"devices:{seed}:{total}")
    counts = allocate(total, weights)
    placed: list[SimDevice] = []
    for kind in sorted(counts):
        interval = profiles[kind].interval
        for n in range(counts[kind]):
            point, anchor = _spot(rng, city, kind)
            district = city.district_at(point)
            placed.append(SimDevice(f"sim-{kind}-{n + 1:05d}", len(placed), kind, point.x, point.y, district.id,
                                    anchor, interval, round(rng.uniform(0, interval), 3)))
    return _with_gateways(placed, profiles, per_gateway, direct)


def _spot(rng: random.Random, city: City, kind: str) -> tuple[Point, str | None]:
    if kind in ON_RIVERS and city.rivers:
        river = rng.choice(city.rivers)
        return _on_line(rng, river.line, 0.0002), river.id
    if kind in ON_ROADS and city.roads:
        # Arterials carry most detectors: that is where the traffic is.
        arterials = [r for r in city.roads if r.category == "arterial"]
        pool = arterials if arterials and rng.random() < 0.6 else city.roads
        road = rng.choice(pool)
        return _on_line(rng, road.line, 0.0003), road.id
    poi_kinds = NEAR_POI.get(kind)
    if poi_kinds and rng.random() < 0.8:
        candidates = [p for p in city.pois if p.kind in poi_kinds]
        if candidates:
            poi = rng.choice(candidates)
            jitter = 0.002
            point = Point(round(poi.point.x + rng.uniform(-jitter, jitter), 6),
                          round(poi.point.y + rng.uniform(-jitter, jitter), 6))
            if city.district(poi.district_id).polygon.contains(point):
                return point, poi.id
    district = rng.choices(city.districts, weights=[d.population for d in city.districts])[0]
    return random_point_in(rng, district.polygon), None


def _on_line(rng: random.Random, line: LineString, jitter: float) -> Point:
    p = line.interpolate(rng.uniform(0.02, 0.98), normalized=True)
    return Point(round(p.x + rng.uniform(-jitter, jitter), 6), round(p.y + rng.uniform(-jitter, jitter), 6))


def _with_gateways(placed: list[SimDevice], profiles: dict[str, Profile], per_gateway: int,
                   direct: int) -> Deployment:
    # A few devices (one per kind, cheapest first) talk MQTT themselves, to exercise the direct device API.
    direct_names: set[str] = set()
    for device in placed:
        if len(direct_names) >= direct:
            break
        if not any(d.startswith(f"sim-{device.profile}-") for d in direct_names):
            direct_names.add(device.name)
    by_district: dict[str, list[SimDevice]] = {}
    for device in placed:
        if device.name not in direct_names:
            by_district.setdefault(device.district_id, []).append(device)
    gateway_of: dict[str, str] = {}
    gateways: list[Gateway] = []
    for district_id in sorted(by_district):
        members = by_district[district_id]
        for chunk_no, start in enumerate(range(0, len(members), per_gateway)):
            chunk = members[start:start + per_gateway]
            name = f"sim-gateway-{district_id.removeprefix('district-')}-{chunk_no + 1}"
            gateways.append(Gateway(name, district_id, tuple(d.name for d in chunk)))
            gateway_of.update((d.name, name) for d in chunk)
    devices = [
        SimDevice(d.name, d.index, d.profile, d.lon, d.lat, d.district_id, d.anchor, d.interval, d.phase,
                  gateway_of.get(d.name))
        for d in placed
    ]
    return Deployment(devices, gateways, profiles)
