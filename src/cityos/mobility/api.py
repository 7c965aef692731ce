"""HTTP API of mobility (智慧出行).

    POST /api/mobility/feeds?feedId=&name=   body: a GTFS zip (mobility.manage) → 201 the feed (with its
                                             warnings); 400 with `notices` (canonical validator codes) when
                                             the feed has errors; 413 past the body limit
    GET  /api/mobility/feeds                 the tenant's feeds (mobility.read, public)
    GET  /api/mobility/feeds/{feedId}        one feed; 404 unknown
    GET  /api/mobility/feeds/{feedId}/stops?limit=&offset=   the feed's stops by id (404 unknown feed)
    GET  /api/mobility/stops?near=lat,lon&radius=&limit=&feedId=   stops by distance
    POST /api/mobility/bikeshare/systems      {"systemId", "url": gbfs.json} (mobility.manage) → 201 after the
                                             feeds were read; 400 bad URL, 409 known id, 502 unreadable feed
    GET  /api/mobility/bikeshare/systems[/{systemId}]
    POST /api/mobility/bikeshare/systems/{systemId}/refresh        (mobility.manage)
    GET  /api/mobility/bikeshare/stations?near=lat,lon&radius=&limit=   stations with bikes and docks
    GET  /api/mobility/gtfs-rt/{feedId}/trip-updates   GTFS-Realtime TripUpdates with arrival predictions,
                                             protobuf (Accept: application/x-protobuf or ?format=pb) or JSON
    GET  /api/mobility/gtfs-rt/{feedId}/vehicle-positions   GTFS-Realtime VehiclePositions (occupancy), same
    GET  /api/mobility/realtime/{feedId}/status         reports accepted and refused (by reason)
    GET  /api/mobility/realtime/{feedId}/arrivals?stopId=&limit=   next departures at a stop, predicted
    GET  /api/mobility/realtime/{feedId}/lines          on-time share, delay, vehicles and crowding per line
    GET  /api/mobility/plan?fromPlace=lat,lon&toPlace=lat,lon&date=&time=&arriveBy=&maxTransfers=&mode(s)=&feedId=
                                             OpenTripPlanner-style plan (see planner.py)
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from google.protobuf import json_format

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response, read_body, read_json_object
from cityos.hub.service import ENTITY_CHANGED
from cityos.mobility.bikes import BikePoller, BikeService
from cityos.mobility.live import LiveService
from cityos.mobility.planner import MAX_TRANSFERS, parse_modes, parse_place
from cityos.mobility.planner import Query as PlanQuery
from cityos.mobility.service import MobilityService, validate_feed_id
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

# GTFS zips of big cities pass the generic body limit (tens of MB); CITYOS_MOBILITY_MAX_FEED_BYTES sets it.
MAX_FEED_BYTES = int(os.environ.get("CITYOS_MOBILITY_MAX_FEED_BYTES", str(256 * 1024 * 1024)))

router = APIRouter(prefix="/api/mobility", tags=["mobility"])
routers: list[APIRouter] = [router]


def mobility_of(request: Request) -> MobilityService:
    service: MobilityService = request.app.state.mobility
    return service


@router.post("/feeds", status_code=201)
async def upload_feed(request: Request, feed_id: str = Query(..., alias="feedId", max_length=64),
                      name: str | None = Query(None, max_length=256),
                      principal: Principal | None = Depends(require("mobility.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    validate_feed_id(feed_id)
    data = await read_body(request, MAX_FEED_BYTES)
    if not data:
        raise BadRequestData("the body must be a GTFS zip file")
    return json_response(await mobility_of(request).import_feed(principal, tenant, feed_id, data, name), 201)


@router.get("/feeds")
async def list_feeds(request: Request, principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await mobility_of(request).feeds(principal, request_tenant(request, principal)))


@router.get("/feeds/{feed_id}")
async def get_feed(request: Request, feed_id: str,
                   principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await mobility_of(request).feed(principal, request_tenant(request, principal), feed_id[:64]))


@router.get("/feeds/{feed_id}/stops")
async def feed_stops(request: Request, feed_id: str, limit: int = Query(1000, ge=1, le=5000),
                     offset: int = Query(0, ge=0, le=10_000_000),
                     principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await mobility_of(request).feed_stops(principal, request_tenant(request, principal),
                                                               feed_id[:64], limit, offset))


@router.get("/stops")
async def stops_near(request: Request, near: str = Query(..., max_length=64),
                     radius: float = Query(500.0, gt=0, le=5000), limit: int = Query(50, ge=1, le=500),
                     feed_id: str | None = Query(None, alias="feedId", max_length=64),
                     principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    lat, lon = parse_place(near, "near")
    return json_response(await mobility_of(request).stops_near(principal, request_tenant(request, principal),
                                                               lat, lon, radius, limit, feed_id))


def parse_date(value: str | None) -> dt.date | None:
    """YYYY-MM-DD, YYYYMMDD or OTP's MM-DD-YYYY."""
    if not value:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%m-%d-%Y"):
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise BadRequestData("date must be YYYY-MM-DD (or YYYYMMDD, or MM-DD-YYYY)")


