"""Benchmark of the RAPTOR journey planner (cityos.mobility.raptor), single core, no database.

    uv run --frozen python bench/mobility_bench.py                 # NYC, Cairns, synthetic city
    uv run --frozen python bench/mobility_bench.py --queries 500 --synthetic-queries 100

For each feed (the real NYC subway and Cairns feeds read in place from ../shared/data/gtfs, and a
generated city-size feed), on one weekday's timetable:

- earliest arrival: stop → stop at a random time 05:00–22:00, RAPTOR run to convergence with target
  pruning; p50/p99 per query. Target on NYC: p99 < 10 ms.
- Pareto: the same queries with at most 4 transfers (5 rounds), every Pareto journey reconstructed
  (legs); p50/p99. Target on NYC: p99 < 50 ms.
- times are wall-clock (perf_counter) and CPU (thread_time) per query: on a shared, loaded machine the
  wall-clock tail mostly measures waiting for a core, so both are printed, with the load average.
- baseline in the same run: a Connection Scan over the same day's connections (sorted by departure,
  scanned from the departure time until it passes the best arrival at the target), p50/p99, and its
  arrivals must equal RAPTOR's (`*_mismatches`, expected 0).

The timetable build and the per-date view are timed separately (they are done once per feed version
and date, not per query). The synthetic feed: a 100 × 100 grid of stops 300 m apart (10,000 stops),
a bus line along every row and column in both directions, a trip every 30 minutes 05:00–20:00
(≈ 1.24 M stop times), walking transfers within 400 m; its memory is the process's resident-set
growth while building it, and the numpy arrays' own size.

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cityos.mobility import raptor  # noqa: E402
from cityos.mobility.gtfs import DAYS, FeedTables, read_feed  # noqa: E402
from cityos.mobility.timetable import BIG, DayTimetable, Timetable, build_timetable  # noqa: E402

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def shared_gtfs() -> Path | None:
    for parent in ROOT.resolve().parents:
        candidate = parent / "shared" / "data" / "gtfs"
        if candidate.is_dir():
            return candidate
    return None


class ConnectionScan:
    """The baseline: connections of the day view in departure order, earliest arrival at one target."""

    def __init__(self, day: DayTimetable) -> None:
        tt = day.timetable
        deps: list[np.ndarray] = []
        trip_base = 0
        for dp in day.patterns:
            rows, n = dp.dep.shape
            if n < 2:
                continue
            pick = dp.board[:, :-1] > -(1 << 29)
            drop = dp.alight[:, 1:] < BIG
            ok = np.ones_like(pick)  # every hop is ridden, whatever the stops allow
            dep = dp.dep[:, :-1][ok]
            arr = np.where(drop, dp.arr[:, 1:], BIG)[ok]
            u = np.broadcast_to(dp.stops[:-1], (rows, n - 1))[ok]
            v = np.broadcast_to(dp.stops[1:], (rows, n - 1))[ok]
            trip = np.broadcast_to(np.arange(rows)[:, None] + trip_base, (rows, n - 1))[ok]
            can_board = np.where(pick, dp.dep[:, :-1], BIG)[ok]
            seq = np.broadcast_to(np.arange(n - 1), (rows, n - 1))[ok]
            deps.append(np.stack([dep, arr, u, v, trip, can_board, seq], axis=1))
            trip_base += rows
        table = np.concatenate(deps) if deps else np.zeros((0, 7), dtype=np.int64)
        table = table[np.lexsort((table[:, 6], table[:, 1], table[:, 0]))]
        self.dep = table[:, 0].copy()
        self.rows = table.tolist()
        self.n_trips = trip_base
        self.change = tt.change_time.tolist()
        self.walks: list[list[tuple[int, int]]] = [[] for _ in range(len(tt.stop_ids))]
        for a, b, d in zip(tt.fp_from.tolist(), tt.fp_to.tolist(), tt.fp_dur.tolist(), strict=True):
            self.walks[a].append((b, d))

    def earliest(self, origin: int, t0: int, target: int) -> int:
        board = {origin: t0}
        arrive = {origin: t0}
        vehicle: dict[int, int] = {}
        for w, d in self.walks[origin]:
            arrive[w] = min(arrive.get(w, BIG), t0 + d)
            board[w] = min(board.get(w, BIG), t0 + d)
        best = arrive.get(target, BIG)
        reached: dict[int, int] = {}
        start = int(np.searchsorted(self.dep, t0))
        for dep, arr, u, v, trip, can_board, seq in self.rows[start:]:
            if dep >= best:
                break
            if reached.get(trip, BIG) > seq:
                if can_board >= BIG or board.get(u, BIG) > dep:
                    continue
                reached[trip] = seq
            if arr < vehicle.get(v, BIG):
                vehicle[v] = arr
                if arr < arrive.get(v, BIG):
                    arrive[v] = arr
                if arr + self.change[v] < board.get(v, BIG):
                    board[v] = arr + self.change[v]
                for w, d in self.walks[v]:
                    if arr + d < arrive.get(w, BIG):
                        arrive[w] = arr + d
                    if arr + d < board.get(w, BIG):
                        board[w] = arr + d
                best = arrive.get(target, BIG)
        return best


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 3) if values else float("nan")


def measure(name: str, tt: Timetable, date: dt.date, queries: int, csa_queries: int, seed: int) -> dict[str, Any]:
    t = time.perf_counter()
    day = tt.day(date)
    day_s = time.perf_counter() - t
    rng = random.Random(seed)
    served = np.flatnonzero(tt.boardable).tolist()
    pairs = [(rng.choice(served), rng.choice(served), rng.randint(5 * 3600, 22 * 3600)) for _ in range(queries)]
    for o, d, t0 in pairs[:20]:  # warm-up (numpy's first calls)
        raptor.run(day, [(o, t0)], 16, [(d, 0)])
    ea_times, ea_cpu, ea_answers = [], [], []
    for o, d, t0 in pairs:
        c, t = time.thread_time(), time.perf_counter()
        result = raptor.run(day, [(o, t0)], 16, [(d, 0)])
        front = result.pareto()
        ea_times.append(time.perf_counter() - t)
        ea_cpu.append(time.thread_time() - c)
        ea_answers.append(front[-1][1] if front else BIG)
    log(f"{name}: earliest arrival p99 {pct(ea_times, 99)} ms")
    pareto_times, pareto_cpu, journeys = [], [], 0
    for o, d, t0 in pairs:
        c, t = time.thread_time(), time.perf_counter()
        result = raptor.run(day, [(o, t0)], 5, [(d, 0)])
        for vehicles, _arrival, stop in result.pareto():
            if vehicles:
                journeys += bool(result.journey(vehicles, stop))
        pareto_times.append(time.perf_counter() - t)
        pareto_cpu.append(time.thread_time() - c)
    log(f"{name}: Pareto (≤ 4 transfers) p99 {pct(pareto_times, 99)} ms")
    t = time.perf_counter()
    csa = ConnectionScan(day)
    csa_build = time.perf_counter() - t
    csa_times, csa_cpu, mismatches = [], [], 0
    for i, (o, d, t0) in enumerate(pairs[:csa_queries]):
        c, t = time.thread_time(), time.perf_counter()
        answer = csa.earliest(o, t0, d)
        csa_times.append(time.perf_counter() - t)
        csa_cpu.append(time.thread_time() - c)
        mismatches += answer != ea_answers[i]
    log(f"{name}: Connection Scan p99 {pct(csa_times, 99)} ms, {mismatches} mismatches")
    ea_mean = float(np.mean(ea_cpu[:csa_queries]))
    return {
        f"{name}_stops": len(served), f"{name}_stop_times": tt.stop_time_count,
        f"{name}_trips": len(tt.trip_ids), f"{name}_patterns_day": len(day.patterns), f"{name}_date": date.isoformat(),
        f"{name}_day_view_s": round(day_s, 3), f"{name}_queries": queries,
        f"{name}_ea_p50_ms": pct(ea_times, 50), f"{name}_ea_p99_ms": pct(ea_times, 99),
        f"{name}_ea_cpu_p50_ms": pct(ea_cpu, 50), f"{name}_ea_cpu_p99_ms": pct(ea_cpu, 99),
        f"{name}_pareto4_p50_ms": pct(pareto_times, 50), f"{name}_pareto4_p99_ms": pct(pareto_times, 99),
        f"{name}_pareto4_cpu_p50_ms": pct(pareto_cpu, 50), f"{name}_pareto4_cpu_p99_ms": pct(pareto_cpu, 99),
        f"{name}_pareto_journeys": journeys,
        f"{name}_csa_queries": len(csa_times), f"{name}_csa_build_s": round(csa_build, 3),
        f"{name}_csa_p50_ms": pct(csa_times, 50), f"{name}_csa_p99_ms": pct(csa_times, 99),
        f"{name}_csa_cpu_p50_ms": pct(csa_cpu, 50), f"{name}_csa_cpu_p99_ms": pct(csa_cpu, 99),
        f"{name}_csa_cpu_mean_over_raptor_cpu_mean": round(float(np.mean(csa_cpu)) / ea_mean, 2) if csa_times else None,
        f"{name}_csa_mismatches": mismatches,
    }


def synthetic_city(side: int = 100, spacing_m: float = 300.0, headway_s: int = 1800) -> FeedTables:
    """A side × side grid; a line per row and per column, both ways; a trip per headway 05:00–20:00."""
    lat0, lon0 = 31.0, 121.0
    dlat = spacing_m / 111_195.0
    dlon = spacing_m / (111_195.0 * np.cos(np.radians(lat0)))
    ii, jj = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    stop_ids = np.array([f"S{i}_{j}" for i, j in zip(ii.ravel(), jj.ravel(), strict=True)], dtype=object)
    stops = pd.DataFrame({"stop_id": stop_ids, "stop_name": stop_ids, "lat": lat0 + ii.ravel() * dlat,
                          "lon": lon0 + jj.ravel() * dlon, "location_type": 0, "parent_station": ""})
    lines: list[np.ndarray] = []
    grid = np.arange(side * side).reshape(side, side)
    for k in range(side):
        for seq in (grid[k, :], grid[:, k]):
            lines.extend([seq, seq[::-1]])
    starts = np.arange(5 * 3600, 20 * 3600 + 1, headway_s)
    hop = np.array([45 + (h * 37) % 60 for h in range(side)])  # 45–104 s between stops
    trip_ids, route_ids, st_trip, st_stop, st_seq, st_arr = [], [], [], [], [], []
    for li, line in enumerate(lines):
        offsets = np.concatenate([[0], np.cumsum(hop[: len(line) - 1] + 20)])
        for si, s0 in enumerate(starts):
            tid = f"L{li}_{si}"
            trip_ids.append(tid)
            route_ids.append(f"L{li}")
            st_trip.append(np.full(len(line), len(trip_ids) - 1))
            st_stop.append(line)
            st_seq.append(np.arange(len(line)))
            st_arr.append(s0 + (li * 97) % headway_s + offsets)
    arr = np.concatenate(st_arr)
    trips = pd.DataFrame({"trip_id": trip_ids, "route_id": route_ids, "service_id": "WK", "headsign": "",
                          "direction_id": ""})
    stop_times = pd.DataFrame({"trip_id": np.array(trip_ids, dtype=object)[np.concatenate(st_trip)],
                               "stop_id": stop_ids[np.concatenate(st_stop)], "stop_sequence": np.concatenate(st_seq),
                               "arrival": arr, "departure": arr + 20, "pickup": 0, "dropoff": 0})
    stop_times = stop_times.sort_values(["trip_id", "stop_sequence"], kind="stable").reset_index(drop=True)
    routes = pd.DataFrame({"route_id": [f"L{i}" for i in range(len(lines))], "agency_id": "",
                           "short_name": [f"{i}" for i in range(len(lines))], "long_name": "", "route_type": 3,
                           "color": ""})
    calendar = pd.DataFrame([{"service_id": "WK", **{d: int(i < 5) for i, d in enumerate(DAYS)},
                              "start_date": dt.date(2026, 1, 1), "end_date": dt.date(2026, 12, 31)}])
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in ("service_id", "date", "exception_type")})
    return FeedTables(agencies=[{"agency_name": "Synthetic"}], timezone="Asia/Shanghai", stops=stops, routes=routes,
                      trips=trips, stop_times=stop_times, calendar=calendar, calendar_dates=empty,
                      transfers=pd.DataFrame({c: pd.Series(dtype=object) for c in
                                              ("from_stop_id", "to_stop_id", "transfer_type", "min_transfer_time")}),
                      frequencies=pd.DataFrame({c: pd.Series(dtype=object) for c in
                                                ("trip_id", "start", "end", "headway", "exact_times")}))


def array_bytes(tt: Timetable, day: DayTimetable) -> int:
    total = sum(p.arr.nbytes + p.dep.nbytes + p.trips.nbytes + p.stops.nbytes for p in tt.patterns)
    total += sum(p.board.nbytes + p.alight.nbytes + p.arr.nbytes + p.dep.nbytes for p in day.patterns)
    return int(total + tt.fp_from.nbytes * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--csa-queries", type=int, default=500)
    parser.add_argument("--synthetic-queries", type=int, default=200)
    parser.add_argument("--synthetic-csa-queries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # single core
    out: dict[str, Any] = {"bench": "mobility", "single_core": True, "load_average_start": round(os.getloadavg()[0], 2)}
    data = shared_gtfs()
    feeds = [("nyc", "nyc_subway_gtfs.zip", dt.date(2025, 1, 8)), ("cairns", "cairns_gtfs.zip", dt.date(2014, 6, 4))]
    for name, filename, date in feeds:
        if data is None or not (data / filename).exists():
            out[f"{name}_skipped"] = "feed absent"
            continue
        t = time.perf_counter()
        tables, notices = read_feed((data / filename).read_bytes())
        assert tables is not None, notices.report()
        out[f"{name}_read_validate_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        tt = build_timetable(tables)
        out[f"{name}_build_s"] = round(time.perf_counter() - t, 3)
        out.update(measure(name, tt, date, args.queries, args.csa_queries, args.seed))
    before = rss_bytes()
    t = time.perf_counter()
    tables = synthetic_city()
    out["synthetic_generate_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    tt = build_timetable(tables)
    out["synthetic_build_s"] = round(time.perf_counter() - t, 3)
    del tables
    date = dt.date(2026, 6, 3)
    day = tt.day(date)
    out["synthetic_rss_growth_mb"] = round((rss_bytes() - before) / 1e6, 1)
    out["synthetic_arrays_mb"] = round(array_bytes(tt, day) / 1e6, 1)
    out["synthetic_footpaths"] = len(tt.fp_from)
    out.update(measure("synthetic", tt, date, args.synthetic_queries, args.synthetic_csa_queries, args.seed))
    out["synthetic_rss_mb"] = round(rss_bytes() / 1e6, 1)
    if "nyc_ea_p99_ms" in out:
        out["target_nyc_ea_p99_met"] = out["nyc_ea_p99_ms"] < 10
        out["target_nyc_pareto4_p99_met"] = out["nyc_pareto4_p99_ms"] < 50
        out["target_nyc_ea_cpu_p99_met"] = out["nyc_ea_cpu_p99_ms"] < 10
        out["target_nyc_pareto4_cpu_p99_met"] = out["nyc_pareto4_cpu_p99_ms"] < 50
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    out["duration_s"] = round(time.perf_counter() - T0, 1)
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
