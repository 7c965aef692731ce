"""Mobility logic: import GTFS feeds, keep their timetables, publish stops and routes, plan journeys.

- Import: the zip is validated (`gtfs.read_feed`, in a worker thread); a feed with an ERROR notice is
  refused with the notices (`FeedRejected`, 400) and nothing is written. An accepted feed replaces the
  tenant's previous version of the same feed id in one transaction.
- The hub sees stops, stations and routes as Smart Data Models UrbanMobility entities (`GtfsStop`,
  `GtfsStation`, `GtfsRoute`), written after the commit by batch upsert; entities of stops and routes a
  new version dropped are deleted. The timetable stays in this domain's tables.
- Planning runs on an in-memory `Timetable` per feed, rebuilt from the tables when the feed's version
  changes (so every process sees a new version).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from sqlalchemy import and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.mobility import models
from cityos.mobility.gtfs import DAYS, FeedTables, read_feed
from cityos.mobility.planner import Planner, Query, covers
from cityos.mobility.timetable import Timetable, WalkSettings, build_timetable, haversine_m
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden

log = logging.getLogger("cityos.mobility")

FEED_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
HUB_BATCH = 500
INSERT_BATCH = 2000


class FeedRejected(BadRequestData):
    """A feed with ERROR notices: 400 with the canonical-validator style notices."""

    title = "GTFS feed refused"


def check_allowed(principal: Principal | None, action: str, tenant: str) -> None:
    decision = authorize(principal, action, Resource("mobility", tenant))
    if not decision:
        raise Forbidden(f"{action}: {decision.reason}")


def validate_feed_id(feed_id: str) -> str:
    if not feed_id or len(feed_id) > 64 or not set(feed_id) <= FEED_ID_CHARS:
        raise BadRequestData("feedId must be 1–64 characters of letters, digits, '-', '_' or '.'")
    return feed_id


def entity_id(kind: str, feed_id: str, local_id: str) -> str:
    return f"urn:ngsi-ld:{kind}:{feed_id}:{quote(local_id, safe='-._~')}"


@dataclass
class _Cached:
    version: int
    timetable: Timetable


class MobilityService:
    def __init__(self, engine: AsyncEngine, hub: HubService | None, ctx: ActiveContext | None,
                 write_lock: asyncio.Lock | None = None, walk: WalkSettings | None = None) -> None:
        self.engine = engine
        self.hub = hub
        self.ctx = ctx
        self.walk = walk or WalkSettings()
        self._write_lock = write_lock or asyncio.Lock()
        self._timetables: dict[tuple[str, str], _Cached] = {}
        self._loading = asyncio.Lock()
        self.live: Any = None   # cityos.mobility.live.LiveService, set by the app: plans use its predictions

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._write_lock) as conn:
            yield conn

    # ------------------------------------------------------------------ import

    async def import_feed(self, principal: Principal | None, tenant: str, feed_id: str, data: bytes,
                          name: str | None = None) -> dict[str, Any]:
        check_allowed(principal, "mobility.manage", tenant)
        validate_feed_id(feed_id)
        tables, notices = await asyncio.to_thread(read_feed, data, clock.now().date())
        if tables is None:
            errors = sum(g["totalNotices"] for g in notices.report() if g["severity"] == "ERROR")
            raise FeedRejected(f"the GTFS feed has {errors} error(s); nothing was imported", notices=notices.report())
        rows = await asyncio.to_thread(_rows, tables)
        first, last = tables.service_range()
        positioned = tables.stops.dropna(subset=["lat", "lon"])
        now = clock.now()
        async with self._write() as conn:
            old = (await conn.execute(select(models.feeds.c.version).where(
                models.feeds.c.tenant == tenant, models.feeds.c.feed_id == feed_id))).scalar()
            old_stops = {r[0]: r[1] for r in await conn.execute(
                select(models.stops.c.stop_id, models.stops.c.location_type).where(
                    models.stops.c.tenant == tenant, models.stops.c.feed_id == feed_id))}
            old_routes = {r[0] for r in await conn.execute(select(models.routes.c.route_id).where(
                models.routes.c.tenant == tenant, models.routes.c.feed_id == feed_id))}
            for table in models.TABLES:
                await conn.execute(delete(table).where(table.c.tenant == tenant, table.c.feed_id == feed_id))
            version = (old or 0) + 1
            summary = {
                "tenant": tenant, "feed_id": feed_id, "version": version,
                "name": (name or (tables.agencies[0].get("agency_name") if tables.agencies else None) or feed_id)[:256],
                "timezone": tables.timezone, "agencies": tables.agencies,
                "start_date": first.isoformat() if first else None, "end_date": last.isoformat() if last else None,
                "min_lat": float(positioned["lat"].min()), "min_lon": float(positioned["lon"].min()),
                "max_lat": float(positioned["lat"].max()), "max_lon": float(positioned["lon"].max()),
                "counts": {"stops": len(tables.stops), "routes": len(tables.routes), "trips": len(tables.trips),
                           "stopTimes": len(tables.stop_times), "transfers": len(tables.transfers),
                           "frequencies": len(tables.frequencies)},
                "notices": notices.report(), "imported_at": now,
                "imported_by": principal.id if principal is not None else None}
            await conn.execute(insert(models.feeds), [summary])
            for table, values in rows.items():
                for start in range(0, len(values), INSERT_BATCH):
                    batch = [{"tenant": tenant, "feed_id": feed_id, **v} for v in values[start:start + INSERT_BATCH]]
                    await conn.execute(insert(table), batch)
        self._timetables.pop((tenant, feed_id), None)   # and with it the real-time tracker of the old version
        await self._publish(tenant, feed_id, tables, old_stops, old_routes)
        return self._feed_view(summary)

    async def _publish(self, tenant: str, feed_id: str, tables: FeedTables, old_stops: dict[str, int],
                       old_routes: set[str]) -> None:
        if self.hub is None or self.ctx is None:
            return
        bodies: list[dict[str, Any]] = []
        keep: set[str] = set()
        for stop in tables.stops.itertuples(index=False):
            if stop.location_type not in (0, 1) or np.isnan(stop.lat):
                continue
            kind = "GtfsStation" if stop.location_type == 1 else "GtfsStop"
            eid = entity_id(kind, feed_id, stop.stop_id)
            keep.add(eid)
            body: dict[str, Any] = {
                "id": eid, "type": kind, "name": {"type": "Property", "value": stop.stop_name or stop.stop_id},
                "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [
                    round(float(stop.lon), 7), round(float(stop.lat), 7)]}},
                "dataProvider": {"type": "Property", "value": feed_id},
                "source": {"type": "Property", "value": f"gtfs:{feed_id}:{stop.stop_id}"}}
            if stop.parent_station and kind == "GtfsStop":
                body["hasParentStation"] = {"type": "Relationship",
                                            "object": entity_id("GtfsStation", feed_id, stop.parent_station)}
            bodies.append(body)
        for route in tables.routes.itertuples(index=False):
            eid = entity_id("GtfsRoute", feed_id, route.route_id)
            keep.add(eid)
            body = {"id": eid, "type": "GtfsRoute",
                    "shortName": {"type": "Property", "value": route.short_name or route.route_id},
                    "name": {"type": "Property", "value": route.long_name or route.short_name or route.route_id},
                    "routeType": {"type": "Property", "value": str(int(route.route_type))},
                    "dataProvider": {"type": "Property", "value": feed_id}}
            if route.color:
                body["routeColor"] = {"type": "Property", "value": route.color}
            if route.agency_id:
                body["operatedBy"] = {"type": "Relationship",
                                      "object": entity_id("GtfsAgency", feed_id, route.agency_id)}
            bodies.append(body)
        for start in range(0, len(bodies), HUB_BATCH):
            result = await self.hub.batch_write(tenant, bodies[start:start + HUB_BATCH], self.ctx, "upsert", set())
            for error in result.errors:
                log.warning("GTFS entity not published: %s", error)
        stale = [entity_id("GtfsStation" if kind == 1 else "GtfsStop", feed_id, sid)
                 for sid, kind in old_stops.items() if kind in (0, 1)]
        stale += [entity_id("GtfsRoute", feed_id, rid) for rid in old_routes]
        stale = [eid for eid in stale if eid not in keep]
        for start in range(0, len(stale), HUB_BATCH):
            await self.hub.batch_delete(tenant, stale[start:start + HUB_BATCH])

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _feed_view(row: Any) -> dict[str, Any]:
        r = dict(row)
        return {"feedId": r["feed_id"], "version": r["version"], "name": r["name"], "timezone": r["timezone"],
                "agencies": r["agencies"], "startDate": r["start_date"], "endDate": r["end_date"],
                "bbox": [r["min_lon"], r["min_lat"], r["max_lon"], r["max_lat"]], "counts": r["counts"],
                "notices": r["notices"], "importedAt": clock.iso(clock.as_utc(r["imported_at"]))}

    async def _feed_rows(self, tenant: str) -> list[Any]:
        async with self.engine.connect() as conn:
            result = await conn.execute(select(models.feeds).where(models.feeds.c.tenant == tenant)
                                        .order_by(models.feeds.c.feed_id))
            return [r._mapping for r in result]

    async def feeds(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        check_allowed(principal, "mobility.read", tenant)
        return [self._feed_view(r) for r in await self._feed_rows(tenant)]

    async def feed(self, principal: Principal | None, tenant: str, feed_id: str) -> dict[str, Any]:
        check_allowed(principal, "mobility.read", tenant)
        for row in await self._feed_rows(tenant):
            if row["feed_id"] == feed_id:
                return self._feed_view(row)
        raise ResourceNotFound(f"no GTFS feed {feed_id!r}")

    async def stops_near(self, principal: Principal | None, tenant: str, lat: float, lon: float, radius_m: float,
                         limit: int, feed_id: str | None = None) -> list[dict[str, Any]]:
        check_allowed(principal, "mobility.read", tenant)
        if feed_id is not None and not any(r["feed_id"] == feed_id for r in await self._feed_rows(tenant)):
            raise ResourceNotFound(f"no GTFS feed {feed_id!r}")
        dlat = radius_m / 111_000.0
        dlon = radius_m / (111_000.0 * max(0.01, float(np.cos(np.radians(lat)))))
        s = models.stops.c
        query = select(models.stops).where(s.tenant == tenant, s.lat.between(lat - dlat, lat + dlat),
                                           s.lon.between(lon - dlon, lon + dlon))
        if feed_id is not None:
            query = query.where(s.feed_id == feed_id)
        async with self.engine.connect() as conn:
            rows = [r._mapping for r in await conn.execute(query)]
        found = []
        for r in rows:
            distance = float(haversine_m(lat, lon, r["lat"], r["lon"]))
            if distance <= radius_m:
                found.append({"feedId": r["feed_id"], "stopId": r["stop_id"], "name": r["name"], "lat": r["lat"],
                              "lon": r["lon"], "locationType": r["location_type"],
                              "parentStation": r["parent_station"] or None, "distance": round(distance, 1)})
        found.sort(key=lambda f: (f["distance"], f["feedId"], f["stopId"]))
        return found[:limit]

    async def feed_stops(self, principal: Principal | None, tenant: str, feed_id: str, limit: int,
                         offset: int) -> dict[str, Any]:
        """The feed's stops and stations by id, a page at a time."""
        await self.feed(principal, tenant, feed_id)
        s = models.stops.c
        async with self.engine.connect() as conn:
            rows = [r._mapping for r in await conn.execute(
                select(models.stops).where(s.tenant == tenant, s.feed_id == feed_id).order_by(s.stop_id)
                .limit(limit).offset(offset))]
        return {"feedId": feed_id, "offset": offset,
                "items": [{"stopId": r["stop_id"], "name": r["name"], "lat": r["lat"], "lon": r["lon"],
                           "locationType": r["location_type"], "parentStation": r["parent_station"] or None}
                          for r in rows]}

    async def timetables(self, tenant: str, feed_id: str | None = None,
                         keep: Callable[[dict[str, Any]], bool] | None = None
                         ) -> list[tuple[dict[str, Any], Timetable]]:
        """(feed, timetable) for the tenant's feeds (or one; or those `keep` accepts), loading any whose
        version changed."""
        rows = await self._feed_rows(tenant)
        if feed_id is not None:
            rows = [r for r in rows if r["feed_id"] == feed_id]
            if not rows:
                raise ResourceNotFound(f"no GTFS feed {feed_id!r}")
        if keep is not None:
            rows = [r for r in rows if keep(self._feed_view(r))]
        out = []
        for row in rows:
            key = (tenant, row["feed_id"])
            cached = self._timetables.get(key)
            if cached is None or cached.version != row["version"]:
                async with self._loading:
                    cached = self._timetables.get(key)
                    if cached is None or cached.version != row["version"]:
                        tables = await self._load_tables(tenant, row)
                        timetable = await asyncio.to_thread(build_timetable, tables, self.walk)
                        cached = self._timetables[key] = _Cached(row["version"], timetable)
            out.append((self._feed_view(row), cached.timetable))
        return out

    async def plan(self, principal: Principal | None, tenant: str, query: Query,
                   feed_id: str | None = None) -> dict[str, Any]:
        """Itineraries over every feed whose area holds both places (or the one feed asked for)."""
        check_allowed(principal, "mobility.read", tenant)
        if feed_id is None and not await self._feed_rows(tenant):
            raise ResourceNotFound("no GTFS feed has been imported")
        margin = self.walk.max_access_m
        usable = await self.timetables(tenant, feed_id, keep=lambda f: covers(f, *query.origin, margin)
                                       and covers(f, *query.destination, margin))
        if not usable:
            raise BadRequestData("fromPlace and toPlace are not both within the area of "
                                 + (f"feed {feed_id}" if feed_id else "any imported GTFS feed"))
        now = clock.now()

        def compute() -> tuple[list[dict[str, Any]], list[str]]:
            found: list[dict[str, Any]] = []
            refused: list[str] = []
            for feed, timetable in usable:
                realtime = None if self.live is None else self.live.plan_view(tenant, feed, now.timestamp())
                try:
                    found.extend(Planner(feed, timetable, realtime).plan(query, now))
                except BadRequestData as exc:
                    refused.append(exc.detail)
            return found, refused

        itineraries, refused = await asyncio.to_thread(compute)
        if refused and len(refused) == len(usable):
            raise BadRequestData("; ".join(refused))
        itineraries.sort(key=lambda i: (i["endTime"], i["transfers"]))
        planner = Planner(*usable[0])
        try:
            date, seconds = planner.when(query, now)
        except BadRequestData:  # the first feed does not run that day; another one answered
            date, seconds = query.date or now.date(), 0
        return {
            "requestParameters": {"fromPlace": f"{query.origin[0]},{query.origin[1]}",
                                  "toPlace": f"{query.destination[0]},{query.destination[1]}",
                                  "date": date.isoformat(), "arriveBy": str(query.arrive_by).lower(),
                                  "maxTransfers": str(query.max_transfers), "mode": ",".join(sorted(query.modes))},
            "plan": {"date": planner._iso(date, seconds),
                     "from": {"name": "Origin", "lat": query.origin[0], "lon": query.origin[1], "vertexType": "NORMAL"},
                     "to": {"name": "Destination", "lat": query.destination[0], "lon": query.destination[1],
                            "vertexType": "NORMAL"},
                     "itineraries": itineraries},
            **({"messages": ["no transit connection found; try another time or more transfers"]}
               if not itineraries else {}),
        }

    async def _load_tables(self, tenant: str, feed: Any) -> FeedTables:
        feed_id = feed["feed_id"]

        async def fetch(table: Any) -> list[dict[str, Any]]:
            async with self.engine.connect() as conn:
                result = await conn.execute(select(table).where(and_(table.c.tenant == tenant,
                                                                     table.c.feed_id == feed_id)))
                return [dict(r._mapping) for r in result]

        return await asyncio.to_thread(_tables_from_rows, feed, {t.name: await fetch(t) for t in models.FEED_TABLES})


