"""RAPTOR (Delling, Pajor, Werneck 2012) over a `DayTimetable`.

Round k finds the best arrivals with at most k vehicles. Each round scans the patterns serving a stop
improved in the previous round; a pattern is scanned for all its trips at once with numpy: for every
stop position the first trip that can be boarded there, a running minimum along the pattern (FIFO:
an earlier trip is earlier everywhere), and the arrivals of that trip. Labels per stop:

- V: best arrival by vehicle (walking transfers start from it: at most one walk between vehicles);
- A: best arrival by any means (what a traveller sees);
- B: earliest time one can board there (a vehicle arrival plus the stop's minimum change time, or a
  walk's arrival, or the access walk from the origin).

Arrival times × rounds give the Pareto set of arrival time × number of vehicles (transfers + 1).
Local pruning (a label must improve the stop's best) and target pruning (it must beat the best arrival
at the destination) keep the search small; both are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cityos.mobility.timetable import BIG, DayTimetable

ORIGIN, VEHICLE, FOOT = 1, 2, 3


@dataclass
class Round:
    arr_a: np.ndarray
    kind_a: np.ndarray
    from_a: np.ndarray
    arr_b: np.ndarray
    kind_b: np.ndarray
    from_b: np.ndarray
    veh_arr: np.ndarray
    veh_pat: np.ndarray
    veh_row: np.ndarray
    veh_board: np.ndarray     # boarding position in the pattern
    veh_alight: np.ndarray    # alighting position in the pattern
    veh_src: np.ndarray       # round in which the boarding label was set

    @classmethod
    def empty(cls, n: int) -> Round:
        inf = np.full(n, BIG, dtype=np.int64)
        neg = np.full(n, -1, dtype=np.int64)
        return cls(inf, np.zeros(n, dtype=np.int8), neg, inf.copy(), np.zeros(n, dtype=np.int8), neg.copy(),
                   inf.copy(), neg.copy(), neg.copy(), neg.copy(), neg.copy(), neg.copy())


@dataclass
class Leg:
    mode: str                 # "WALK" or "TRANSIT"
    from_stop: int
    to_stop: int
    start: int                # seconds of the service day
    end: int
    pattern: int = -1         # day pattern index (TRANSIT)
    row: int = -1
    board: int = -1
    alight: int = -1


@dataclass
class Result:
    day: DayTimetable
    rounds: list[Round]
    best_a: np.ndarray
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    egress: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def arrival_at(self, k: int, stop: int) -> tuple[int, int]:
        """(best arrival at `stop` with at most k vehicles, the round that set it)."""
        best, where = BIG, -1
        for r in range(min(k, len(self.rounds) - 1) + 1):
            value = int(self.rounds[r].arr_a[stop])
            if value < best:
                best, where = value, r
        return best, where

    def pareto(self) -> list[tuple[int, int, int]]:
        """[(vehicles, arrival at the destination incl. egress, destination stop)], arrival strictly improving."""
        out: list[tuple[int, int, int]] = []
        best = BIG
        current = np.full(len(self.targets), BIG, dtype=np.int64)
        for k, rnd in enumerate(self.rounds):
            current = np.minimum(current, rnd.arr_a[self.targets])
            total = current + self.egress
            if len(total) and int(total.min()) < best:
                i = int(total.argmin())
                best = int(total[i])
                out.append((k, best, int(self.targets[i])))
        return out

    def journey(self, k: int, stop: int) -> list[Leg]:
        """The legs reaching `stop` with at most k vehicles (origin first).

        Walks back through the labels: an arrival (A) or boarding (B) label was set by the origin, a
        vehicle arrival (V) at that stop in the same round, or a walk from a stop reached by vehicle in
        that round (from the origin in round 0); a vehicle leg boarded on the B label of an earlier round.
        """
        _, r = self.arrival_at(k, stop)
        if r < 0:
            return []
        legs: list[Leg] = []
        label = "A"
        for _ in range(4 * len(self.rounds) + 4):
            rnd = self.rounds[r]
            if label == "V":
                p, row = int(rnd.veh_pat[stop]), int(rnd.veh_row[stop])
                board, alight = int(rnd.veh_board[stop]), int(rnd.veh_alight[stop])
                pattern = self.day.patterns[p]
                from_stop = int(pattern.stops[board])
                legs.append(Leg("TRANSIT", from_stop, stop, int(pattern.dep[row, board]),
                                int(pattern.arr[row, alight]), p, row, board, alight))
                stop, r, label = from_stop, int(rnd.veh_src[stop]), "B"
                continue
            kind = int(rnd.kind_a[stop] if label == "A" else rnd.kind_b[stop])
            if kind == ORIGIN:
                break
            if kind == VEHICLE:
                label = "V"
                continue
            source = int(rnd.from_a[stop] if label == "A" else rnd.from_b[stop])
            end = int(rnd.arr_a[stop] if label == "A" else rnd.arr_b[stop])
            start = int(rnd.veh_arr[source]) if r > 0 else int(rnd.arr_a[source])
            legs.append(Leg("WALK", source, stop, start, end))
            if r == 0:
                break
            stop, label = source, "V"
        legs.reverse()
        return legs


def run(day: DayTimetable, sources: list[tuple[int, int]], max_rounds: int = 16,
        targets: list[tuple[int, int]] | None = None, allowed: np.ndarray | None = None) -> Result:
    """RAPTOR from `sources` [(stop, time)] for up to `max_rounds` vehicles.

    `targets` [(stop, egress seconds)] enables target pruning; `allowed` masks day patterns (modes).
    """
    tt = day.timetable
    n = len(tt.stop_ids)
    best_v = np.full(n, BIG, dtype=np.int64)
    best_a = np.full(n, BIG, dtype=np.int64)
    best_b = np.full(n, BIG, dtype=np.int64)
    b_round = np.zeros(n, dtype=np.int64)
    t_stops = np.array([s for s, _ in targets or ()], dtype=np.int64)
    t_egress = np.array([e for _, e in targets or ()], dtype=np.int64)

    def bound() -> int:
        if not len(t_stops):
            return BIG
        return int((best_a[t_stops] + t_egress).min())

    r0 = Round.empty(n)
    for stop, time in sources:
        if time < r0.arr_a[stop]:
            r0.arr_a[stop] = r0.arr_b[stop] = time
            r0.kind_a[stop] = r0.kind_b[stop] = ORIGIN
    origin = np.flatnonzero(r0.kind_a == ORIGIN)
    np.minimum(best_a, r0.arr_a, out=best_a)
    np.minimum(best_b, r0.arr_b, out=best_b)
    _walk(tt, r0, origin, r0.arr_a, best_a, best_b, b_round, 0, BIG)
    rounds = [r0]
    marked = np.flatnonzero(r0.kind_b > 0)
    fp_from = tt.fp_from
    change = tt.change_time
    for k in range(1, max_rounds + 1):
        if not len(marked):
            break
        rnd = Round.empty(n)
        prev_b = best_b.copy()
        prev_round = b_round.copy()
        limit = bound()
        pats = _patterns_of(day, marked)
        if allowed is not None and len(pats):
            pats = pats[allowed[pats]]
        improved_any = False
        for p in pats.tolist():
            dp = day.patterns[p]
            stops = dp.stops
            tau = prev_b[stops]
            first = int(np.argmax(tau < BIG))
            if tau[first] >= BIG:
                continue
            board = dp.board
            ntrips = board.shape[0]
            mask = board[:, first:] >= tau[None, first:]
            has = mask.any(axis=0)
            b = np.where(has, mask.argmax(axis=0), ntrips)
            cm = np.minimum.accumulate(b)
            prior = np.empty_like(cm)
            prior[0] = ntrips
            prior[1:] = cm[:-1]
            js = np.flatnonzero(prior < ntrips)
            if not len(js):
                continue
            rows = prior[js]
            arr = dp.alight[rows, js + first]
            at = stops[js + first]
            ok = (arr < best_v[at]) & (arr < limit)
            if not ok.any():
                continue
            newmin = np.empty(len(b), dtype=bool)
            newmin[0] = b[0] < ntrips
            newmin[1:] = b[1:] < cm[:-1]
            board_pos = np.maximum.accumulate(np.where(newmin, np.arange(len(b)), 0))
            sel = np.flatnonzero(ok)
            if dp.repeats:
                sel = sel[np.argsort(-arr[sel], kind="stable")]
            s_at, s_arr, s_js = at[sel], arr[sel], js[sel]
            if dp.repeats:
                keep = s_arr < best_v[s_at]
                s_at, s_arr, s_js = s_at[keep], s_arr[keep], s_js[keep]
            bpos = board_pos[s_js - 1] + first
            best_v[s_at] = s_arr
            rnd.veh_arr[s_at] = s_arr
            rnd.veh_pat[s_at] = p
            rnd.veh_row[s_at] = rows[sel] if not dp.repeats else rows[sel][keep]
            rnd.veh_board[s_at] = bpos
            rnd.veh_alight[s_at] = s_js + first
            rnd.veh_src[s_at] = prev_round[stops[bpos]]
            improved_any = True
        if not improved_any:
            rounds.append(rnd)
            break
        veh = np.flatnonzero(rnd.veh_pat >= 0)
        va = rnd.veh_arr[veh]
        better_a = va < best_a[veh]
        s = veh[better_a]
        rnd.arr_a[s] = va[better_a]
        rnd.kind_a[s] = VEHICLE
        best_a[s] = va[better_a]
        vb = va + change[veh]
        better_b = vb < best_b[veh]
        s = veh[better_b]
        rnd.arr_b[s] = vb[better_b]
        rnd.kind_b[s] = VEHICLE
        best_b[s] = vb[better_b]
        b_round[s] = k
        if len(fp_from):
            _walk(tt, rnd, veh, rnd.veh_arr, best_a, best_b, b_round, k, bound())
        rounds.append(rnd)
        marked = np.flatnonzero(rnd.kind_b > 0)
    return Result(day=day, rounds=rounds, best_a=best_a, targets=t_stops, egress=t_egress)


def _walk(tt: object, rnd: Round, starts: np.ndarray, times: np.ndarray, best_a: np.ndarray, best_b: np.ndarray,
          b_round: np.ndarray, k: int, limit: int) -> None:
    """Relax the footpaths leaving `starts` (at `times`), once (walks are not chained)."""
    fp_from, fp_to, fp_dur = tt.fp_from, tt.fp_to, tt.fp_dur  # type: ignore[attr-defined]
    if not len(fp_from) or not len(starts):
        return
    leaving = np.zeros(len(best_a), dtype=bool)
    leaving[starts] = True
    m = leaving[fp_from]
    if not m.any():
        return
    src, dst = fp_from[m], fp_to[m]
    cand = times[src] + fp_dur[m]
    useful = (cand < best_b[dst]) | (cand < best_a[dst])
    useful &= cand < limit
    if not useful.any():
        return
    src, dst, cand = src[useful], dst[useful], cand[useful]
    order = np.argsort(-cand, kind="stable")  # the smallest is assigned last and wins
    src, dst, cand = src[order], dst[order], cand[order]
    a_ok = cand < best_a[dst]
    rnd.arr_a[dst[a_ok]] = cand[a_ok]
    rnd.kind_a[dst[a_ok]] = FOOT
    rnd.from_a[dst[a_ok]] = src[a_ok]
    b_ok = cand < best_b[dst]
    rnd.arr_b[dst[b_ok]] = cand[b_ok]
    rnd.kind_b[dst[b_ok]] = FOOT
    rnd.from_b[dst[b_ok]] = src[b_ok]
    np.minimum.at(best_a, dst[a_ok], cand[a_ok])
    np.minimum.at(best_b, dst[b_ok], cand[b_ok])
    b_round[dst[b_ok]] = k


def _patterns_of(day: DayTimetable, stops: np.ndarray) -> np.ndarray:
    ptr = day.stop_pat_ptr
    starts, ends = ptr[stops], ptr[stops + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.repeat(ends - lengths.cumsum(), lengths) + np.arange(total)
    return np.unique(day.stop_pat[idx])
