"""The simulated city's public transport as a GTFS feed: bus lines along the arterials, one metro line.

- A bus line runs along every arterial road, both ways, with a stop about every 500 m; a trip every
  10 minutes on weekdays (06:00–22:00) and every 15 minutes at weekends (07:00–22:00), at 20 km/h
  plus 20 s at each stop.
- One metro line crosses the city from the south-west to the north-east through the district
  centres: stations (location_type 1) with one platform per direction; trips every 5 minutes on
  weekdays and 8 at weekends, 06:00 to the last departure at 23:30 (so the last trips run past
  24:00), written as frequencies.txt; 35 km/h plus 30 s at each station. Changing platforms within a
  station takes 120 s (transfers.txt).
- Two services: weekdays and weekends (calendar.txt) over the given date range.

The result is a zip (bytes) that `cityos.mobility.gtfs.read_feed` accepts; the demo imports it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import math
import zipfile

from shapely.geometry import LineString, Point

from cityos.sim.city import City

BUS_SPACING_M = 500.0
METRO_SPACING_M = 1_200.0
EARTH_M = 6_371_008.8


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    (lon1, lat1), (lon2, lat2) = a, b
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_M * math.asin(math.sqrt(min(h, 1.0)))


def _stations_along(line: LineString, spacing_m: float) -> list[tuple[float, float]]:
    """Points every `spacing_m` metres along `line` (lon, lat), both ends included."""
    coords = list(line.coords)
    lengths = [_metres(a, b) for a, b in itertools.pairwise(coords)]
    total = sum(lengths)
    count = max(2, round(total / spacing_m) + 1)
    out = []
    for k in range(count):
        target = total * k / (count - 1)
        walked = 0.0
        for (a, b), length in zip(itertools.pairwise(coords), lengths, strict=True):
            if walked + length >= target or (a, b) == (coords[-2], coords[-1]):
                t = 0.0 if length == 0 else min(1.0, (target - walked) / length)
                out.append((round(a[0] + (b[0] - a[0]) * t, 6), round(a[1] + (b[1] - a[1]) * t, 6)))
                break
            walked += length
    return out


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _table(rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def city_gtfs(city: City, start: dt.date, end: dt.date, timezone: str = "Asia/Shanghai") -> bytes:
    """The city's GTFS feed as zip bytes (service from `start` to `end`)."""
    stops: list[list[object]] = [["stop_id", "stop_name", "stop_lat", "stop_lon", "location_type", "parent_station"]]
    routes: list[list[object]] = [["route_id", "agency_id", "route_short_name", "route_long_name", "route_type",
                                   "route_color"]]
    trips: list[list[object]] = [["route_id", "service_id", "trip_id", "trip_headsign", "direction_id"]]
    stop_times: list[list[object]] = [["trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence"]]
    frequencies: list[list[object]] = [["trip_id", "start_time", "end_time", "headway_secs"]]
    transfers: list[list[object]] = [["from_stop_id", "to_stop_id", "transfer_type", "min_transfer_time"]]
    services = {"WD": ((6 * 3600, 22 * 3600, 600), (6 * 3600, 23 * 3600 + 1800, 300)),
                "WE": ((7 * 3600, 22 * 3600, 900), (6 * 3600, 23 * 3600 + 1800, 480))}

    def run_times(points: list[tuple[float, float]], speed_kmh: float, dwell: int) -> list[tuple[int, int]]:
        t, out = 0, []
        for i, p in enumerate(points):
            if i:
                t += math.ceil(_metres(points[i - 1], p) / (speed_kmh / 3.6))
            out.append((t, t + (dwell if 0 < i < len(points) - 1 else 0)))
            t = out[-1][1]
        return out

    arterials = [r for r in city.roads if r.category == "arterial"]
    for n, road in enumerate(arterials, start=1):
        route_id = f"B{n}"
        points = _stations_along(road.line, BUS_SPACING_M)
        ids = [f"{route_id}-{k + 1:02d}" for k in range(len(points))]
        names = [f"{road.name} Stop {k + 1} / {road.name}{k + 1}号站" for k in range(len(points))]
        for stop_id, name, (lon, lat) in zip(ids, names, points, strict=True):
            stops.append([stop_id, name, lat, lon, 0, ""])
        routes.append([route_id, "CITYBUS", str(n), f"{road.name} Line / {road.name}线", 3, "1E88E5"])
        for direction, (seq_ids, seq_pts, terminus) in enumerate(((ids, points, names[-1]),
                                                                  (ids[::-1], points[::-1], names[0]))):
            times = run_times(seq_pts, 20.0, 20)
            for service, (bus, _metro) in services.items():
                first, last, headway = bus
                for depart in range(first, last + 1, headway):
                    trip_id = f"{route_id}-{direction}-{service}-{_hms(depart).replace(':', '')}"
                    trips.append([route_id, service, trip_id, terminus, direction])
                    for k, (stop_id, (a, d)) in enumerate(zip(seq_ids, times, strict=True)):
                        stop_times.append([trip_id, _hms(depart + a), _hms(depart + d), stop_id, k + 1])

    # The metro: south-west to north-east through the district centres nearest that diagonal.
    minx, miny, maxx, maxy = city.bbox
    diagonal = LineString([(minx, miny), (maxx, maxy)])
    centres = sorted((d.polygon.centroid for d in city.districts), key=diagonal.project)
    near = [c for c in centres if c.distance(diagonal) < 0.25 * (maxx - minx)] or centres
    path = LineString([(minx + 0.05 * (maxx - minx), miny + 0.05 * (maxy - miny)),
                       *[(p.x, p.y) for p in near],
                       (maxx - 0.05 * (maxx - minx), maxy - 0.05 * (maxy - miny))])
    points = _stations_along(path, METRO_SPACING_M)
    stations = [f"M{k + 1:02d}" for k in range(len(points))]
    station_names: dict[str, str] = {}
    for k, (station, (lon, lat)) in enumerate(zip(stations, points, strict=True)):
        district = city.district_at(Point(lon, lat)).name
        name = station_names[station] = f"{district} Station {k + 1} / {district}{k + 1}站"
        stops.append([station, name, lat, lon, 1, ""])
        for direction in (0, 1):
            stops.append([f"{station}-{direction}", name, lat, lon, 0, station])
        transfers.append([station, station, 2, 120])
    routes.append(["M1", "CITYMETRO", "M1", "Metro Line 1 / 地铁1号线", 1, "E53935"])
    for direction, seq in enumerate((list(zip(stations, points, strict=True)),
                                     list(zip(stations, points, strict=True))[::-1])):
        times = run_times([p for _, p in seq], 35.0, 30)
        for service, (_bus, metro) in services.items():
            first, last, headway = metro
            trip_id = f"M1-{direction}-{service}"
            trips.append(["M1", service, trip_id, station_names[seq[-1][0]], direction])
            for k, ((station, _), (a, d)) in enumerate(zip(seq, times, strict=True)):
                stop_times.append([trip_id, _hms(first + a), _hms(first + d), f"{station}-{direction}", k + 1])
            frequencies.append([trip_id, _hms(first), _hms(last + 1), headway])

    files = {
        "agency.txt": _table([["agency_id", "agency_name", "agency_url", "agency_timezone", "agency_lang"],
                              ["CITYBUS", "City Bus / 城市公交", "https://cityos.example/bus", timezone, "zh"],
                              ["CITYMETRO", "City Metro / 城市地铁", "https://cityos.example/metro", timezone, "zh"]]),
        "stops.txt": _table(stops), "routes.txt": _table(routes), "trips.txt": _table(trips),
        "stop_times.txt": _table(stop_times), "frequencies.txt": _table(frequencies),
        "transfers.txt": _table(transfers),
        "calendar.txt": _table([["service_id", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                 "sunday", "start_date", "end_date"],
                                ["WD", 1, 1, 1, 1, 1, 0, 0, start.strftime("%Y%m%d"), end.strftime("%Y%m%d")],
                                ["WE", 0, 0, 0, 0, 0, 1, 1, start.strftime("%Y%m%d"), end.strftime("%Y%m%d")]]),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()