def _rows(tables: FeedTables) -> dict[Any, list[dict[str, Any]]]:
    """The feed as rows of the mobility tables (stop times grouped per trip)."""
    st = tables.stop_times
    grouped: dict[str, dict[str, Any]] = {}
    if len(st):
        trip_ids = st["trip_id"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, trip_ids[1:] != trip_ids[:-1], True])
        stop_ids = st["stop_id"].to_numpy()
        seqs = st["stop_sequence"].to_numpy()
        arr, dep = st["arrival"].to_numpy(), st["departure"].to_numpy()
        pick, drop = st["pickup"].to_numpy(), st["dropoff"].to_numpy()
        for a, b in itertools.pairwise(bounds):
            grouped[str(trip_ids[a])] = {
                "stop_ids": stop_ids[a:b].tolist(), "stop_sequences": seqs[a:b].tolist(),
                "arrivals": arr[a:b].tolist(), "departures": dep[a:b].tolist(),
                "pickup": "".join(map(str, pick[a:b].tolist())), "dropoff": "".join(map(str, drop[a:b].tolist()))}
    trips = []
    for t in tables.trips.itertuples(index=False):
        times = grouped.get(t.trip_id)
        if times is None:
            continue  # a trip without stop times (an unusable_trip warning): nothing to ride
        trips.append({"trip_id": t.trip_id, "route_id": t.route_id, "service_id": t.service_id,
                      "headsign": t.headsign or "", "direction_id": str(t.direction_id or ""), **times})
    return {
        models.stops: [{"stop_id": s.stop_id, "name": s.stop_name or "", "lat": None if np.isnan(s.lat) else s.lat,
                        "lon": None if np.isnan(s.lon) else s.lon, "location_type": int(s.location_type),
                        "parent_station": s.parent_station or ""} for s in tables.stops.itertuples(index=False)],
        models.routes: [{"route_id": r.route_id, "agency_id": r.agency_id or "", "short_name": r.short_name or "",
                         "long_name": r.long_name or "", "route_type": int(r.route_type), "color": r.color or ""}
                        for r in tables.routes.itertuples(index=False)],
        models.trips: trips,
        models.calendars: [{"service_id": c["service_id"], "days": "".join(str(int(c[d])) for d in DAYS),
                            "start_date": c["start_date"].isoformat(), "end_date": c["end_date"].isoformat()}
                           for c in tables.calendar.to_dict("records")],
        models.calendar_dates: [{"service_id": c.service_id, "date": c.date.isoformat(),
                                 "exception_type": int(c.exception_type)}
                                for c in tables.calendar_dates.itertuples(index=False)],
        models.transfers: [{"seq": i, "from_stop_id": t.from_stop_id, "to_stop_id": t.to_stop_id,
                            "transfer_type": int(t.transfer_type), "min_transfer_time": int(t.min_transfer_time)}
                           for i, t in enumerate(tables.transfers.itertuples(index=False))],
        models.frequencies: [{"seq": i, "trip_id": f.trip_id, "start_time": int(f.start), "end_time": int(f.end),
                              "headway": int(f.headway), "exact_times": str(f.exact_times)[:1] or "0"}
                             for i, f in enumerate(tables.frequencies.itertuples(index=False))],
    }


