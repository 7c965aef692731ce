"""Readings that look like a city's: daily and weekly rhythms, weather drift, episodes, floods, and traffic
that rain slows and road incidents block.

The model has two layers:
- city-wide fields that depend only on time and the seed (traffic rhythm, weather drift as AR(1)
  processes, pollution episodes spreading along district borders, rain and the river levels that
  follow it with a lag). They are computed on a fixed grid from the simulation start, so they are the
  same whatever order devices ask in;
- road incidents (a lane blocked for 15–90 minutes somewhere along a road, its queue spilling upstream),
  drawn per road and hour from the seed alone, so they too are the same whatever order devices ask in;
- per-device state (its own AR(1) noise, battery, a parking bay's occupancy, a meter's total) that
  moves forward reading by reading. Each device has its own random stream, so one device's readings
  do not depend on how many other devices there are.
"""

# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shapely.geometry import Point

from cityos.sim.city import City
from cityos.sim.devices import Deployment, SimDevice

LOCAL_UTC_OFFSET_HOURS = 8  # Haikou is UTC+8; rush hours follow local clocks
GRID_SECONDS = 60.0  # resolution of the city-wide fields


@dataclass(frozen=True)
class PollutionEpisode:
    """A pollution episode: it starts in one district and reaches each further ring of neighbours later and weaker."""

    origin: str
    start: datetime
    peak_pm25: float = 160.0  # µg/m³ added at the origin at the peak
    ramp_hours: float = 1.0
    hold_hours: float = 3.0
    decay_hours: float = 3.0
    spread_hours: float = 1.0  # delay per ring of neighbours
    attenuation: float = 0.65  # share of the peak that reaches the next ring


@dataclass(frozen=True)
class RainEvent:
    start: datetime
    hours: float
    mm_per_hour: float


@dataclass(frozen=True)
class Scenario:
    episodes: tuple[PollutionEpisode, ...] = ()
    rains: tuple[RainEvent, ...] = ()
    river_lag_hours: float = 3.0  # linear-reservoir time constant: how long a river takes to answer rain
    name: str = "normal"
    incidents_per_road_day: float = 0.0  # lane blockages per road and day (0: none)


@dataclass(frozen=True)
class RoadIncident:
    """Lanes blocked at `position_m` along a road from `start` for `minutes`. Traffic runs towards growing
    positions when `direction` is 1 (towards smaller ones when -1); the queue grows upstream while the lanes
    are blocked, with the demand, and drains after they reopen."""

    road: str
    start: float  # epoch seconds
    minutes: float
    position_m: float
    direction: int
    severity: float  # share of the speed lost inside the queue


INCIDENT_MINUTES = (15.0, 90.0)
INCIDENT_SITE_M = 150.0        # a detector this close to the blockage is at the site
QUEUE_GROWTH_M_PER_MIN = 70.0  # upstream growth of the queue at the weekday peak's demand
QUEUE_DRAIN_M_PER_MIN = 150.0  # how fast it clears once the lanes reopen
QUEUE_MAX_M = 4000.0
METRES_PER_DEGREE = 105_000.0  # at the city's latitude, near enough for distances along a road
RAIN_CAPACITY_LOSS = 0.14      # heavy rain takes 14 % of a road's capacity (HCM: 10–17 %)
RAIN_FREE_SPEED_LOSS = 0.1     # and drivers keep 10 % slower even on an empty road (HCM: 6–12 %)
RAIN_SCALE_MM_H = 12.0         # rain at which the effect is 63 % of its full size


def wetness(rain_mm_h: float) -> float:
    """0 dry … 1 downpour: how much rain slows traffic, saturating (the first 10 mm/h count most)."""
    return 1.0 - math.exp(-max(0.0, rain_mm_h) / RAIN_SCALE_MM_H)


