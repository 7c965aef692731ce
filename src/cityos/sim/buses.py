# ruff: noqa: S311  (seeded, reproducible simulation randomness; nothing here is a secret)
"""The simulated city's buses running for real: dwell variation, congestion, incidents, passenger counters.

The timetable (the city's GTFS feed, `cityos.sim.transit`) says when buses should be at each stop; this
model says when they are. Per segment (stop → next stop):

- free-flow bus speed `FREE_KMH`, slowed by the road's rush hours (a peak around 08:00 and 18:00 whose
  depth differs per road and, a little, per segment), and by incidents: a segment blocked down to
  `INCIDENT_FACTOR` of its speed for 15–45 minutes, starting at random;
- a red light on the way with probability `SIGNAL_P` (0–`SIGNAL_MAX_S` s) and ±6 % of noise.

Per stop: passengers board (Poisson, demand peaking with the rush hours, per stop popularity) and
alight (each rider with a stop-specific probability); the dwell is door time plus boarding or
alighting time, whichever is longer; a stop nobody uses is passed without stopping. Buses never
leave their first stop before the scheduled time and, when `holds` (the default: the city feed gives
exact times at every stop, so every stop is a GTFS timepoint), no stop at all: a bus running early
waits there until its scheduled departure, as operators hold buses at timepoints. Capacity `CAPACITY`
(seated + standing).

What the buses send (`reports`) is what an on-board unit sends: an event at each door opening
(STOPPED_AT, with the passenger count after alighting) and closing (IN_TRANSIT_TO the next stop,
count after boarding), and a GPS position every `REPORT_EVERY_S` s in between (±5 m of noise).
`truth` holds the real arrival and departure epochs the predictions are scored against.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from cityos.mobility.timetable import Timetable, haversine_m
from cityos.mobility.tracking import IN_TRANSIT_TO, STOPPED_AT, FeedTracker, VehicleReport

FREE_KMH = 24.0
INCIDENT_FACTOR = 0.3
SIGNAL_P = 0.3
SIGNAL_MAX_S = 25.0
CAPACITY = 80
REPORT_EVERY_S = 20.0
DOOR_S = 6.0
BOARD_S = 2.5
ALIGHT_S = 1.5


@dataclass(frozen=True)
class Incident:
    segment: tuple[int, int]   # (stop index, next stop index)
    start: float               # epoch
    end: float


@dataclass
class TripTruth:
    trip_key: str
    stops: list[int]
    arrivals: list[float]
    departures: list[float]
    loads: list[int]           # passengers on board leaving each stop


@dataclass
class BusDay:
    date: dt.date
    trips: list[TripTruth] = field(default_factory=list)
    reports: list[VehicleReport] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)


def _rush(hour: float) -> float:
    return math.exp(-((hour - 8.0) / 1.0) ** 2) + math.exp(-((hour - 18.0) / 1.2) ** 2)


class BusModel:
    def __init__(self, tt: Timetable, date: dt.date, seed: int = 7, incidents_per_hour: float = 2.0,
                 holds: bool = True) -> None:
        self.tt = tt
        self.holds = holds
        self.date = date
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.tracker = FeedTracker("sim", tt)   # for its clock and the trips' stop sequences
        self.base = self.tracker.day_start(date)
        self.incidents_per_hour = incidents_per_hour
        self._road_depth: dict[int, float] = {}
        self._segment_depth: dict[tuple[int, int], float] = {}
        self._popularity: dict[int, float] = {}
        self._alight: dict[int, float] = {}
        self.incidents: list[Incident] = []

    def _depth(self, route: int, segment: tuple[int, int]) -> float:
        road = self._road_depth.setdefault(route // 1, self.rng.uniform(0.25, 0.5))
        return self._segment_depth.setdefault(segment, min(0.7, max(0.0, road + self.rng.gauss(0, 0.08))))

    def speed_factor(self, route: int, segment: tuple[int, int], at: float) -> float:
        hour = (at - self.base) / 3600.0
        factor = 1.0 - self._depth(route, segment) * _rush(hour)
        for incident in self.incidents:
            if incident.segment == segment and incident.start <= at < incident.end:
                factor *= INCIDENT_FACTOR
        return max(0.1, factor)

    def _demand(self, stop: int, at: float) -> float:
        popularity = self._popularity.setdefault(stop, self.rng.gammavariate(2.0, 0.6))
        hour = (at - self.base) / 3600.0
        return popularity * (0.6 + 1.6 * _rush(hour))

    def run(self, start_s: int, end_s: int) -> BusDay:
        """Every bus trip (route_type 3) leaving its first stop between `start_s` and `end_s` (seconds of day)."""
        tt = self.tt
        day = tt.day(self.date)
        chosen: list[tuple[str, float]] = []
        for dp in day.patterns:
            if tt.route_info[tt.patterns[dp.source].route]["type"] != 3:
                continue
            for row in range(len(dp.trips)):
                first = int(dp.dep[row, 0])
                if dp.offsets[row] == 0 and start_s <= first <= end_s:
                    chosen.append((tt.trip_ids[int(dp.trips[row])], self.base + first))
        chosen.sort(key=lambda c: c[1])
        segments = sorted({(int(a), int(b)) for dp in day.patterns for a, b in zip(dp.stops[:-1], dp.stops[1:],
                                                                                   strict=True)})
        span = (end_s - start_s + 3600) / 3600.0
        for _ in range(self.np_rng.poisson(self.incidents_per_hour * span)):
            segment = segments[self.rng.randrange(len(segments))]
            begin = self.base + self.rng.uniform(start_s, end_s + 3600)
            self.incidents.append(Incident(segment, begin, begin + self.rng.uniform(900, 2700)))
        out = BusDay(self.date, incidents=list(self.incidents))
        for n, (key, _first) in enumerate(chosen):
            run = self.tracker.run_of(key, self.date)
            if run is None:
                continue
            truth, reports = self._drive(key, run.stops.tolist(), run.sched_dep.tolist(), run.route, f"bus-{n:04d}")
            out.trips.append(truth)
            out.reports.extend(reports)
        out.reports.sort(key=lambda r: r.timestamp)
        return out

    def _drive(self, key: str, stops: list[int], sched_dep: list[float], route: int,
               vehicle: str) -> tuple[TripTruth, list[VehicleReport]]:
        tt = self.tt
        reports: list[VehicleReport] = []
        arrivals: list[float] = []
        departures: list[float] = []
        loads: list[int] = []
        load = 0
        t = sched_dep[0]
        for k, stop in enumerate(stops):
            last = k == len(stops) - 1
            if k:
                a, b = stops[k - 1], stop
                length = float(haversine_m(tt.lat[a], tt.lon[a], tt.lat[b], tt.lon[b]))
                speed = FREE_KMH / 3.6 * self.speed_factor(route, (a, b), t)
                ran = length / speed * math.exp(self.rng.gauss(0, 0.06))
                if self.rng.random() < SIGNAL_P:
                    ran += self.rng.uniform(0, SIGNAL_MAX_S)
                reports.extend(self._moving(vehicle, key, a, b, t, t + ran, load))
                t += ran
            share = 1.0 if last else self._alight.setdefault(stop, self.rng.uniform(0.05, 0.3))
            alight = 0 if k == 0 else int(self.np_rng.binomial(load, share))
            load -= alight
            board = 0 if last else min(CAPACITY - load, int(self.np_rng.poisson(self._demand(stop, t))))
            arrivals.append(t)
            if k == 0:
                dwell = BOARD_S * board
            elif board + alight == 0 and not last:
                dwell = 0.0   # nobody waiting, nobody ringing: passed without stopping
            else:
                dwell = DOOR_S + max(BOARD_S * board, ALIGHT_S * alight)
            leave = t + dwell
            if not last and (k == 0 or self.holds):
                leave = max(leave, sched_dep[k])   # no early departure: an early bus waits for its time
            stopped = leave > t or k == 0 or last
            if stopped:
                reports.append(VehicleReport(vehicle, key, float(tt.lat[stop]), float(tt.lon[stop]), t,
                                             self.date, speed_mps=0.0, stop_id=tt.stop_ids[stop], status=STOPPED_AT,
                                             passengers=load, capacity=CAPACITY))
            load += board
            departures.append(leave)
            loads.append(load)
            if stopped and not last:
                reports.append(VehicleReport(vehicle, key, float(tt.lat[stop]), float(tt.lon[stop]), leave,
                                             self.date, speed_mps=0.0, stop_id=tt.stop_ids[stops[k + 1]],
                                             status=IN_TRANSIT_TO, passengers=load, capacity=CAPACITY))
            t = leave
        return TripTruth(key, stops, arrivals, departures, loads), reports

    def _moving(self, vehicle: str, key: str, a: int, b: int, t0: float, t1: float,
                load: int) -> list[VehicleReport]:
        """GPS fixes every REPORT_EVERY_S between two stops (constant speed in between, ±5 m)."""
        tt = self.tt
        out = []
        length = float(haversine_m(tt.lat[a], tt.lon[a], tt.lat[b], tt.lon[b]))
        speed = length / max(1.0, t1 - t0)
        t = (math.floor(t0 / REPORT_EVERY_S) + 1) * REPORT_EVERY_S
        while t < t1:
            f = (t - t0) / (t1 - t0)
            lat = float(tt.lat[a] + f * (tt.lat[b] - tt.lat[a])) + self.rng.gauss(0, 5 / 111_000)
            lon = float(tt.lon[a] + f * (tt.lon[b] - tt.lon[a])) + self.rng.gauss(0, 5 / 95_000)
            out.append(VehicleReport(vehicle, key, lat, lon, t, self.date, speed_mps=round(speed, 2),
                                     passengers=load, capacity=CAPACITY))
            t += REPORT_EVERY_S
        return out


async def run_live(live: Any, tenant: str = "", feed_id: str = "city", seed: int = 7, every_s: float = 5.0,
                   window_s: int = 3 * 3600) -> None:
    """The demo's buses: simulate the trips of the next hours of today, then hand each on-board report to
    the live tracker once its time has come (real time). Runs until cancelled."""
    from cityos.core import clock

    [(_feed, tt)] = await live.mobility.timetables(tenant, feed_id)
    horizon = 0.0
    pending: list[VehicleReport] = []
    while True:
        now = clock.now().timestamp()
        if now >= horizon - 600:
            date = dt.datetime.fromtimestamp(now, ZoneInfo(tt.timezone)).date()
            model = BusModel(tt, date, seed=seed + date.toordinal())
            start = int(now - model.base) - 1800
            day = await asyncio.to_thread(model.run, max(0, start), start + window_s)
            pending = sorted([r for r in pending if r.timestamp > now] + day.reports, key=lambda r: r.timestamp)
            horizon = model.base + start + window_s
        due = [r for r in pending if r.timestamp <= now]
        pending = pending[len(due):]
        if due:
            await live.ingest(tenant, feed_id, due, now)
        await asyncio.sleep(every_s)