def _tables_from_rows(feed: Any, rows: dict[str, list[dict[str, Any]]]) -> FeedTables:
    """The inverse of `_rows`: the FeedTables a stored feed was imported from (without the warnings)."""
    stops = pd.DataFrame(rows["mob_stops"], columns=["stop_id", "name", "lat", "lon", "location_type",
                                                     "parent_station"]).rename(columns={"name": "stop_name"})
    stops["lat"] = pd.to_numeric(stops["lat"]).astype(float)
    stops["lon"] = pd.to_numeric(stops["lon"]).astype(float)
    routes = pd.DataFrame(rows["mob_routes"], columns=["route_id", "agency_id", "short_name", "long_name",
                                                       "route_type", "color"])
    trip_rows = sorted(rows["mob_trips"], key=lambda t: t["trip_id"])
    trips = pd.DataFrame([{k: t[k] for k in ("trip_id", "route_id", "service_id", "headsign", "direction_id")}
                          for t in trip_rows], columns=["trip_id", "route_id", "service_id", "headsign",
                                                        "direction_id"])
    counts = [len(t["stop_ids"]) for t in trip_rows]
    stop_times = pd.DataFrame({
        "trip_id": np.repeat([t["trip_id"] for t in trip_rows], counts).astype(object),
        "stop_id": [s for t in trip_rows for s in t["stop_ids"]],
        "stop_sequence": np.array([s for t in trip_rows for s in t["stop_sequences"]], dtype=np.int64),
        "arrival": np.array([s for t in trip_rows for s in t["arrivals"]], dtype=np.int64),
        "departure": np.array([s for t in trip_rows for s in t["departures"]], dtype=np.int64),
        "pickup": np.array([int(c) for t in trip_rows for c in t["pickup"]], dtype=np.int64),
        "dropoff": np.array([int(c) for t in trip_rows for c in t["dropoff"]], dtype=np.int64)})
    calendar = pd.DataFrame([{"service_id": c["service_id"], **{d: int(c["days"][i]) for i, d in enumerate(DAYS)},
                              "start_date": dt.date.fromisoformat(c["start_date"]),
                              "end_date": dt.date.fromisoformat(c["end_date"])} for c in rows["mob_calendars"]],
                            columns=["service_id", *DAYS, "start_date", "end_date"])
    calendar_dates = pd.DataFrame([{"service_id": c["service_id"], "date": dt.date.fromisoformat(c["date"]),
                                    "exception_type": c["exception_type"]} for c in rows["mob_calendar_dates"]],
                                  columns=["service_id", "date", "exception_type"])
    transfers = pd.DataFrame(sorted(rows["mob_transfers"], key=lambda t: t["seq"]),
                             columns=["from_stop_id", "to_stop_id", "transfer_type", "min_transfer_time"])
    frequencies = pd.DataFrame([{"trip_id": f["trip_id"], "start": f["start_time"], "end": f["end_time"],
                                 "headway": f["headway"], "exact_times": f["exact_times"]}
                                for f in sorted(rows["mob_frequencies"], key=lambda f: f["seq"])],
                               columns=["trip_id", "start", "end", "headway", "exact_times"])
    return FeedTables(agencies=feed["agencies"], timezone=feed["timezone"], stops=stops, routes=routes, trips=trips,
                      stop_times=stop_times, calendar=calendar, calendar_dates=calendar_dates, transfers=transfers,
                      frequencies=frequencies)