def weather_scenario(seed: int, start: datetime, days: int, incidents_per_road_day: float = 3.0) -> Scenario:
    """Days of weather for traffic: showers at any hour on about half the days, a steady rainy day about one
    day in six, and road incidents; all from the seed."""
    rng = random.Random(f"traffic-weather:{seed}")
    rains = []
    for day in range(days):
        if rng.random() < 0.5:
            for _ in range(rng.choice((1, 1, 2))):
                at = start + timedelta(days=day, hours=rng.uniform(0, 24))
                rains.append(RainEvent(at, rng.uniform(0.5, 3.0), rng.uniform(5, 40)))
        if rng.random() < 1 / 6:
            at = start + timedelta(days=day, hours=rng.uniform(0, 12))
            rains.append(RainEvent(at, rng.uniform(6, 12), rng.uniform(3, 10)))
    return Scenario(rains=tuple(rains), name="weather", incidents_per_road_day=incidents_per_road_day)


def demo_scenario(city: City, start: datetime) -> Scenario:
    """Things worth seeing within the first minutes of `cityos demo` at 60×: smog in one district, then a flood.

    At 60× one real minute is one simulated hour: the episode peaks at its origin after ~40 s and
    reaches the neighbours about half a minute later; the rivers climb past 4 m within ~2 minutes.
    When ingestion holds the clock back (SQLite on a laptop), it all takes a few times longer.
    """
    origin = max(city.districts, key=lambda d: (len(d.neighbours), d.population)).id
    return Scenario(
        episodes=(PollutionEpisode(origin, start + timedelta(minutes=3), peak_pm25=220.0, ramp_hours=0.5,
                                   hold_hours=2.0, decay_hours=2.0, spread_hours=0.4),),
        rains=(RainEvent(start + timedelta(minutes=5), hours=1.5, mm_per_hour=80.0),),
        river_lag_hours=0.5,
        name="demo",
    )


def random_scenario(city: City, seed: int, start: datetime, days: int = 7) -> Scenario:
    """A week of ordinary weather: a few showers and the odd pollution episode, all from the seed."""
    rng = random.Random(f"scenario:{seed}")
    rains = []
    episodes = []
    ids = [d.id for d in city.districts]
    for day in range(days):
        # Hainan's afternoons bring convective showers on about half the days.
        if rng.random() < 0.5:
            at = start + timedelta(days=day, hours=rng.uniform(4, 10))
            rains.append(RainEvent(at, rng.uniform(0.5, 3.0), rng.uniform(5, 40)))
        if rng.random() < 0.3:
            at = start + timedelta(days=day, hours=rng.uniform(0, 24))
            episodes.append(PollutionEpisode(rng.choice(ids), at, peak_pm25=rng.uniform(60, 160)))
    return Scenario(tuple(episodes), tuple(rains))


def local_hour(ts: float) -> tuple[float, int]:
    """Hour of day (0–24, fractional) and weekday (0 = Monday) on the city's local clock."""
    local = ts + LOCAL_UTC_OFFSET_HOURS * 3600
    days, seconds = divmod(local, 86400)
    # 1970-01-01 was a Thursday (weekday 3).
    return seconds / 3600.0, int((days + 3) % 7)


def _bump(hour: float, centre: float, width: float) -> float:
    return math.exp(-(((hour - centre) / width) ** 2))


def traffic_factor(ts: float) -> float:
    """Traffic demand relative to the weekday peak: twin rush hours on weekdays, a late, flat weekend, quiet nights."""
    hour, weekday = local_hour(ts)
    daytime = 1 / (1 + math.exp(-(hour - 6.5) * 2)) * 1 / (1 + math.exp((hour - 22.5) * 1.5))
    if weekday < 5:
        return 0.06 + 0.38 * daytime + 0.62 * _bump(hour, 8.0, 1.1) + 0.56 * _bump(hour, 18.0, 1.4)
    return 0.05 + 0.42 * daytime + 0.25 * _bump(hour, 11.5, 2.5) + 0.2 * _bump(hour, 17.5, 2.0)


def sun(ts: float) -> float:
    """0 at night, 1 at solar noon: drives temperature and ozone."""
    hour, _ = local_hour(ts)
    return max(0.0, math.sin(math.pi * (hour - 6.3) / 12.6))