_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(am|pm)?$", re.IGNORECASE)


def parse_time(value: str | None) -> dt.time | None:
    """HH:MM[:SS] or OTP's h:mmam / h:mmpm."""
    if not value:
        return None
    m = _TIME.match(value.strip())
    if m is None:
        raise BadRequestData("time must be HH:MM[:SS] or h:mmam / h:mmpm")
    hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if m.group(4):
        if not 1 <= hour <= 12:
            raise BadRequestData("time: the hour of an am/pm time is 1–12")
        hour = hour % 12 + (12 if m.group(4).lower() == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise BadRequestData("time is not a clock time")
    return dt.time(hour, minute, second)


@router.get("/plan")
async def plan(request: Request, from_place: str = Query(..., alias="fromPlace", max_length=64),
               to_place: str = Query(..., alias="toPlace", max_length=64),
               date: str | None = Query(None, max_length=16), time: str | None = Query(None, max_length=16),
               arrive_by: bool = Query(False, alias="arriveBy"),
               max_transfers: int = Query(3, alias="maxTransfers", ge=0, le=MAX_TRANSFERS),
               modes: str | None = Query(None, max_length=128), mode: str | None = Query(None, max_length=128),
               feed_id: str | None = Query(None, alias="feedId", max_length=64),
               principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    query = PlanQuery(origin=parse_place(from_place, "fromPlace"), destination=parse_place(to_place, "toPlace"),
                      date=parse_date(date), time=parse_time(time), arrive_by=arrive_by,
                      max_transfers=max_transfers, modes=parse_modes(modes or mode))
    if "BICYCLE_RENT" in query.modes:
        tenant = request_tenant(request, principal)
        radius = mobility_of(request).walk.max_access_m
        near_origin = await bikes_of(request).stations_near(principal, tenant, *query.origin, radius, 10)
        near_destination = await bikes_of(request).stations_near(principal, tenant, *query.destination, radius, 10)
        query.bike_pickups = tuple(s for s in near_origin if s["isRenting"] and s["bikesAvailable"] > 0)
        query.bike_dropoffs = tuple(s for s in near_destination if s["isReturning"]
                                    and (s["docksAvailable"] is None or s["docksAvailable"] > 0))
    return json_response(await mobility_of(request).plan(principal, request_tenant(request, principal), query,
                                                         feed_id))


def live_of(request: Request) -> LiveService:
    service: LiveService = request.app.state.mobility_live
    return service


def _feed_message(request: Request, message: Any, format: str | None) -> Response:
    wants_pb = format == "pb" or (format is None and "application/x-protobuf" in request.headers.get("accept", ""))
    if wants_pb:
        return Response(message.SerializeToString(), media_type="application/x-protobuf")
    return json_response(json_format.MessageToDict(message))


@router.get("/gtfs-rt/{feed_id}/trip-updates")
async def gtfs_rt_trip_updates(request: Request, feed_id: str, format: str | None = Query(None, pattern="^(pb|json)$"),
                               principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    message = await live_of(request).trip_updates(principal, request_tenant(request, principal), feed_id[:64])
    return _feed_message(request, message, format)


@router.get("/gtfs-rt/{feed_id}/vehicle-positions")
async def gtfs_rt_vehicle_positions(request: Request, feed_id: str,
                                    format: str | None = Query(None, pattern="^(pb|json)$"),
                                    principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    message = await live_of(request).vehicle_positions(principal, request_tenant(request, principal), feed_id[:64])
    return _feed_message(request, message, format)


@router.get("/realtime/{feed_id}/status")
async def realtime_status(request: Request, feed_id: str,
                          principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await live_of(request).status(principal, request_tenant(request, principal), feed_id[:64]))


@router.get("/realtime/{feed_id}/arrivals")
async def realtime_arrivals(request: Request, feed_id: str, stop_id: str = Query(..., alias="stopId", max_length=256),
                            limit: int = Query(20, ge=1, le=100),
                            principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await live_of(request).arrivals(principal, request_tenant(request, principal), feed_id[:64],
                                                         stop_id, limit))


@router.get("/realtime/{feed_id}/lines")
async def realtime_lines(request: Request, feed_id: str,
                         principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await live_of(request).lines(principal, request_tenant(request, principal), feed_id[:64]))


def bikes_of(request: Request) -> BikeService:
    service: BikeService = request.app.state.bikes
    return service


@router.post("/bikeshare/systems", status_code=201)
async def register_bike_system(request: Request,
                               principal: Principal | None = Depends(require("mobility.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    body = await read_json_object(request, 16 * 1024)
    system_id = body.get("systemId")
    if not isinstance(system_id, str):
        raise BadRequestData("systemId must be a string")
    return json_response(await bikes_of(request).register(principal, tenant, system_id, body.get("url")), 201)


@router.get("/bikeshare/systems")
async def list_bike_systems(request: Request,
                            principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await bikes_of(request).systems(principal, request_tenant(request, principal)))


@router.get("/bikeshare/systems/{system_id}")
async def get_bike_system(request: Request, system_id: str,
                          principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    return json_response(await bikes_of(request).system(principal, request_tenant(request, principal),
                                                        system_id[:64]))


@router.post("/bikeshare/systems/{system_id}/refresh")
async def refresh_bike_system(request: Request, system_id: str,
                              principal: Principal | None = Depends(require("mobility.manage"))) -> Response:
    return json_response(await bikes_of(request).refresh(request_tenant(request, principal), system_id[:64]))


@router.get("/bikeshare/stations")
async def bike_stations(request: Request, near: str = Query(..., max_length=64),
                        radius: float = Query(500.0, gt=0, le=5000), limit: int = Query(50, ge=1, le=500),
                        principal: Principal | None = Depends(require("mobility.read"))) -> Response:
    lat, lon = parse_place(near, "near")
    return json_response(await bikes_of(request).stations_near(principal, request_tenant(request, principal),
                                                               lat, lon, radius, limit))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.mobility` and `app.state.bikes`, start the GBFS poller; returns the shutdown function."""
    lock = write_lock_of(app)
    app.state.mobility = MobilityService(app.state.engine, app.state.hub.service, app.state.hub.resolver.core,
                                         write_lock=lock)
    app.state.bikes = BikeService(app.state.engine, app.state.hub.service, app.state.hub.resolver.core,
                                  write_lock=lock, outbound=app.state.outbound)
    poller = BikePoller(app.state.bikes)
    poller.start()
    live = app.state.mobility_live = LiveService(app.state.mobility, app.state.outbound,
                                                 app.state.hub.resolver.core.expand)
    app.state.mobility.live = live
    live.start()
    unsubscribe = app.state.bus.subscribe(ENTITY_CHANGED, live.on_entity_changed)

    async def stop() -> None:
        unsubscribe()
        await live.stop()
        await poller.stop()

    return stop
