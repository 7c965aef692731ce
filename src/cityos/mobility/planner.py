"""Journey plans in the shape of OpenTripPlanner's REST `plan` response, computed with RAPTOR.

`{"requestParameters", "plan": {"date", "from", "to", "itineraries": [{"duration", "startTime", "endTime",
"transfers", "walkTime", "transitTime", "waitingTime", "walkDistance", "legs": [...]}]}}`; legs carry
mode, route, headsign, from/to stops, start/end times (ISO 8601 with the feed's local offset; GTFS times
are in the agency's zone), intermediate stops and a GeoJSON LineString through the stops served (the
feed's shapes are not used).

One itinerary per Pareto point (arrival time × number of transfers, up to `maxTransfers`), plus a walk
when the destination is within walking reach. Walks are straight lines × the detour factor at walking
speed (see `timetable.WalkSettings`), not routed on the street network.

arriveBy: a bounded search over departure times. Earliest arrival does not decrease with the departure
time (FIFO), so a binary search over the 4 hours before the requested arrival finds the latest departure
that still arrives in time; the plan is then run from that departure.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np

from cityos.core.errors import BadRequestData
from cityos.mobility import raptor
from cityos.mobility.timetable import BIG, DAY, DayTimetable, Timetable, haversine_m

ARRIVE_BY_WINDOW = 4 * 3600
BIKE_SPEED_MPS = 4.5
BIKE_HANDLING_S = 60  # taking a bike out or docking it
MAX_TRANSFERS = 8

# OTP mode names a query may ask for (TRANSIT: all of them).
MODES = frozenset({"TRAM", "SUBWAY", "RAIL", "BUS", "FERRY", "CABLE_CAR", "GONDOLA", "FUNICULAR", "TROLLEYBUS",
                   "MONORAIL"})
BASIC_MODE = {0: "TRAM", 1: "SUBWAY", 2: "RAIL", 3: "BUS", 4: "FERRY", 5: "CABLE_CAR", 6: "GONDOLA",
              7: "FUNICULAR", 11: "TROLLEYBUS", 12: "MONORAIL"}
EXTENDED_MODE = {1: "RAIL", 2: "BUS", 4: "SUBWAY", 7: "BUS", 8: "TROLLEYBUS", 9: "TRAM", 10: "FERRY",
                 13: "GONDOLA", 14: "FUNICULAR"}


def mode_of(route_type: int) -> str:
    if route_type in BASIC_MODE:
        return BASIC_MODE[route_type]
    return EXTENDED_MODE.get(route_type // 100, "BUS")


@dataclass
class Query:
    origin: tuple[float, float]          # lat, lon
    destination: tuple[float, float]
    date: dt.date | None
    time: dt.time | None
    arrive_by: bool
    max_transfers: int
    modes: frozenset[str]
    # BICYCLE_RENT: bike-share stations near the origin (with bikes) and the destination (with docks),
    # as listed by the bike-share service ({"stationId", "name", "lat", "lon", ...}).
    bike_pickups: tuple[dict[str, Any], ...] = ()
    bike_dropoffs: tuple[dict[str, Any], ...] = ()


def parse_place(value: str, name: str) -> tuple[float, float]:
    parts = value.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise BadRequestData(f"{name} must be 'lat,lon' in decimal degrees") from None
    if not (np.isfinite(lat) and np.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadRequestData(f"{name} is not a position on Earth (lat −90…90, lon −180…180)")
    return lat, lon


def parse_modes(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset({"TRANSIT", "WALK"})
    modes = frozenset(m.strip().upper() for m in value.split(",") if m.strip())
    unknown = sorted(modes - {"TRANSIT", "WALK", "BICYCLE_RENT", *MODES})
    if unknown or not modes:
        raise BadRequestData(f"unknown mode(s) {', '.join(unknown) or '(none)'}; use WALK, TRANSIT, BICYCLE_RENT or "
                             + ", ".join(sorted(MODES)))
    return modes


def covers(feed: dict[str, Any], lat: float, lon: float, margin_m: float) -> bool:
    west, south, east, north = feed["bbox"]
    dlat = margin_m / 111_000.0
    dlon = margin_m / (111_000.0 * max(0.01, float(np.cos(np.radians(lat)))))
    return south - dlat <= lat <= north + dlat and west - dlon <= lon <= east + dlon


def _day_start(date: dt.date, zone: ZoneInfo) -> dt.datetime:
    """GTFS times count from noon minus 12 h of the service date (midnight except on DST days)."""
    return dt.datetime.combine(date, dt.time(12), zone) - dt.timedelta(hours=12)


class Realtime(Protocol):
    """What the planner asks the real-time side (cityos.mobility.live) for."""

    def day(self, day: DayTimetable) -> DayTimetable:
        """The day with predicted times for the trips that have a vehicle."""

    def leg(self, trip_key: str, service_date: dt.date) -> dict[str, Any] | None:
        """Vehicle and occupancy of a trip under way, or None."""


class Planner:
    def __init__(self, feed: dict[str, Any], timetable: Timetable, realtime: Realtime | None = None) -> None:
        self.feed = feed
        self.tt = timetable
        self.realtime = realtime
        self.zone = ZoneInfo(timetable.timezone)
        served = np.flatnonzero(timetable.boardable)
        self.served = served

    def when(self, query: Query, now: dt.datetime) -> tuple[dt.date, int]:
        local = now.astimezone(self.zone)
        date = query.date or local.date()
        tt = self.tt
        if tt.first_date is not None and tt.last_date is not None and not tt.first_date <= date <= tt.last_date:
            raise BadRequestData(f"date {date.isoformat()} is outside the service period of feed "
                                 f"{self.feed['feedId']} ({tt.first_date.isoformat()} – {tt.last_date.isoformat()})")
        clock_time = query.time or (local.time() if query.date in (None, local.date()) else dt.time(8))
        base = _day_start(date, self.zone)
        at = dt.datetime.combine(date, clock_time, self.zone)
        return date, int((at - base).total_seconds())

    def _near(self, lat: float, lon: float) -> list[tuple[int, int]]:
        tt = self.tt
        d = haversine_m(lat, lon, tt.lat[self.served], tt.lon[self.served])
        ok = d <= tt.walk.max_access_m
        seconds = tt.walk.seconds(d[ok])
        return list(zip(self.served[ok].tolist(), seconds.tolist(), strict=True))

    @staticmethod
    def _allowed(day: DayTimetable, modes: frozenset[str]) -> np.ndarray | None:
        if "TRANSIT" in modes:
            return None
        return np.array([mode_of(int(t)) in modes for t in day.route_type], dtype=bool)

    def plan(self, query: Query, now: dt.datetime) -> list[dict[str, Any]]:
        date, seconds = self.when(query, now)
        itineraries: list[dict[str, Any]] = []
        transit = bool(query.modes & {"TRANSIT", *MODES})
        access = self._near(*query.origin)
        egress = self._near(*query.destination)
        if transit and access and egress:
            day = self.tt.day(date)
            scheduled = day
            if self.realtime is not None:
                day = self.realtime.day(day)
            allowed = self._allowed(day, query.modes)
            rounds = query.max_transfers + 1
            start: int | None = seconds
            if query.arrive_by:
                start = self._latest_departure(day, access, egress, seconds, rounds, allowed)
            if start is not None:
                result = raptor.run(day, [(s, start + w) for s, w in access], rounds, egress, allowed)
                egress_of = dict(egress)
                access_of = dict(access)
                for vehicles, arrival, stop in result.pareto():
                    if vehicles == 0 or (query.arrive_by and arrival > seconds):
                        continue
                    legs = result.journey(vehicles, stop)
                    itineraries.append(self._itinerary(query, date, legs, access_of, stop, egress_of[stop], day,
                                                       scheduled))
        if "WALK" in query.modes:
            walk = self._walk_only(query, date, seconds)
            if walk is not None:
                itineraries.append(walk)
        if "BICYCLE_RENT" in query.modes:
            ride = self._bike_rental(query, date, seconds)
            if ride is not None:
                itineraries.append(ride)
        itineraries.sort(key=lambda i: (i["endTime"], i["transfers"]))
        return itineraries

    def _latest_departure(self, day: DayTimetable, access: list[tuple[int, int]], egress: list[tuple[int, int]],
                          arrive: int, rounds: int, allowed: np.ndarray | None) -> int | None:
        def arrival(t: int) -> int:
            result = raptor.run(day, [(s, t + w) for s, w in access], rounds, egress, allowed)
            best = result.pareto()
            return best[-1][1] if best else BIG

        lo, hi = arrive - ARRIVE_BY_WINDOW, arrive
        if arrival(lo) > arrive:
            return None
        while hi - lo > 30:
            mid = (lo + hi) // 2
            if arrival(mid) <= arrive:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # ------------------------------------------------------------------ rendering

    def _iso(self, date: dt.date, seconds: int) -> str:
        return (_day_start(date, self.zone) + dt.timedelta(seconds=int(seconds))).isoformat()

    def _place(self, stop: int, date: dt.date, arrival: int | None = None,
               departure: int | None = None) -> dict[str, Any]:
        tt = self.tt
        place: dict[str, Any] = {"name": tt.stop_names[stop], "stopId": f"{self.feed['feedId']}:{tt.stop_ids[stop]}",
                                 "lat": float(tt.lat[stop]), "lon": float(tt.lon[stop]), "vertexType": "TRANSIT"}
        if arrival is not None:
            place["arrival"] = self._iso(date, arrival)
        if departure is not None:
            place["departure"] = self._iso(date, departure)
        return place

    @staticmethod
    def _point(name: str, lat: float, lon: float) -> dict[str, Any]:
        return {"name": name, "lat": lat, "lon": lon, "vertexType": "NORMAL"}

    def _walk_leg(self, date: dt.date, start: int, end: int, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        distance = float(haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]))
        return {"mode": "WALK", "transitLeg": False, "startTime": self._iso(date, start),
                "endTime": self._iso(date, end), "duration": end - start, "distance": round(distance, 1),
                "from": a, "to": b, "intermediateStops": [],
                "legGeometry": {"type": "LineString", "coordinates": [[a["lon"], a["lat"]], [b["lon"], b["lat"]]]}}

    def _transit_leg(self, date: dt.date, leg: raptor.Leg, day: DayTimetable,
                     scheduled: DayTimetable | None = None) -> dict[str, Any]:
        tt = self.tt
        dp = day.patterns[leg.pattern]
        trip = int(dp.trips[leg.row])
        facts = self._realtime_facts(date, dp, leg, trip, scheduled)
        route = tt.route_info[int(tt.trip_route[trip])]
        positions = range(leg.board, leg.alight + 1)
        stops = [int(dp.stops[i]) for i in positions]
        intermediate = [self._place(int(dp.stops[i]), date, int(dp.arr[leg.row, i]), int(dp.dep[leg.row, i]))
                        for i in range(leg.board + 1, leg.alight)]
        distance = float(sum(haversine_m(tt.lat[a], tt.lon[a], tt.lat[b], tt.lon[b])
                             for a, b in itertools.pairwise(stops)))
        service_date = date + dt.timedelta(seconds=-int(dp.offsets[leg.row])) if dp.offsets[leg.row] else date
        return {"mode": mode_of(route["type"]), "transitLeg": True, "route": route["shortName"] or route["longName"],
                "routeShortName": route["shortName"], "routeLongName": route["longName"],
                "routeId": f"{self.feed['feedId']}:{route['id']}", "routeColor": route["color"],
                "agencyId": route["agencyId"], "tripId": f"{self.feed['feedId']}:{tt.trip_ids[trip]}",
                "headsign": tt.trip_headsign[trip] or None, "serviceDate": service_date.strftime("%Y%m%d"),
                "startTime": self._iso(date, leg.start), "endTime": self._iso(date, leg.end),
                "duration": leg.end - leg.start, "distance": round(distance, 1),
                "from": self._place(leg.from_stop, date, departure=leg.start),
                "to": self._place(leg.to_stop, date, arrival=leg.end), "intermediateStops": intermediate,
                "legGeometry": {"type": "LineString",
                                "coordinates": [[float(tt.lon[s]), float(tt.lat[s])] for s in stops]},
                **facts}

    def _realtime_facts(self, date: dt.date, dp: Any, leg: raptor.Leg, trip: int,
                        scheduled: DayTimetable | None) -> dict[str, Any]:
        """OTP's realTime, departureDelay and arrivalDelay, and the vehicle's occupancy, for a leg."""
        if self.realtime is None or scheduled is None:
            return {"realTime": False}
        offset = int(dp.offsets[leg.row])
        service_date = date - dt.timedelta(days=offset // DAY) if offset else date
        facts = self.realtime.leg(self.tt.trip_ids[trip], service_date)
        if facts is None:
            return {"realTime": False}
        for sp in scheduled.patterns:
            if sp.source == dp.source:
                rows = np.flatnonzero((sp.trips == trip) & (sp.offsets == offset))
                if len(rows):
                    row = int(rows[0])
                    facts["departureDelay"] = int(leg.start - sp.dep[row, leg.board])
                    facts["arrivalDelay"] = int(leg.end - sp.arr[row, leg.alight])
                    break
        return {"realTime": True, **facts}

    def _itinerary(self, query: Query, date: dt.date, legs: list[raptor.Leg], access: dict[int, int], last: int,
                   egress: int, day: DayTimetable, scheduled: DayTimetable | None = None) -> dict[str, Any]:
        origin = self._point("Origin", *query.origin)
        destination = self._point("Destination", *query.destination)
        out: list[dict[str, Any]] = []
        first_transit = next(leg for leg in legs if leg.mode == "TRANSIT")
        first_stop = legs[0].from_stop
        # Leave the origin just in time: the access walk ends when the first vehicle (or walk) starts.
        leave = (legs[0].start if legs[0].mode == "TRANSIT" else first_transit.start
                 - sum(leg.end - leg.start for leg in legs[:legs.index(first_transit)]))
        walk_in = access[first_stop]
        if walk_in > 0:
            out.append(self._walk_leg(date, leave - walk_in, leave, origin,
                                      self._place(first_stop, date)))
        t = leave
        for leg in legs:
            if leg.mode == "TRANSIT":
                out.append(self._transit_leg(date, leg, day, scheduled))
                t = leg.end
            else:
                duration = leg.end - leg.start
                out.append(self._walk_leg(date, t, t + duration, self._place(leg.from_stop, date),
                                          self._place(leg.to_stop, date)))
                t += duration
        out.append(self._walk_leg(date, t, t + egress, self._place(last, date), destination))
        start, end = leave - walk_in, t + egress
        walk_time = sum(leg["duration"] for leg in out if leg["mode"] == "WALK")
        transit_time = sum(leg["duration"] for leg in out if leg["transitLeg"])
        transit_legs = sum(1 for leg in out if leg["transitLeg"])
        return {"feedId": self.feed["feedId"], "duration": end - start, "startTime": self._iso(date, start),
                "endTime": self._iso(date, end), "transfers": max(0, transit_legs - 1), "walkTime": walk_time,
                "transitTime": transit_time, "waitingTime": end - start - walk_time - transit_time,
                "walkDistance": round(sum(leg["distance"] for leg in out if leg["mode"] == "WALK"), 1), "legs": out}

    def _bike_rental(self, query: Query, date: dt.date, seconds: int) -> dict[str, Any] | None:
        """Walk to a station with a bike, ride to a station with a free dock, walk on (no transit legs).

        The pair of stations minimising the total time is taken; riding is the straight line × the
        walking detour factor at BIKE_SPEED_MPS.
        """
        walk = self.tt.walk
        best: tuple[int, dict[str, Any], dict[str, Any]] | None = None
        for pick in query.bike_pickups:
            to_pick = int(walk.seconds(float(haversine_m(*query.origin, pick["lat"], pick["lon"]))))
            for drop in query.bike_dropoffs:
                if (pick["systemId"], pick["stationId"]) == (drop["systemId"], drop["stationId"]):
                    continue
                ride = int(np.ceil(float(haversine_m(pick["lat"], pick["lon"], drop["lat"], drop["lon"]))
                                   * walk.detour / BIKE_SPEED_MPS))
                on_foot = int(walk.seconds(float(haversine_m(drop["lat"], drop["lon"], *query.destination))))
                total = to_pick + BIKE_HANDLING_S + ride + BIKE_HANDLING_S + on_foot
                if best is None or total < best[0]:
                    best = (total, pick, drop)
        if best is None:
            return None
        total, pick, drop = best
        start = seconds - total if query.arrive_by else seconds
        origin = self._point("Origin", *query.origin)
        destination = self._point("Destination", *query.destination)
        a = {**self._point(pick["name"], pick["lat"], pick["lon"]), "vertexType": "BIKESHARE",
             "bikeShareId": f"{pick['systemId']}:{pick['stationId']}"}
        b = {**self._point(drop["name"], drop["lat"], drop["lon"]), "vertexType": "BIKESHARE",
             "bikeShareId": f"{drop['systemId']}:{drop['stationId']}"}
        t1 = start + int(walk.seconds(float(haversine_m(*query.origin, pick["lat"], pick["lon"])))) + BIKE_HANDLING_S
        leg1 = self._walk_leg(date, start, t1, origin, a)
        t2 = start + total - int(walk.seconds(float(haversine_m(drop["lat"], drop["lon"], *query.destination))))
        ride_leg = self._walk_leg(date, t1, t2, a, b)
        ride_leg.update({"mode": "BICYCLE", "rentedBike": True})
        leg3 = self._walk_leg(date, t2, start + total, b, destination)
        legs = [leg1, ride_leg, leg3]
        walking = leg1["duration"] + leg3["duration"]
        return {"feedId": None, "duration": total, "startTime": leg1["startTime"], "endTime": leg3["endTime"],
                "transfers": 0, "walkTime": walking, "transitTime": 0, "waitingTime": 0,
                "walkDistance": round(leg1["distance"] + leg3["distance"], 1), "legs": legs}

    def _walk_only(self, query: Query, date: dt.date, seconds: int) -> dict[str, Any] | None:
        distance = float(haversine_m(*query.origin, *query.destination))
        if distance > 2 * self.tt.walk.max_access_m:
            return None
        duration = int(self.tt.walk.seconds(distance))
        start = seconds - duration if query.arrive_by else seconds
        leg = self._walk_leg(date, start, start + duration, self._point("Origin", *query.origin),
                             self._point("Destination", *query.destination))
        return {"feedId": self.feed["feedId"], "duration": duration, "startTime": leg["startTime"],
                "endTime": leg["endTime"], "transfers": 0, "walkTime": duration, "transitTime": 0, "waitingTime": 0,
                "walkDistance": leg["distance"], "legs": [leg]}
