"""An independent earliest-arrival reference: a plain Connection Scan (Dibbelt et al. 2013).

Written from the GTFS tables directly, sharing no code with cityos.mobility.timetable or raptor, on
the same model: trips of the date, of the day before running past 24:00 (−24 h) and of the next day
starting before 12:00 (+24 h); frequencies expanded; a walk of straight-line distance × detour at
walking speed between served stops within the transfer radius, transfers.txt overriding it (type 2
sets the time, a stop to itself is the minimum change time, type 3 forbids, stations stand for their
platforms); one walk after each vehicle, and after the origin.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import defaultdict
from pathlib import Path

from cityos.mobility.gtfs import DAYS, FeedTables

INF = 1 << 40


def gtfs_data_dir() -> Path | None:
    """../shared/data/gtfs from the repository (main checkout or a worktree), or None when absent."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "gtfs"
        if candidate.is_dir():
            return candidate
    return None


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * r * math.asin(math.sqrt(min(h, 1.0)))


class ConnectionScan:
    def __init__(self, tables: FeedTables, radius_m: float = 400.0, speed: float = 1.2, detour: float = 1.3):
        self.tables = tables
        st = tables.stop_times
        self.trip_stops: dict[str, list[tuple[str, int, int, int, int]]] = defaultdict(list)
        for row in st.itertuples(index=False):
            self.trip_stops[row.trip_id].append((row.stop_id, int(row.arrival), int(row.departure),
                                                 int(row.pickup), int(row.dropoff)))
        self.trip_service = dict(zip(tables.trips["trip_id"], tables.trips["service_id"], strict=True))
        served = sorted({s for stops in self.trip_stops.values() for s, *_ in stops})
        self.served = served
        where = {r.stop_id: (r.lat, r.lon) for r in tables.stops.itertuples(index=False)}
        walk: dict[tuple[str, str], int] = {}
        for a in served:
            for b in served:
                if a != b:
                    d = _metres(*where[a], *where[b])
                    if d <= radius_m:
                        walk[(a, b)] = math.ceil(d * detour / speed)
        children: dict[str, list[str]] = defaultdict(list)
        for r in tables.stops.itertuples(index=False):
            if r.parent_station:
                children[r.parent_station].append(r.stop_id)
        served_set = set(served)
        self.change: dict[str, int] = defaultdict(int)
        for r in tables.transfers.itertuples(index=False):
            a_id, b_id = r.from_stop_id, r.to_stop_id
            sources = [a_id] if a_id in served_set else children.get(a_id, [a_id])
            targets = [b_id] if b_id in served_set else children.get(b_id, [b_id])
            for a in sources:
                for b in targets:
                    if a == b:
                        if r.transfer_type == 2 and r.min_transfer_time > 0:
                            self.change[a] = max(self.change[a], int(r.min_transfer_time))
                        elif r.transfer_type == 3:
                            self.change[a] = INF
                    elif r.transfer_type == 3:
                        walk.pop((a, b), None)
                    elif r.transfer_type == 2 and r.min_transfer_time >= 0:
                        walk[(a, b)] = int(r.min_transfer_time)
                    elif (a, b) not in walk:
                        walk[(a, b)] = math.ceil(_metres(*where[a], *where[b]) * detour / speed)
        self.walks: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for (a, b), d in walk.items():
            self.walks[a].append((b, d))
        self._connections: dict[dt.date, list[tuple[int, int, str, str, tuple[str, int], bool, bool, int]]] = {}

    def _active(self, date: dt.date) -> set[str]:
        active = set()
        for r in self.tables.calendar.to_dict("records"):
            if r[DAYS[date.weekday()]] == 1 and r["start_date"] <= date <= r["end_date"]:
                active.add(r["service_id"])
        for r in self.tables.calendar_dates.to_dict("records"):
            if r["date"] == date:
                (active.add if r["exception_type"] == 1 else active.discard)(r["service_id"])
        return active

    def connections(self, date: dt.date) -> list[tuple[int, int, str, str, tuple[str, int], bool, bool, int]]:
        if date in self._connections:
            return self._connections[date]
        frequencies = defaultdict(list)
        for r in self.tables.frequencies.itertuples(index=False):
            frequencies[r.trip_id].append((int(r.start), int(r.end), int(r.headway)))
        out = []
        for shift in (-86_400, 0, 86_400):
            active = self._active(date + dt.timedelta(seconds=shift))
            for trip, stops in self.trip_stops.items():
                if self.trip_service.get(trip) not in active:
                    continue
                starts = [0]
                if trip in frequencies:
                    starts = [t - stops[0][2] for s, e, h in frequencies[trip] for t in range(s, e, h)]
                for start in starts:
                    if shift < 0 and stops[-1][1] + start <= 86_400:
                        continue
                    if shift > 0 and stops[0][2] + start >= 12 * 3600:
                        continue
                    instance = (trip, shift + start)
                    for position, (a, b) in enumerate(itertools.pairwise(stops)):
                        out.append((a[2] + start + shift, b[1] + start + shift, a[0], b[0], instance,
                                    a[3] != 1, b[4] != 1, position))
        out.sort(key=lambda c: (c[0], c[1]))
        self._connections[date] = out
        return out

    def earliest(self, date: dt.date, origin: str, t0: int, horizon: int) -> dict[str, int]:
        """Earliest arrival (any means) at every stop reached by t0 + horizon."""
        conns = self.connections(date)
        lo, hi = 0, len(conns)
        while lo < hi:
            mid = (lo + hi) // 2
            if conns[mid][0] < t0:
                lo = mid + 1
            else:
                hi = mid
        arrive: dict[str, int] = {origin: t0}
        board: dict[str, int] = {origin: t0}
        vehicle: dict[str, int] = {}
        for w, d in self.walks.get(origin, ()):
            arrive[w] = min(arrive.get(w, INF), t0 + d)
            board[w] = min(board.get(w, INF), t0 + d)
        # trip instance → first position boarded (a trip reached later in its run cannot be used earlier)
        reached: dict[tuple[str, int], int] = {}
        end = t0 + horizon
        i = lo
        while i < len(conns) and conns[i][0] <= end:
            # A block of connections leaving at the same second is scanned until nothing changes:
            # zero-length connections and zero-length walks may feed each other in any order.
            j = i
            while j < len(conns) and conns[j][0] == conns[i][0]:
                j += 1
            changed = True
            while changed:
                changed = False
                for dep, arr, u, v, trip, pick, drop, position in conns[i:j]:
                    if reached.get(trip, INF) > position:
                        if not (pick and board.get(u, INF) <= dep):
                            continue
                        reached[trip] = position
                        changed = True
                    if drop and arr < vehicle.get(v, INF):
                        vehicle[v] = arr
                        changed = True
                        if arr < arrive.get(v, INF):
                            arrive[v] = arr
                        if arr + self.change[v] < board.get(v, INF):
                            board[v] = arr + self.change[v]
                        for w, d in self.walks.get(v, ()):
                            if arr + d < arrive.get(w, INF):
                                arrive[w] = arr + d
                            if arr + d < board.get(w, INF):
                                board[w] = arr + d
            i = j
        return {s: t for s, t in arrive.items() if t <= end}