class GridSeries:
    """A time series on a fixed grid from the simulation start, extended on demand by `step`.

    Asking for any time computes every grid point before it once, so the values do not depend on
    the order of the questions, which keeps readings reproducible.
    """

    def __init__(self, start: float, step: Callable[[int, float], float], initial: float) -> None:
        self.start = start
        self.values = [initial]
        self._step = step

    def at(self, ts: float) -> float:
        pos = max(0.0, (ts - self.start) / GRID_SECONDS)
        i = int(pos)
        while len(self.values) <= i + 1:
            k = len(self.values)
            self.values.append(self._step(k, self.values[-1]))
        frac = pos - i
        return self.values[i] * (1 - frac) + self.values[i + 1] * frac


def ar1(rng: random.Random, phi: float, sigma: float) -> Callable[[int, float], float]:
    """AR(1): x' = φ·x + ε, the textbook model of weather that drifts and returns to normal."""
    return lambda _k, x: phi * x + rng.gauss(0.0, sigma)


@dataclass
class DeviceState:
    rng: random.Random
    noise: float = 0.0
    battery: float = 100.0
    drain_per_hour: float = 0.002
    last_ts: float | None = None
    occupied: bool = False
    total_kwh: float = 0.0
    fill: float = 0.0
    base: float = 0.0  # a device's own calibration offset
    fire_until: float = 0.0
    elapsed_h: float = 0.0  # hours since the previous reading (the interval for the first one)


