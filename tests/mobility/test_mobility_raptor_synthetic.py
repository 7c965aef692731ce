"""RAPTOR against the Connection Scan reference on random feeds that use what the real feeds do not:
frequencies.txt, pickup/drop-off restrictions, forbidden and timed transfers, stations with platforms,
overtaking trips on one line, and stops visited twice by a loop line."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import random
import zipfile

import numpy as np
import pytest
from reference_csa import ConnectionScan

from cityos.mobility import raptor
from cityos.mobility.gtfs import read_feed
from cityos.mobility.timetable import build_timetable


def _hms(t: int) -> str:
    return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"


def random_feed(seed: int) -> bytes:
    rng = random.Random(seed)
    stops = ["stop_id,stop_name,stop_lat,stop_lon,location_type,parent_station"]
    ids = []
    for i in range(8):
        stops.append(f"ST{i},Station {i},{31.2 + i * 0.002},{121.4 + i * 0.002},1,")
    for i in range(60):
        lat, lon = 31.2 + rng.random() * 0.03, 121.4 + rng.random() * 0.03
        parent = f"ST{i % 8}" if i < 16 else ""
        if parent:
            k = i % 8
            lat, lon = 31.2 + k * 0.002 + rng.random() * 1e-4, 121.4 + k * 0.002
        stops.append(f"P{i},Stop {i},{lat:.6f},{lon:.6f},0,{parent}")
        ids.append(f"P{i}")
    routes = ["route_id,route_short_name,route_type"]
    trips = ["route_id,service_id,trip_id"]
    times = ["trip_id,arrival_time,departure_time,stop_id,stop_sequence,pickup_type,drop_off_type"]
    frequencies = ["trip_id,start_time,end_time,headway_secs"]
    n = 0
    for r in range(10):
        routes.append(f"R{r},{r},{rng.choice([3, 1, 0])}")
        line = rng.sample(ids, rng.randint(4, 12))
        if r == 9:
            line = [*line, line[1], line[2]]  # a loop back over two stops
        pick = [rng.random() < 0.1 for _ in line]
        drop = [rng.random() < 0.1 for _ in line]
        for k in range(rng.randint(5, 25)):
            n += 1
            trip = f"T{n}"
            service = rng.choice(["WK", "WK", "WE", "ALL"])
            trips.append(f"R{r},{service},{trip}")
            t = rng.randint(4 * 3600, 25 * 3600)
            speed = rng.choice([1.0, 1.0, 1.6])  # some trips overtake others on the same line
            for seq, stop in enumerate(line):
                dwell = rng.choice([0, 0, 30])
                times.append(f"{trip},{_hms(t)},{_hms(t + dwell)},{stop},{seq + 1},{int(pick[seq])},{int(drop[seq])}")
                t += dwell + int(rng.randint(60, 400) * speed)
            if k % 7 == 3:
                start = rng.randint(5 * 3600, 20 * 3600)
                frequencies.append(f"{trip},{_hms(start)},{_hms(start + 3 * 3600)},{rng.choice([300, 600, 900])}")
    transfers = ["from_stop_id,to_stop_id,transfer_type,min_transfer_time"]
    for i in range(8):
        transfers.append(f"ST{i},ST{i},2,{rng.choice([0, 60, 180])}")
    for _ in range(15):
        a, b = rng.sample(ids, 2)
        transfers.append(f"{a},{b},{rng.choice([2, 3, 0])},{rng.randint(0, 600)}")
    files = {
        "agency.txt": "agency_name,agency_url,agency_timezone\nX,http://x.org,Asia/Shanghai\n",
        "stops.txt": "\n".join(stops) + "\n", "routes.txt": "\n".join(routes) + "\n",
        "trips.txt": "\n".join(trips) + "\n", "stop_times.txt": "\n".join(times) + "\n",
        "frequencies.txt": "\n".join(frequencies) + "\n", "transfers.txt": "\n".join(transfers) + "\n",
        "calendar.txt": ("service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n"
                         "WK,1,1,1,1,1,0,0,20260101,20261231\nWE,0,0,0,0,0,1,1,20260101,20261231\n"
                         "ALL,1,1,1,1,1,1,1,20260101,20261231\n"),
        "calendar_dates.txt": "service_id,date,exception_type\nWK,20260504,2\nWE,20260504,1\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_raptor_matches_connection_scan_on_random_feeds(seed: int) -> None:
    tables, notices = read_feed(random_feed(seed), dt.date(2026, 1, 1))
    assert tables is not None, notices.report()
    tt = build_timetable(tables)
    assert len(tt.trip_ids) > len(tables.trips)  # frequencies were expanded
    csa = ConnectionScan(tables)
    rng = random.Random(seed)
    served = [tt.stop_ids[i] for i in np.flatnonzero(tt.boardable)]
    dates = [dt.date(2026, 5, 4), dt.date(2026, 5, 5), dt.date(2026, 5, 9), dt.date(2026, 5, 10)]
    horizon = 6 * 3600
    reached = 0
    for q in range(300):
        date = dates[q % len(dates)]
        origin = rng.choice(served)
        t0 = rng.randint(3 * 3600, 27 * 3600)
        expected = csa.earliest(date, origin, t0, horizon)
        result = raptor.run(tt.day(date), [(tt.stop_index[origin], t0)], max_rounds=64)
        got = {tt.stop_ids[i]: int(result.best_a[i]) for i in np.flatnonzero(result.best_a <= t0 + horizon)}
        assert got == expected, (seed, date, origin, t0)
        reached += len(expected)
    assert reached > 300 * 3


def test_journeys_are_consistent_with_the_labels() -> None:
    """Every Pareto journey's legs connect in time and place and end at the reported arrival."""
    tables, _ = read_feed(random_feed(7), dt.date(2026, 1, 1))
    assert tables is not None
    tt = build_timetable(tables)
    day = tt.day(dt.date(2026, 5, 5))
    rng = random.Random(7)
    served = np.flatnonzero(tt.boardable)
    checked = 0
    for _ in range(200):
        origin, target = (int(x) for x in rng.sample(list(served), 2))
        t0 = rng.randint(5 * 3600, 22 * 3600)
        result = raptor.run(day, [(origin, t0)], 6, [(target, 0)])
        previous = None
        for vehicles, arrival, stop in result.pareto():
            if vehicles == 0:
                continue
            legs = result.journey(vehicles, stop)
            assert legs and legs[-1].to_stop == target and legs[-1].end == arrival
            assert sum(1 for leg in legs if leg.mode == "TRANSIT") <= vehicles
            assert legs[0].from_stop == origin and legs[0].start >= t0
            for a, b in itertools.pairwise(legs):
                assert a.to_stop == b.from_stop and a.end <= b.start
            if previous is not None:
                assert arrival < previous
            previous = arrival
            checked += 1
    assert checked > 20
