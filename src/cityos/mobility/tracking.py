"""Vehicle tracking and arrival predictions for one GTFS feed (GTFS-Realtime's core).

Vehicle positions (from the `transit-vehicle` IoT profile or a polled GTFS-RT VehiclePositions feed)
become `VehicleReport`s. `FeedTracker.observe` checks each against the timetable and keeps it or
counts it as refused, by reason: unknown trip, a stop not on the trip (`unknown_stop`), a position
off the feed's area or not finite (`absurd_position`), a reported speed or an implied speed between
two reports beyond what a bus or train can do (`absurd_speed`), a time far in the future
(`future_timestamp`) or older than the last report of the vehicle (`stale`).

A kept report is projected onto the trip's stop-to-stop line (the distance travelled along the trip)
and turned into events: arrival at and departure from each stop. A report says STOPPED_AT or
IN_TRANSIT_TO a stop when the device knows (doors, a GTFS-RT current_status); when it does not, a
vehicle within `STOP_RADIUS_M` of a stop and slower than walking pace is taken as stopped there.
Events give what the predictions learn from:

- run times per segment (stop → next stop), the most recent ones of all vehicles that drove it in the
  last `RECENT_S`: congestion and incidents show there before the schedule knows of them;
- dwell times per stop, recent too (boarding demand changes over the day);
- the vehicle's own progress on its current segment (a bus stuck in an incident falls behind the
  segment's usual run time, and the prediction follows it);
- the traffic domain's segment speeds (`SpeedSource`), where no vehicle drove the segment lately;
- the schedule otherwise, and as a floor at the first stop (a trip does not leave its terminus early)
  and at every stop where the trip holds (`HoldRule`): operators hold buses at timepoints, so a bus
  running early waits there and is never predicted to leave before its scheduled departure. A stop
  where a vehicle was held teaches no dwell time (the wait is the schedule's, not the passengers').

`predict(trip, now)` gives predicted arrival and departure epochs for the trip's stops from the next
one on. Pure Python over the numpy timetable; one tracker per (tenant, feed), in memory.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np

from cityos.mobility.timetable import DayTimetable, Timetable, haversine_m

STOP_RADIUS_M = 30.0
OFF_ROUTE_M = 400.0          # farther than this from the trip's line: position kept, progress not
AREA_MARGIN_M = 5_000.0      # positions farther than this outside the feed's stops are absurd
MAX_SPEED_MPS = 120 / 3.6    # no city bus or metro goes faster
MAX_FUTURE_S = 300.0
RECENT_S = 1_200.0           # run and dwell times older than this no longer describe the road
RECENT_KEEP = 4
DEFAULT_DWELL_S = 15.0
FORGET_S = 4 * 3600.0        # trips whose last report is older than this are dropped
PACE_SEGMENTS = 3
PACE_MIN, PACE_MAX = 0.85, 1.3
HOLD_SLACK_S = 15.0          # a departure this close after the scheduled one, from a bus that came early, was held

STOPPED_AT, IN_TRANSIT_TO, INCOMING_AT = "STOPPED_AT", "IN_TRANSIT_TO", "INCOMING_AT"
STATUSES = (STOPPED_AT, IN_TRANSIT_TO, INCOMING_AT)

# (stop id a, stop id b, epoch) → km/h of general traffic on that stretch, or None.
SpeedSource = Callable[[str, str, float], float | None]


@dataclass(frozen=True)
class VehicleReport:
    vehicle_id: str
    trip_id: str
    lat: float
    lon: float
    timestamp: float                 # epoch seconds
    start_date: dt.date | None = None
    start_time: str | None = None    # frequency-based trips: which departure
    speed_mps: float | None = None
    bearing: float | None = None
    stop_id: str | None = None
    status: str | None = None
    passengers: int | None = None
    capacity: int | None = None
    occupancy: str | None = None     # GTFS-RT OccupancyStatus when the source gives it instead of a count


@dataclass
class TripRun:
    """One trip on one service date, as the tracker follows it."""

    key: str                     # trip id as the timetable names it (frequencies: "id@HH:MM:SS")
    trip: int                    # index into Timetable.trip_ids
    service_date: dt.date
    route: int
    stops: np.ndarray            # stop indices
    sched_arr: np.ndarray        # epochs
    sched_dep: np.ndarray
    cum_m: np.ndarray            # distance along the trip at each stop
    vehicle_id: str | None = None
    last_t: float | None = None
    last_lat: float = math.nan
    last_lon: float = math.nan
    progress_m: float = 0.0
    stopped_at: int | None = None        # stop position the vehicle stands at
    next_pos: int = 0                    # the first stop position not yet departed
    arrivals: dict[int, float] = field(default_factory=dict)
    departures: dict[int, float] = field(default_factory=dict)
    speed_mps: float | None = None
    bearing: float | None = None
    passengers: int | None = None
    capacity: int | None = None
    occupancy: str | None = None
    # (actual, expected) run times of the last segments: how the vehicle fares against the prediction
    pace: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=PACE_SEGMENTS))

    @property
    def pace_factor(self) -> float:
        """Actual over expected run time on the vehicle's last segments, bounded: conditions changing
        faster than other vehicles report them (a rush hour building up) show here first."""
        if len(self.pace) < 2:
            return 1.0
        actual = sum(a for a, _ in self.pace)
        expected = sum(e for _, e in self.pace)
        return 1.0 if expected <= 0 else min(PACE_MAX, max(PACE_MIN, actual / expected))

    @property
    def started(self) -> bool:
        return self.last_t is not None

    @property
    def occupancy_status(self) -> str | None:
        return occupancy_status(self.passengers, self.capacity) or self.occupancy


# (trip run, stop position) → whether the trip holds there ("no early departure"). The first stop always holds.
HoldRule = Callable[[TripRun, int], bool]
HOLD_MODES = ("none", "buses", "all")


def hold_rule(tt: Timetable, mode: str) -> HoldRule | None:
    """"none": only the first stop holds; "buses": bus trips (GTFS route_type 3) hold at every stop;
    "all": every trip holds at every stop."""
    if mode == "none":
        return None
    if mode == "all":
        return lambda run, k: True
    if mode == "buses":
        return lambda run, k: tt.route_info[run.route].get("type") == 3
    raise ValueError(f"unknown hold mode {mode!r}: one of {', '.join(HOLD_MODES)}")


def occupancy_status(passengers: int | None, capacity: int | None) -> str | None:
    """GTFS-RT OccupancyStatus from a passenger count and the vehicle's capacity (seated + standing)."""
    if passengers is None or not capacity:
        return None
    share = passengers / capacity
    if share < 0.1:
        return "EMPTY"
    if share < 0.35:
        return "MANY_SEATS_AVAILABLE"
    if share < 0.6:
        return "FEW_SEATS_AVAILABLE"
    if share < 0.85:
        return "STANDING_ROOM_ONLY"
    if share < 1.0:
        return "CRUSHED_STANDING_ROOM_ONLY"
    return "FULL"


