"""The timetable as numpy arrays, built from a validated feed, and its per-date view for RAPTOR.

`Timetable` holds every trip grouped into patterns (same stops, same pickup/drop-off rules), with
frequencies.txt expanded into trips, the services' calendars and the footpaths. `DayTimetable` is the
view for one service date: trips of that date, plus trips of the day before whose times run past
24:00 (shifted by −24 h) and trips of the next day that start before 12:00 (shifted by +24 h), so a
late-evening query finds after-midnight service. Trips in a day pattern are sorted and split so that
no trip overtakes another (RAPTOR's FIFO assumption holds by construction).

Walking: transfers between stops within `max_transfer_m` use the straight-line distance × a detour
factor at walking speed, an approximation of the street network (no street graph is used here).
transfers.txt overrides it: type 2 sets the time (a stop to itself: the minimum change time), type 3
forbids the transfer; a transfer between stations applies to their platforms.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cityos.mobility.gtfs import DAYS, FeedTables

DAY = 86_400
BIG = 1 << 30          # "never" as an arrival time
NEG = -(1 << 30)       # "cannot board here" as a departure time
NEXT_DAY_WINDOW = 12 * 3600
EARTH_M = 6_371_008.8


@dataclass(frozen=True)
class WalkSettings:
    max_transfer_m: float = 400.0   # walking transfers between stops
    max_access_m: float = 1_000.0   # walking from the origin and to the destination
    speed_mps: float = 1.2
    detour: float = 1.3             # street path ≈ straight line × detour

    def seconds(self, metres: np.ndarray | float) -> Any:
        return np.ceil(np.asarray(metres) * self.detour / self.speed_mps).astype(np.int64)


def haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(np.asarray(lon2) - lon1) / 2) ** 2
    return 2 * EARTH_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


@dataclass
class Pattern:
    stops: np.ndarray       # stop indices along the pattern
    route: int
    trips: np.ndarray       # trip indices (rows)
    arr: np.ndarray         # rows × stops, seconds of the trip's service day
    dep: np.ndarray
    no_pickup: np.ndarray   # per stop position
    no_dropoff: np.ndarray


@dataclass
class Timetable:
    stop_ids: list[str]
    stop_names: list[str]
    lat: np.ndarray
    lon: np.ndarray
    parent: np.ndarray               # parent station index or -1
    boardable: np.ndarray            # stops served by some trip
    route_ids: list[str]
    route_info: list[dict[str, Any]]
    trip_ids: list[str]
    trip_route: np.ndarray
    trip_service: np.ndarray
    trip_headsign: list[str]
    patterns: list[Pattern]
    service_ids: list[str]
    timezone: str
    first_date: dt.date | None
    last_date: dt.date | None
    change_time: np.ndarray          # minimum change time at each stop
    fp_from: np.ndarray
    fp_to: np.ndarray
    fp_dur: np.ndarray
    walk: WalkSettings
    _calendar: dict[int, tuple[np.ndarray, dt.date, dt.date]] = field(default_factory=dict)
    _exceptions: dict[dt.date, list[tuple[int, int]]] = field(default_factory=dict)
    _days: dict[dt.date, DayTimetable] = field(default_factory=dict)
    _days_lock: threading.Lock = field(default_factory=threading.Lock)  # plans run in worker threads
    stop_index: dict[str, int] = field(default_factory=dict)

    @property
    def stop_time_count(self) -> int:
        return int(sum(p.arr.size for p in self.patterns))

    def active_services(self, date: dt.date) -> np.ndarray:
        active = np.zeros(len(self.service_ids), dtype=bool)
        weekday = date.weekday()
        for service, (flags, start, end) in self._calendar.items():
            if flags[weekday] and start <= date <= end:
                active[service] = True
        for service, kind in self._exceptions.get(date, ()):
            active[service] = kind == 1
        return active

    def in_service(self, date: dt.date) -> bool:
        return bool(self.active_services(date).any())

    def day(self, date: dt.date) -> DayTimetable:
        """The view for `date`, cached (a few per timetable: today, tomorrow, a queried date)."""
        with self._days_lock:
            view = self._days.get(date)
            if view is None:
                if len(self._days) >= 8:
                    self._days.pop(next(iter(self._days)))
                view = self._days[date] = DayTimetable.build(self, date)
            return view


def build_timetable(tables: FeedTables, walk: WalkSettings | None = None) -> Timetable:
    walk = walk or WalkSettings()
    stops = tables.stops.reset_index(drop=True)
    stop_ids = stops["stop_id"].astype(str).tolist()
    index = {s: i for i, s in enumerate(stop_ids)}
    parent = np.array([index.get(p, -1) if p else -1 for p in stops["parent_station"].astype(str)], dtype=np.int64)

    routes = tables.routes.reset_index(drop=True)
    route_ids = routes["route_id"].astype(str).tolist()
    route_index = {r: i for i, r in enumerate(route_ids)}
    route_info = [{"id": r["route_id"], "shortName": r["short_name"] or None, "longName": r["long_name"] or None,
                   "type": int(r["route_type"]), "color": r["color"] or None, "agencyId": r["agency_id"] or None}
                  for r in routes.to_dict("records")]

    services = sorted(set(tables.calendar["service_id"]) | set(tables.calendar_dates["service_id"]))
    service_index = {s: i for i, s in enumerate(services)}
    calendar: dict[int, tuple[np.ndarray, dt.date, dt.date]] = {}
    for row in tables.calendar.to_dict("records"):
        calendar[service_index[row["service_id"]]] = (np.array([int(row[d]) for d in DAYS], dtype=bool),
                                                      row["start_date"], row["end_date"])
    exceptions: dict[dt.date, list[tuple[int, int]]] = {}
    for row in tables.calendar_dates.to_dict("records"):
        exceptions.setdefault(row["date"], []).append((service_index[row["service_id"]], int(row["exception_type"])))

    trips = tables.trips.reset_index(drop=True)
    trip_meta = {t: (route_index[r], service_index.get(s, -1), h)
                 for t, r, s, h in zip(trips["trip_id"], trips["route_id"], trips["service_id"], trips["headsign"],
                                       strict=True)}
    st = tables.stop_times
    st_trip = st["trip_id"].to_numpy()
    st_stop = st["stop_id"].map(index).to_numpy(dtype=np.int64)
    st_arr = st["arrival"].to_numpy(dtype=np.int64)
    st_dep = st["departure"].to_numpy(dtype=np.int64)
    st_nopick = (st["pickup"].to_numpy() == 1)
    st_nodrop = (st["dropoff"].to_numpy() == 1)
    bounds = np.flatnonzero(np.r_[True, st_trip[1:] != st_trip[:-1], True])
    freq: dict[str, list[tuple[int, int, int]]] = {}
    for row in tables.frequencies.itertuples(index=False):
        freq.setdefault(str(row.trip_id), []).append((int(row.start), int(row.end), int(row.headway)))

    trip_ids: list[str] = []
    trip_route: list[int] = []
    trip_service: list[int] = []
    trip_headsign: list[str] = []
    groups: dict[tuple[bytes, bytes, bytes], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    keys: dict[tuple[bytes, bytes, bytes], tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
    for a, b in itertools.pairwise(bounds):
        trip_id = str(st_trip[a])
        route, service, headsign = trip_meta[trip_id]
        seq = st_stop[a:b]
        key = (seq.tobytes(), st_nopick[a:b].tobytes(), st_nodrop[a:b].tobytes() + route.to_bytes(4, "little"))
        if key not in keys:
            keys[key] = (seq, st_nopick[a:b], st_nodrop[a:b], route)
        arr, dep = st_arr[a:b], st_dep[a:b]
        starts = [(trip_id, 0)]
        if trip_id in freq:
            # frequencies.txt: the trip's own times give only the running times; departures every headway.
            starts = []
            for start, end, headway in freq[trip_id]:
                starts.extend((f"{trip_id}@{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}", t - int(dep[0]))
                              for t in range(start, end, headway))
        for name, shift in starts:
            groups.setdefault(key, []).append((len(trip_ids), arr + shift, dep + shift))
            trip_ids.append(name)
            trip_route.append(route)
            trip_service.append(service)
            trip_headsign.append(headsign)

    patterns: list[Pattern] = []
    for key, members in groups.items():
        seq, nopick, nodrop, route = keys[key]
        patterns.append(Pattern(stops=seq.astype(np.int64), route=route,
                                trips=np.array([m[0] for m in members], dtype=np.int64),
                                arr=np.vstack([m[1] for m in members]), dep=np.vstack([m[2] for m in members]),
                                no_pickup=nopick.copy(), no_dropoff=nodrop.copy()))

    lat = stops["lat"].to_numpy(dtype=float)
    lon = stops["lon"].to_numpy(dtype=float)
    boardable = np.zeros(len(stop_ids), dtype=bool)
    boardable[st_stop] = True
    change, fp_from, fp_to, fp_dur = _footpaths(tables.transfers, index, parent, lat, lon, boardable, walk)
    first, last = tables.service_range()
    timetable = Timetable(
        stop_ids=stop_ids, stop_names=stops["stop_name"].astype(str).tolist(), lat=lat, lon=lon, parent=parent,
        boardable=boardable, route_ids=route_ids, route_info=route_info, trip_ids=trip_ids,
        trip_route=np.array(trip_route, dtype=np.int64), trip_service=np.array(trip_service, dtype=np.int64),
        trip_headsign=trip_headsign, patterns=patterns, service_ids=services, timezone=tables.timezone,
        first_date=first, last_date=last, change_time=change, fp_from=fp_from, fp_to=fp_to, fp_dur=fp_dur, walk=walk)
    timetable._calendar, timetable._exceptions, timetable.stop_index = calendar, exceptions, index
    return timetable


def near_pairs(lat: np.ndarray, lon: np.ndarray, radius_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ordered pairs (i, j), i != j, within `radius_m` (grid buckets of the radius' size)."""
    if len(lat) == 0 or radius_m <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    lat0 = float(np.nanmean(lat))
    y = np.radians(lat) * EARTH_M
    x = np.radians(lon) * EARTH_M * math.cos(math.radians(lat0))
    cx = np.floor(x / radius_m).astype(np.int64)
    cy = np.floor(y / radius_m).astype(np.int64)
    frame = pd.DataFrame({"cx": cx, "cy": cy, "i": np.arange(len(lat))})
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            moved = frame.assign(cx=frame["cx"] + dx, cy=frame["cy"] + dy)
            joined = moved.merge(frame, on=["cx", "cy"], suffixes=("", "_j"))
            found_i.append(joined["i"].to_numpy())
            found_j.append(joined["i_j"].to_numpy())
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    keep = i != j
    i, j = i[keep], j[keep]
    d = haversine_m(lat[i], lon[i], lat[j], lon[j])
    keep = d <= radius_m
    return i[keep], j[keep], d[keep]


