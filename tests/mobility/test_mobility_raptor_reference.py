"""RAPTOR's earliest arrivals equal an independent Connection Scan's, on the real NYC and Cairns feeds.

No database: the feeds are read in place from the shared data folder (skipped only when it is absent).
For each random query (origin stop, date, departure time) every stop reached within the horizon must
have the same arrival time in both, and a stop RAPTOR reaches within the horizon must be reached by
the reference too.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pytest
from reference_csa import ConnectionScan, gtfs_data_dir

from cityos.mobility import raptor
from cityos.mobility.gtfs import read_feed
from cityos.mobility.timetable import build_timetable

DATA = gtfs_data_dir() or Path("/nonexistent")
HORIZON = 3 * 3600


def _compare(name: str, queries: int, seed: int) -> None:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    tables, notices = read_feed(path.read_bytes())
    assert tables is not None, notices.report()
    tt = build_timetable(tables)
    csa = ConnectionScan(tables)
    first, last = tables.service_range()
    assert first is not None and last is not None
    rng = random.Random(seed)
    span = (last - first).days
    dates = sorted({first + dt.timedelta(days=rng.randint(0, span)) for _ in range(6)})
    served = [tt.stop_ids[i] for i in np.flatnonzero(tt.boardable)]
    compared = reached_total = 0
    for q in range(queries):
        date = dates[q % len(dates)]
        origin = rng.choice(served)
        t0 = rng.randint(0, 26 * 3600)
        expected = csa.earliest(date, origin, t0, HORIZON)
        result = raptor.run(tt.day(date), [(tt.stop_index[origin], t0)], max_rounds=64)
        got = {tt.stop_ids[i]: int(result.best_a[i]) for i in np.flatnonzero(result.best_a <= t0 + HORIZON)}
        assert got == expected, (name, date, origin, t0,
                                 {s: (got.get(s), expected.get(s)) for s in set(got) | set(expected)
                                  if got.get(s) != expected.get(s)})
        compared += 1
        reached_total += len(expected)
    assert compared == queries
    # The queries did exercise the network (not all at night with nothing running).
    assert reached_total > queries * 5


def test_raptor_matches_connection_scan_nyc() -> None:
    _compare("nyc_subway_gtfs.zip", 2000, seed=16)


def test_raptor_matches_connection_scan_cairns() -> None:
    _compare("cairns_gtfs.zip", 1000, seed=61)