def _recent_mean(samples: deque[tuple[float, float]], now: float) -> float | None:
    fresh = [v for t, v in samples if now - RECENT_S <= t <= now]
    return sum(fresh) / len(fresh) if fresh else None


class FeedTracker:
    """Vehicles, trips and learned run / dwell times of one feed."""

    def __init__(self, feed_id: str, tt: Timetable, speeds: SpeedSource | None = None,
                 holds: HoldRule | None = None) -> None:
        self.feed_id = feed_id
        self.tt = tt
        self.holds = holds
        self.zone = ZoneInfo(tt.timezone)
        self.speeds = speeds
        self.trip_index: dict[str, int] = {t: i for i, t in enumerate(tt.trip_ids)}
        self.runs: dict[tuple[str, dt.date], TripRun] = {}
        self.vehicles: dict[str, tuple[str, dt.date]] = {}
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self.segment_runs: dict[tuple[int, int], deque[tuple[float, float]]] = {}
        self.dwells: dict[int, deque[tuple[float, float]]] = {}
        self._locations: dict[tuple[int, dt.date], tuple[int, int]] = {}
        self._located_days: set[tuple[int, dt.date]] = set()
        self._rows_day: DayTimetable | None = None
        self._rows: dict[tuple[int, int], tuple[int, int]] = {}
        served = np.flatnonzero(tt.boardable)
        lat, lon = tt.lat[served], tt.lon[served]
        self.area = (float(np.nanmin(lat)), float(np.nanmin(lon)), float(np.nanmax(lat)), float(np.nanmax(lon))) \
            if len(served) else (0.0, 0.0, 0.0, 0.0)

    # ------------------------------------------------------------------ time

    def day_start(self, date: dt.date) -> float:
        """Epoch of the service day's origin (noon minus 12 h, as GTFS counts)."""
        return (dt.datetime.combine(date, dt.time(12), self.zone) - dt.timedelta(hours=12)).timestamp()

    def service_date_of(self, epoch: float) -> dt.date:
        return dt.datetime.fromtimestamp(epoch, self.zone).date()

    # ------------------------------------------------------------------ trips

    def _locate(self, trip: int, date: dt.date) -> tuple[DayTimetable, int, int] | None:
        """(day view, day pattern, row) of `trip` running on service date `date`."""
        day = self.tt.day(date)
        key = (id(day), date)
        if key not in self._located_days:
            for p, dp in enumerate(day.patterns):
                for row, (t, offset) in enumerate(zip(dp.trips.tolist(), dp.offsets.tolist(), strict=True)):
                    if offset == 0:
                        self._locations[(t, date)] = (p, row)
            self._located_days.add(key)
        found = self._locations.get((trip, date))
        return None if found is None else (day, *found)

    def run_of(self, trip_key: str, date: dt.date, keep: bool = True) -> TripRun | None:
        """The trip's run on `date`, created from the timetable on first use (kept when `keep`); None if it
        does not run then."""
        run = self.runs.get((trip_key, date))
        if run is not None:
            return run
        trip = self.trip_index.get(trip_key)
        if trip is None:
            return None
        located = self._locate(trip, date)
        if located is None:
            return None
        day, p, row = located
        dp = day.patterns[p]
        base = self.day_start(date)
        stops = dp.stops
        lat, lon = self.tt.lat[stops], self.tt.lon[stops]
        steps = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]) if len(stops) > 1 else np.zeros(0)
        run = TripRun(key=trip_key, trip=trip, service_date=date, route=int(self.tt.trip_route[trip]), stops=stops,
                      sched_arr=base + dp.arr[row].astype(float), sched_dep=base + dp.dep[row].astype(float),
                      cum_m=np.r_[0.0, np.cumsum(steps)])
        if keep:
            self.runs[(trip_key, date)] = run
        return run

    def resolve_trip(self, trip_id: str, start_time: str | None) -> str | None:
        if trip_id in self.trip_index:
            return trip_id
        if start_time:
            key = f"{trip_id}@{start_time}"
            if key in self.trip_index:
                return key
        return None

    # ------------------------------------------------------------------ intake

    def _refuse(self, reason: str) -> str:
        self.refused[reason] += 1
        return reason

    def observe(self, report: VehicleReport, now: float | None = None) -> str | None:
        """Take one report; None when kept, else the reason it was refused (also counted)."""
        now = report.timestamp if now is None else now
        if not (math.isfinite(report.lat) and math.isfinite(report.lon)) or not (
                -90 <= report.lat <= 90 and -180 <= report.lon <= 180) or not self._in_area(report.lat, report.lon):
            return self._refuse("absurd_position")
        if report.speed_mps is not None and not (0 <= report.speed_mps <= MAX_SPEED_MPS):
            return self._refuse("absurd_speed")
        if not math.isfinite(report.timestamp) or report.timestamp > now + MAX_FUTURE_S:
            return self._refuse("future_timestamp")
        if report.status is not None and report.status not in STATUSES:
            return self._refuse("unknown_status")
        key = self.resolve_trip(report.trip_id, report.start_time)
        if key is None:
            return self._refuse("unknown_trip")
        date = report.start_date or self.service_date_of(report.timestamp)
        run = self.run_of(key, date)
        if run is None:
            return self._refuse("trip_not_running")
        stop_pos: int | None = None
        if report.stop_id is not None:
            stop = self.tt.stop_index.get(report.stop_id)
            positions = [] if stop is None else np.flatnonzero(run.stops == stop).tolist()
            if not positions:
                return self._refuse("unknown_stop")
            stop_pos = next((p for p in positions if p >= run.next_pos), positions[-1])
        if run.last_t is not None:
            if report.timestamp < run.last_t:
                return self._refuse("stale")
            moved = float(haversine_m(run.last_lat, run.last_lon, report.lat, report.lon))
            elapsed = report.timestamp - run.last_t
            if moved > 200 and moved > MAX_SPEED_MPS * max(elapsed, 1.0):
                return self._refuse("absurd_speed")
        self._advance(run, report, stop_pos)
        previous = self.vehicles.get(report.vehicle_id)
        if previous is not None and previous != (key, date):
            old = self.runs.get(previous)
            if old is not None and old.vehicle_id == report.vehicle_id:
                old.vehicle_id = None
        self.vehicles[report.vehicle_id] = (key, date)
        self.accepted += 1
        return None

    def _in_area(self, lat: float, lon: float) -> bool:
        south, west, north, east = self.area
        dlat = AREA_MARGIN_M / 111_000.0
        dlon = AREA_MARGIN_M / (111_000.0 * max(0.01, math.cos(math.radians(lat))))
        return south - dlat <= lat <= north + dlat and west - dlon <= lon <= east + dlon

    def _project(self, run: TripRun, lat: float, lon: float) -> float | None:
        """Distance along the trip of the point nearest (lat, lon), searching from the current segment on."""
        tt = self.tt
        first = max(0, run.next_pos - 1)
        best: tuple[float, float] | None = None
        y0 = math.radians(lat) * 6_371_008.8
        scale = math.cos(math.radians(lat)) * 6_371_008.8
        px, py = math.radians(lon) * scale, y0
        for k in range(first, min(len(run.stops) - 1, first + 8)):
            a, b = int(run.stops[k]), int(run.stops[k + 1])
            ax, ay = math.radians(tt.lon[a]) * scale, math.radians(tt.lat[a]) * 6_371_008.8
            bx, by = math.radians(tt.lon[b]) * scale, math.radians(tt.lat[b]) * 6_371_008.8
            dx, dy = bx - ax, by - ay
            length2 = dx * dx + dy * dy
            t = 0.0 if length2 == 0 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / length2))
            off = math.hypot(ax + t * dx - px, ay + t * dy - py)
            if best is None or off < best[0]:
                best = (off, float(run.cum_m[k] + t * (run.cum_m[k + 1] - run.cum_m[k])))
        if best is None or best[0] > OFF_ROUTE_M:
            return None
        return best[1]

    def _advance(self, run: TripRun, report: VehicleReport, stop_pos: int | None) -> None:
        t = report.timestamp
        along = self._project(run, report.lat, report.lon)
        status = report.status
        if stop_pos is None and along is not None:
            # No stop named: stopped when slow and at a stop, else on the way to the next stop ahead.
            near = int(np.argmin(np.abs(run.cum_m - along)))
            slow = report.speed_mps is None or report.speed_mps < 1.0
            if abs(float(run.cum_m[near]) - along) <= STOP_RADIUS_M and slow and near >= run.next_pos - 1:
                stop_pos, status = near, STOPPED_AT
            else:
                stop_pos = int(np.searchsorted(run.cum_m, along, side="right"))
                status = IN_TRANSIT_TO
                if stop_pos >= len(run.stops):
                    stop_pos, status = len(run.stops) - 1, STOPPED_AT
        if stop_pos is None:
            return
        status = status or IN_TRANSIT_TO
        if status == STOPPED_AT:
            self._leave_before(run, stop_pos, t, along)
            if stop_pos not in run.arrivals:
                self._arrive(run, stop_pos, t)
            run.stopped_at = stop_pos
            run.next_pos = stop_pos
            run.progress_m = float(run.cum_m[stop_pos])
            if stop_pos == len(run.stops) - 1:
                run.next_pos = len(run.stops)
        else:
            self._leave_before(run, stop_pos, t, along)
            run.stopped_at = None
            run.next_pos = stop_pos
            if along is not None:
                run.progress_m = min(max(along, float(run.cum_m[max(0, stop_pos - 1)])), float(run.cum_m[stop_pos]))
            else:
                run.progress_m = float(run.cum_m[max(0, stop_pos - 1)])
        run.vehicle_id = report.vehicle_id
        run.last_t, run.last_lat, run.last_lon = t, report.lat, report.lon
        run.speed_mps, run.bearing = report.speed_mps, report.bearing
        if report.passengers is not None:
            run.passengers, run.capacity = report.passengers, report.capacity
        if report.occupancy is not None:
            run.occupancy = report.occupancy

    def _arrive(self, run: TripRun, pos: int, t: float) -> None:
        run.arrivals[pos] = t
        if pos > 0 and (pos - 1) in run.departures:
            left = run.departures[pos - 1]
            ran = t - left
            if ran > 0:
                run.pace.append((ran, self.expected_run(run, pos - 1, left)))
                segment = (int(run.stops[pos - 1]), int(run.stops[pos]))
                self.segment_runs.setdefault(segment, deque(maxlen=RECENT_KEEP)).append((t, ran))

    @staticmethod
    def _passed_at(run: TripRun, k: int, t: float, along: float | None) -> float:
        """When the vehicle went by stop position k without a report there: interpolated between its
        last position and this one."""
        last = run.last_t if run.last_t is not None else t
        if along is None or along <= run.progress_m:
            return t
        share = (float(run.cum_m[k]) - run.progress_m) / (along - run.progress_m)
        return last + min(1.0, max(0.0, share)) * (t - last)

    def _leave_before(self, run: TripRun, pos: int, t: float, along: float | None = None) -> None:
        """Every stop before `pos` is behind the vehicle: departed (and passed through if never seen)."""
        for k in range(0, pos):
            if k in run.departures:
                continue
            if k not in run.arrivals:
                if run.last_t is None:
                    continue
                self._arrive(run, k, self._passed_at(run, k, t, along))
            leave = t if run.stopped_at == k else run.arrivals[k]
            run.departures[k] = leave
            if run.stopped_at == k and 0 < k < len(run.stops) - 1 and not self._was_held(run, k, leave):
                self.dwells.setdefault(int(run.stops[k]), deque(maxlen=RECENT_KEEP)).append(
                    (t, leave - run.arrivals[k]))

    # ------------------------------------------------------------------ predictions

    def holds_at(self, run: TripRun, k: int) -> bool:
        """The trip does not leave stop position k before its scheduled departure there."""
        return k == 0 or (self.holds is not None and k < len(run.stops) - 1 and self.holds(run, k))

    def _held(self, run: TripRun, k: int, leave: float) -> float:
        return max(leave, float(run.sched_dep[k])) if self.holds_at(run, k) else leave

    def _was_held(self, run: TripRun, k: int, leave: float) -> bool:
        scheduled = float(run.sched_dep[k])
        return self.holds_at(run, k) and run.arrivals[k] < scheduled and leave <= scheduled + HOLD_SLACK_S

    def expected_run(self, run: TripRun, k: int, at: float) -> float:
        """Seconds from stop position k to k+1 leaving at `at`."""
        a, b = int(run.stops[k]), int(run.stops[k + 1])
        seen = self.segment_runs.get((a, b))
        if seen:
            recent = _recent_mean(seen, at)
            if recent is not None:
                return recent
        scheduled = float(run.sched_arr[k + 1] - run.sched_dep[k])
        if self.speeds is not None:
            kmh = self.speeds(self.tt.stop_ids[a], self.tt.stop_ids[b], at)
            if kmh is not None and kmh > 1:
                # Buses run slower than cars (stops, lanes): scale the schedule by the traffic's slowdown.
                return max(scheduled, float(run.cum_m[k + 1] - run.cum_m[k]) / (kmh / 3.6))
        return scheduled

    def expected_dwell(self, run: TripRun, k: int, at: float) -> float:
        if k == 0 or k == len(run.stops) - 1:
            return 0.0
        seen = self.dwells.get(int(run.stops[k]))
        if seen:
            recent = _recent_mean(seen, at)
            if recent is not None:
                return recent
        scheduled = float(run.sched_dep[k] - run.sched_arr[k])
        return scheduled if scheduled > 0 else DEFAULT_DWELL_S

    def predict(self, run: TripRun, now: float) -> list[tuple[int, float, float]]:
        """[(stop position, arrival epoch, departure epoch)] from the next stop on."""
        n = len(run.stops)
        out: list[tuple[int, float, float]] = []
        if not run.started:
            leave = max(float(run.sched_dep[0]), now)
            out.append((0, leave, leave))
            k, t = 0, leave
        elif run.next_pos >= n:
            return out
        elif run.stopped_at is not None:
            k = run.stopped_at
            arrived = run.arrivals.get(k, run.last_t or now)
            leave = max(self._held(run, k, arrived + self.expected_dwell(run, k, now)), now)
            out.append((k, arrived, leave))
            t = leave
        else:
            k = run.next_pos - 1
            if k < 0:
                return out
            left = run.departures.get(k, run.last_t or now)
            expected = self.expected_run(run, k, left)
            length = float(run.cum_m[k + 1] - run.cum_m[k])
            done = 0.0 if length <= 0 else min(1.0, max(0.0, (run.progress_m - float(run.cum_m[k])) / length))
            seen_at = run.last_t or now
            elapsed = max(0.0, seen_at - left)
            remaining = expected * (1 - done)
            if done > 0.1 and elapsed > 0:
                # The vehicle's own pace on this segment so far says more the further it got.
                remaining = (1 - done) * remaining + done * (elapsed * (1 - done) / done)
            elif elapsed > expected:
                remaining = max(remaining, 0.25 * expected)   # late and hardly moving: stuck, not arriving
            arrive = max(now, seen_at + remaining, left + 1.0)
            k += 1
            leave = self._held(run, k, arrive + self.expected_dwell(run, k, arrive))
            out.append((k, arrive, leave))
            t = leave
        pace = run.pace_factor
        while k + 1 < n:
            arrive = t + self.expected_run(run, k, t) * pace
            k += 1
            leave = self._held(run, k, arrive + self.expected_dwell(run, k, arrive))
            out.append((k, arrive, leave))
            t = leave
        return out

    # ------------------------------------------------------------------ views

    def active_runs(self, now: float) -> Iterable[TripRun]:
        """Runs with a vehicle seen; those silent for FORGET_S are dropped."""
        for run in list(self.runs.values()):
            if run.last_t is None:
                continue
            if now - run.last_t > FORGET_S:
                del self.runs[(run.key, run.service_date)]
                continue
            yield run

    def rows_of(self, day: DayTimetable) -> dict[tuple[int, int], tuple[int, int]]:
        """(trip, offset) → (day pattern, row) in `day` (cached for the day view)."""
        if self._rows_day is not day:
            self._rows = {(t, o): (p, row) for p, dp in enumerate(day.patterns)
                          for row, (t, o) in enumerate(zip(dp.trips.tolist(), dp.offsets.tolist(), strict=True))}
            self._rows_day = day
        return self._rows

    def day_times(self, run: TripRun, now: float, day_base: float) -> tuple[np.ndarray, np.ndarray]:
        """The run's arrival and departure times as seconds of the day starting at `day_base`: observed
        for the stops behind the vehicle, predicted for those ahead (never decreasing)."""
        arr = run.sched_arr.copy()
        dep = run.sched_dep.copy()
        for k, t in run.arrivals.items():
            arr[k] = t
        for k, t in run.departures.items():
            dep[k] = t
        for k, a, d in self.predict(run, now):
            arr[k], dep[k] = a, d
        dep = np.maximum(dep, arr)
        arr = np.maximum.accumulate(np.maximum(arr, np.r_[arr[0], dep[:-1]]))
        dep = np.maximum(dep, arr)
        return np.round(arr - day_base).astype(np.int64), np.round(dep - day_base).astype(np.int64)

    def status(self) -> dict[str, object]:
        return {"feedId": self.feed_id, "accepted": self.accepted, "refused": dict(sorted(self.refused.items())),
                "vehicles": len(self.vehicles), "trips": sum(1 for r in self.runs.values() if r.started)}