def _footpaths(transfers: pd.DataFrame, index: dict[str, int], parent: np.ndarray, lat: np.ndarray,
               lon: np.ndarray, boardable: np.ndarray, walk: WalkSettings
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    served = np.flatnonzero(boardable)
    i, j, d = near_pairs(lat[served], lon[served], walk.max_transfer_m)
    paths: dict[tuple[int, int], int] = dict(zip(zip(served[i].tolist(), served[j].tolist(), strict=True),
                                                 walk.seconds(d).tolist(), strict=True))
    change = np.zeros(len(lat), dtype=np.int64)
    children: dict[int, list[int]] = {}
    for child in np.flatnonzero(parent >= 0).tolist():
        children.setdefault(int(parent[child]), []).append(child)

    def platforms(stop: int) -> list[int]:
        return children.get(stop, [stop]) if not boardable[stop] else [stop]

    for row in transfers.itertuples(index=False):
        a, b = index.get(str(row.from_stop_id)), index.get(str(row.to_stop_id))
        if a is None or b is None:
            continue
        kind, minimum = int(row.transfer_type), int(row.min_transfer_time)
        for x in platforms(a):
            for y in platforms(b):
                if x == y:
                    if kind == 2 and minimum > 0:
                        change[x] = max(change[x], minimum)
                    elif kind == 3:
                        change[x] = BIG
                elif kind == 3:
                    paths.pop((x, y), None)
                elif kind == 2 and minimum >= 0:
                    paths[(x, y)] = minimum
                elif (x, y) not in paths:
                    distance = float(haversine_m(lat[x], lon[x], lat[y], lon[y]))
                    paths[(x, y)] = int(walk.seconds(distance))
    if not paths:
        empty = np.zeros(0, dtype=np.int64)
        return change, empty, empty.copy(), empty.copy()
    pairs = np.array(list(paths.keys()), dtype=np.int64)
    return change, pairs[:, 0].copy(), pairs[:, 1].copy(), np.array(list(paths.values()), dtype=np.int64)


@dataclass
class DayPattern:
    source: int              # index into Timetable.patterns
    stops: np.ndarray
    board: np.ndarray        # rows × stops departure (NEG where no pickup)
    alight: np.ndarray       # rows × stops arrival (BIG where no drop-off)
    arr: np.ndarray
    dep: np.ndarray
    trips: np.ndarray
    offsets: np.ndarray      # seconds added to the trip's own times (−DAY, 0, +DAY)
    repeats: bool            # the pattern visits a stop twice


@dataclass
class DayTimetable:
    date: dt.date
    timetable: Timetable
    patterns: list[DayPattern]
    stop_pat_ptr: np.ndarray
    stop_pat: np.ndarray
    route_type: np.ndarray   # per day pattern

    @classmethod
    def build(cls, tt: Timetable, date: dt.date) -> DayTimetable:
        days = [(tt.active_services(date - dt.timedelta(days=1)), -DAY),
                (tt.active_services(date), 0),
                (tt.active_services(date + dt.timedelta(days=1)), DAY)]
        out: list[DayPattern] = []
        for source, p in enumerate(tt.patterns):
            service = tt.trip_service[p.trips]
            parts = []
            for active, offset in days:
                ok = np.zeros(len(p.trips), dtype=bool)
                known = service >= 0
                ok[known] = active[service[known]]
                if offset < 0:
                    ok &= p.arr[:, -1] > DAY
                elif offset > 0:
                    ok &= p.dep[:, 0] < NEXT_DAY_WINDOW
                if ok.any():
                    parts.append((np.flatnonzero(ok), offset))
            if not parts:
                continue
            rows = np.concatenate([r for r, _ in parts])
            offsets = np.concatenate([np.full(len(r), o, dtype=np.int64) for r, o in parts])
            arr = p.arr[rows] + offsets[:, None]
            dep = p.dep[rows] + offsets[:, None]
            order = np.lexsort((arr[:, -1], dep[:, 0]))
            rows, offsets, arr, dep = rows[order], offsets[order], arr[order], dep[order]
            for group in _fifo_groups(arr, dep):
                board = dep[group].copy()
                board[:, p.no_pickup] = NEG
                alight = arr[group].copy()
                alight[:, p.no_dropoff] = BIG
                out.append(DayPattern(source=source, stops=p.stops, board=board, alight=alight, arr=arr[group],
                                      dep=dep[group], trips=p.trips[rows[group]], offsets=offsets[group],
                                      repeats=len(np.unique(p.stops)) != len(p.stops)))
        return cls.assemble(tt, date, out)

    @classmethod
    def assemble(cls, tt: Timetable, date: dt.date, out: list[DayPattern]) -> DayTimetable:
        n = len(tt.stop_ids)
        pairs = [(int(s), k) for k, dp in enumerate(out) for s in np.unique(dp.stops)]
        pairs.sort()
        counts = np.bincount(np.array([s for s, _ in pairs], dtype=np.int64), minlength=n) if pairs else np.zeros(n)
        ptr = np.zeros(n + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(counts)
        route_type = np.array([tt.route_info[tt.patterns[dp.source].route]["type"] for dp in out], dtype=np.int64)
        return cls(date=date, timetable=tt, patterns=out, stop_pat_ptr=ptr,
                   stop_pat=np.array([k for _, k in pairs], dtype=np.int64), route_type=route_type)


def _fifo_groups(arr: np.ndarray, dep: np.ndarray) -> list[np.ndarray]:
    """Split rows (sorted by first departure) into groups in which no trip overtakes another."""
    if len(arr) < 2 or (np.all(np.diff(arr, axis=0) >= 0) and np.all(np.diff(dep, axis=0) >= 0)):
        return [np.arange(len(arr))]
    groups: list[list[int]] = []
    for row in range(len(arr)):
        for group in groups:
            last = group[-1]
            if np.all(arr[row] >= arr[last]) and np.all(dep[row] >= dep[last]):
                group.append(row)
                break
        else:
            groups.append([row])
    return [np.array(g, dtype=np.int64) for g in groups]


def with_realtime(day: DayTimetable, times: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]) -> DayTimetable:
    """`day` with the arrival and departure times of some trips replaced ({(day pattern, row): (arr, dep)},
    seconds of the day), the changed patterns re-sorted and split again so no trip overtakes another."""
    if not times:
        return day
    tt = day.timetable
    changed = {p for p, _ in times}
    out: list[DayPattern] = []
    for k, dp in enumerate(day.patterns):
        if k not in changed:
            out.append(dp)
            continue
        arr, dep = dp.arr.copy(), dp.dep.copy()
        for (p, row), (a, d) in times.items():
            if p == k:
                arr[row], dep[row] = a, d
        order = np.lexsort((arr[:, -1], dep[:, 0]))
        arr, dep = arr[order], dep[order]
        trips, offsets = dp.trips[order], dp.offsets[order]
        no_pickup = dp.board[0] == NEG
        no_dropoff = dp.alight[0] == BIG
        for group in _fifo_groups(arr, dep):
            board = dep[group].copy()
            board[:, no_pickup] = NEG
            alight = arr[group].copy()
            alight[:, no_dropoff] = BIG
            out.append(DayPattern(source=dp.source, stops=dp.stops, board=board, alight=alight, arr=arr[group],
                                  dep=dep[group], trips=trips[group], offsets=offsets[group], repeats=dp.repeats))
    return DayTimetable.assemble(tt, day.date, out)