class SignalModel:
    def __init__(self, city: City, deployment: Deployment, seed: int, start: datetime,
                 scenario: Scenario | None = None, fast_drain: frozenset[str] = frozenset()) -> None:
        self.city = city
        self.deployment = deployment
        self.seed = seed
        self.start = start.timestamp()
        self.scenario = scenario or Scenario()
        self.fast_drain = fast_drain
        weather = random.Random(f"weather:{seed}")
        # φ = 0.995 per minute: anomalies last a few hours, like real weather fronts.
        self.temp_anomaly = GridSeries(self.start, ar1(weather, 0.995, 0.08), weather.gauss(0, 1.0))
        self.humid_anomaly = GridSeries(self.start, ar1(weather, 0.995, 0.3), weather.gauss(0, 4.0))
        self.pm_background = GridSeries(self.start, ar1(weather, 0.997, 0.25), weather.gauss(0, 3.0))
        self.district_pm = {d.id: weather.uniform(0.8, 1.3) for d in city.districts}
        self._hops = {e.origin: city.hops_from(e.origin) for e in self.scenario.episodes}
        self.river_base = {r.id: weather.uniform(1.2, 2.2) for r in city.rivers}
        self.runoff = GridSeries(self.start, self._reservoir_step, 0.0)
        self.states: dict[str, DeviceState] = {}
        self._arterials = {r.id for r in city.roads if r.category == "arterial"}
        self._roads = {r.id: r for r in city.roads}
        self._incidents: dict[tuple[str, int], tuple[RoadIncident, ...]] = {}
        self._positions: dict[str, float] = {}
        self._readers: dict[str, Callable[[SimDevice, DeviceState, float], dict[str, Any]]] = {
            "air-quality": self._air, "water-quality": self._water_quality, "noise": self._noise,
            "traffic-flow": self._traffic, "parking-spot": self._parking, "smoke": self._smoke,
            "water-level": self._water_level, "smart-meter": self._meter, "waste-bin": self._waste,
            "streetlight": self._streetlight, "wearable": self._wearable,
        }

    # City-wide fields ---------------------------------------------------------------------------

    def rain(self, ts: float) -> float:
        """Rain intensity in mm/h, with a smooth rise and fall for each event."""
        total = 0.0
        for event in self.scenario.rains:
            t0 = event.start.timestamp()
            length = event.hours * 3600
            if t0 <= ts <= t0 + length:
                total += event.mm_per_hour * max(0.0, math.sin(math.pi * (ts - t0) / length)) ** 0.5
        return total

    def _reservoir_step(self, k: int, storage: float) -> float:
        """Linear reservoir: storage gains the rain and drains at storage/τ; the outflow is the lagged flood wave."""
        ts = self.start + k * GRID_SECONDS
        tau = self.scenario.river_lag_hours * 3600
        dt = GRID_SECONDS
        return storage + (self.rain(ts) / 3600) * dt - storage / tau * dt

    def river_level(self, river_id: str, ts: float) -> float:
        """Metres above the gauge datum: the base level plus the reservoir's outflow (mm of rain in the catchment)."""
        tau_h = self.scenario.river_lag_hours
        outflow_mm_per_h = self.runoff.at(ts) / tau_h
        return self.river_base[river_id] + 0.06 * outflow_mm_per_h

    def episode_pm25(self, district_id: str, ts: float) -> float:
        total = 0.0
        for episode in self.scenario.episodes:
            hops = self._hops[episode.origin].get(district_id)
            if hops is None:
                continue
            t = (ts - episode.start.timestamp()) / 3600 - hops * episode.spread_hours
            if t <= 0:
                continue
            if t < episode.ramp_hours:
                shape = t / episode.ramp_hours
            elif t < episode.ramp_hours + episode.hold_hours:
                shape = 1.0
            else:
                shape = math.exp(-(t - episode.ramp_hours - episode.hold_hours) / episode.decay_hours)
            total += episode.peak_pm25 * episode.attenuation ** hops * shape
        return total

    def incidents(self, road_id: str, hour: int) -> tuple[RoadIncident, ...]:
        """The incidents that start on `road_id` in the epoch hour `hour` (a pure function of the seed)."""
        key = (road_id, hour)
        cached = self._incidents.get(key)
        if cached is not None:
            return cached
        out: tuple[RoadIncident, ...] = ()
        rate = self.scenario.incidents_per_road_day / 24
        road = self._roads.get(road_id)
        if rate > 0 and road is not None:
            digest = hashlib.sha256(f"incident:{self.seed}:{road_id}:{hour}".encode()).digest()
            rng = random.Random(digest)
            if rng.random() < rate:  # at most one an hour per road: the rates used are well under one
                length = road.line.length * METRES_PER_DEGREE
                out = (RoadIncident(road_id, hour * 3600 + rng.uniform(0, 3600), rng.uniform(*INCIDENT_MINUTES),
                                    rng.uniform(0, length), rng.choice((1, -1)), rng.uniform(0.45, 0.8)),)
        self._incidents[key] = out
        return out

    def position_m(self, device: SimDevice) -> float:
        """How far along its road a device is (metres from the road's first point)."""
        position = self._positions.get(device.name)
        if position is None:
            road = self._roads.get(device.anchor or "")
            position = road.line.project(Point(device.lon, device.lat)) * METRES_PER_DEGREE if road else 0.0
            self._positions[device.name] = position
        return position

    def incident_slowdown(self, device: SimDevice, ts: float) -> float:
        """The share of speed an incident takes from the device's reading at `ts` (0 when none reaches it)."""
        if self.scenario.incidents_per_road_day <= 0 or device.anchor not in self._roads:
            return 0.0
        here = self.position_m(device)
        worst = 0.0
        longest_h = int((INCIDENT_MINUTES[1] * 60 + QUEUE_MAX_M / QUEUE_DRAIN_M_PER_MIN * 60) // 3600) + 1
        hour = int(ts // 3600)
        for h in range(hour - longest_h, hour + 1):
            for incident in self.incidents(device.anchor or "", h):
                if incident.start <= ts:
                    worst = max(worst, self._queue_effect(incident, here, ts))
        return worst

    @staticmethod
    def _queue_effect(incident: RoadIncident, here_m: float, ts: float) -> float:
        upstream_m = (incident.position_m - here_m) * incident.direction  # > 0: traffic passes here first
        blocked_min = min((ts - incident.start) / 60, incident.minutes)
        since_reopen_min = max(0.0, (ts - incident.start) / 60 - incident.minutes)
        # The queue's tail grows with the demand of the hour the lanes were blocked; it drains from the front.
        grown = min(QUEUE_MAX_M, QUEUE_GROWTH_M_PER_MIN * max(0.2, traffic_factor(incident.start)) * blocked_min)
        tail = grown
        front = QUEUE_DRAIN_M_PER_MIN * since_reopen_min - INCIDENT_SITE_M
        if since_reopen_min > 0 and front >= tail:
            return 0.0
        if -INCIDENT_SITE_M <= upstream_m <= INCIDENT_SITE_M and since_reopen_min == 0:
            return incident.severity
        if max(INCIDENT_SITE_M, front) < upstream_m <= tail + INCIDENT_SITE_M:
            return incident.severity * 0.85
        return 0.0

    def temperature(self, ts: float) -> float:
        # Haikou: about 24 °C before dawn, 31 °C mid-afternoon; rain cools the air.
        hour, _ = local_hour(ts)
        diurnal = 3.5 * math.sin(2 * math.pi * (hour - 9.0) / 24)
        return 27.5 + diurnal + self.temp_anomaly.at(ts) - 0.08 * self.rain(ts)

    def humidity(self, ts: float) -> float:
        hour, _ = local_hour(ts)
        value = 78 - 12 * math.sin(2 * math.pi * (hour - 9.0) / 24) + self.humid_anomaly.at(ts) + 0.5 * self.rain(ts)
        return min(100.0, max(20.0, value))

    # Per-device state ---------------------------------------------------------------------------

    def state(self, device: SimDevice) -> DeviceState:
        state = self.states.get(device.name)
        if state is None:
            rng = random.Random(f"device:{self.seed}:{device.name}")
            state = DeviceState(rng=rng)
            # Fleets are installed over years: some batteries are already low when the demo starts.
            state.battery = rng.uniform(22, 100)
            # A primary-cell sensor lasts 3–5 years; a fast drainer (a fault) empties in about a day.
            state.drain_per_hour = rng.uniform(0.0023, 0.0038)
            if device.name in self.fast_drain:
                state.drain_per_hour = rng.uniform(2.0, 5.0)
            if device.profile == "wearable":
                state.drain_per_hour = rng.uniform(1.5, 3.0)
            state.total_kwh = rng.uniform(1_000, 30_000)
            state.fill = rng.uniform(0.0, 0.6)
            state.base = rng.gauss(0, 1)
            state.occupied = rng.random() < 0.5
            self.states[device.name] = state
        return state

    def reading(self, device: SimDevice, at: datetime | float) -> dict[str, Any]:
        """One reading of `device` at `at`; call with increasing times per device."""
        ts = at.timestamp() if isinstance(at, datetime) else at
        state = self.state(device)
        elapsed_h = 0.0 if state.last_ts is None else max(0.0, ts - state.last_ts) / 3600
        state.last_ts = ts
        state.elapsed_h = elapsed_h or device.interval / 3600
        # Per-device AR(1) noise with a one-hour memory, whatever the reporting interval.
        phi = math.exp(-elapsed_h) if elapsed_h else 0.9
        state.noise = phi * state.noise + math.sqrt(1 - phi * phi) * state.rng.gauss(0, 1)
        state.battery = max(0.0, state.battery - state.drain_per_hour * elapsed_h)
        values = self._readers[device.profile](device, state, ts)
        if "battery" in self.deployment.profiles[device.profile].attributes:
            values["battery"] = round(state.battery, 1)
        return values

    def _anchor_is_arterial(self, device: SimDevice) -> bool:
        return device.anchor in self._arterials

    def _air(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        traffic = traffic_factor(ts)
        washout = 1 / (1 + 0.05 * self.rain(ts))  # rain scrubs particles out of the air
        pm25 = ((16 + self.pm_background.at(ts)) * self.district_pm[d.district_id] + 14 * traffic) * washout
        pm25 = max(1.0, pm25 + 2.0 * s.noise + s.base) + self.episode_pm25(d.district_id, ts)
        no2 = max(2.0, 12 + 48 * traffic + 4 * s.noise + 0.15 * self.episode_pm25(d.district_id, ts))
        o3 = max(2.0, 35 + 70 * sun(ts) - 0.3 * no2 + 5 * s.noise)
        return {
            "pm25": round(pm25, 1), "pm10": round(pm25 * 1.6 + 3 * abs(s.noise), 1), "no2": round(no2, 1),
            "so2": round(max(0.5, 5 + 1.5 * s.noise), 1), "o3": round(o3, 1),
            "co": round(max(0.1, 0.4 + 0.9 * traffic + 0.1 * s.noise), 2),
            "temperature": round(self.temperature(ts) + 0.3 * s.noise, 1),
            "humidity": round(min(100.0, max(0.0, self.humidity(ts) + s.noise)), 1),
            # hPa: a rain band arrives with low pressure
            "pressure": round(1012.0 - 0.15 * self.rain(ts) + 0.8 * s.noise, 1),
        }

    def _water_quality(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        runoff = self.runoff.at(ts)  # mm in the catchment: storm water carries mud and nutrients
        water_t = 25.5 + 0.4 * (self.temperature(ts) - 27.5) + 0.2 * s.noise
        return {
            "ph": round(7.4 + 0.15 * s.noise - 0.005 * runoff, 2),
            "do": round(max(0.5, 7.8 - 0.2 * (water_t - 25) - 0.02 * runoff + 0.3 * s.noise), 2),
            "cod": round(max(1.0, 14 + 0.4 * runoff + 2 * s.noise), 1),
            "nh3n": round(max(0.05, 0.45 + 0.02 * runoff + 0.08 * s.noise), 2),
            "tp": round(max(0.01, 0.12 + 0.004 * runoff + 0.02 * s.noise), 3),
            "turbidity": round(max(1.0, 12 + 3.0 * runoff + 3 * s.noise), 1),
            "temperature": round(water_t, 1),
        }

    def _noise(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        traffic = traffic_factor(ts)
        road_bonus = 5.0 if self._anchor_is_arterial(d) else 0.0
        laeq = 38 + 32 * math.sqrt(traffic) + road_bonus + 2 * s.noise + s.base
        lamax = laeq + 10 + 4 * abs(s.rng.gauss(0, 1))
        return {"laeq": round(min(140.0, laeq), 1), "lamax": round(min(160.0, lamax), 1)}

    def _traffic(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        arterial = self._anchor_is_arterial(d)
        capacity, free_speed = (1800.0, 60.0) if arterial else (700.0, 40.0)
        # Rain takes capacity (the same demand is a larger share of it) and makes drivers slower.
        wet = wetness(self.rain(ts)) if self.scenario.rains else 0.0
        free_speed *= 1 - RAIN_FREE_SPEED_LOSS * wet
        ratio = max(0.0, traffic_factor(ts) * (1 + 0.08 * s.noise) * (1 + 0.05 * s.base)
                    / (1 - RAIN_CAPACITY_LOSS * wet))
        blocked = self.incident_slowdown(d, ts)
        intensity = capacity * min(ratio, 1.15) * (1 - 0.6 * blocked)
        speed = max(4.0, (free_speed * (1 - 0.78 * min(ratio, 1.15) ** 2.5) + 2 * s.noise) * (1 - blocked))
        occupancy = min(100.0, max(0.0, 100 * 0.55 * ratio ** 1.4 + 2 * s.noise + 60 * blocked))
        return {"intensity": round(intensity), "speed": round(speed, 1), "occupancy": round(occupancy, 1),
                "congested": speed < 20}

    def _parking(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        hour, weekday = local_hour(ts)
        busy = _bump(hour, 11, 3.5) if weekday < 5 else _bump(hour, 15, 4.0)
        target = 0.25 + 0.65 * busy + 0.05 * _bump(hour, 20, 2.0)
        # Bays change hands now and then, not at every reading: a two-state Markov chain towards the target.
        if s.rng.random() < 0.35:
            s.occupied = s.rng.random() < target
        status = "occupied" if s.occupied else "free"
        if s.rng.random() < 0.002:
            status = "unknown"
        return {"status": status}

    def _smoke(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        if ts >= s.fire_until and s.rng.random() < 2e-6:
            s.fire_until = ts + 600  # a small fire: ten minutes until it is put out
        if ts < s.fire_until:
            return {"smoke": round(s.rng.uniform(55, 90), 1), "temperature": round(s.rng.uniform(60, 95), 1),
                    "alarm": True}
        indoor = 26 + 0.4 * (self.temperature(ts) - 27.5) + 0.5 * s.noise
        return {"smoke": round(max(0.0, 0.5 + 0.3 * s.noise), 2), "temperature": round(indoor, 1), "alarm": False}

    def _water_level(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        river = d.anchor if d.anchor in self.river_base else next(iter(self.river_base), None)
        level = (self.river_level(river, ts) if river else 1.5) + 0.03 * s.noise + 0.2 * s.base
        outflow = self.runoff.at(ts) / self.scenario.river_lag_hours
        flow = 25 + 40 * outflow + 2 * s.noise
        return {"level": round(level, 3), "flow": round(max(0.0, flow), 1), "rain": round(self.rain(ts), 1)}

    def _meter(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        hour, weekday = local_hour(ts)
        # Homes: breakfast and an evening peak with air-conditioning on hot afternoons.
        power = 0.25 + 0.6 * _bump(hour, 7.5, 1.2) + 1.6 * _bump(hour, 20.0, 2.2)
        power += 0.04 * max(0.0, self.temperature(ts) - 28) * 3
        power = max(0.05, power * (1 + 0.15 * s.noise) * (1.1 if weekday >= 5 else 1.0))
        s.total_kwh += power * s.elapsed_h
        return {"kwh": round(s.total_kwh, 2), "power": round(power, 3), "voltage": round(220 + 3 * s.noise, 1)}

    def _waste(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        hour, _ = local_hour(ts)
        if 5.5 <= hour < 6.5 and s.fill > 0.4:
            s.fill = 0.02  # the morning collection round empties full bins
        s.fill = min(1.0, s.fill + (0.02 + 0.03 * (7 < hour < 22)) * s.elapsed_h * (1 + 0.3 * s.base))
        return {"fill": round(max(0.0, s.fill), 3), "temperature": round(self.temperature(ts) + 1.5 * s.noise, 1)}

    def _streetlight(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        hour, _ = local_hour(ts)
        if 18.7 <= hour < 23.0:
            state, dim = "on", 1.0
        elif hour >= 23.0 or hour < 5.8:
            state, dim = "low", 0.4  # dimmed after midnight-ish to save energy, as city plans ask
        else:
            state, dim = "off", 0.0
        # Off, the driver and the controller's modem draw about 1.5 W, varying with mains voltage and radio
        # traffic (a constant 1.5 would read as a frozen meter every day).
        power = 150 * dim * (1 + 0.03 * s.noise) if dim else 1.5 * math.exp(0.3 * s.noise)
        return {"state": state, "dim": dim, "power": round(max(0.0, power), 1)}

    def _wearable(self, d: SimDevice, s: DeviceState, ts: float) -> dict[str, Any]:
        hour, _ = local_hour(ts)
        if 7.9 <= hour < 8.3 and s.battery < 50:
            s.battery = 100.0  # charged every morning by the person or a carer
        asleep = hour < 6.5 or hour >= 22.5
        heart = (58 if asleep else 72) + 6 * s.noise + 3 * s.base
        return {"heart_rate": round(min(250.0, max(20.0, heart))),
                "spo2": round(min(100.0, max(50.0, 97 + 0.8 * s.noise)), 1),
                "fall": s.rng.random() < 2e-5}
