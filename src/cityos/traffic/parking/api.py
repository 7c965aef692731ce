"""HTTP API of parking (智慧停车), under `/api/parking`.

    GET  /carparks                          car parks with live availability and tariffs (parking.read, public)
    POST /carparks                          register one (parking.manage): {name, department?, lat, lon,
                                            totalSpotNumber, evChargers?, tariff{freeMinutes, hourRate, nightRate,
                                            nightStart, nightEnd, dailyCap} (fen), openingHours{opens, closes}}
    GET  /carparks/{id}
    GET  /carparks/{id}/sessions            plates clear for the car park's staff, masked for monitors
    GET  /guidance?near=lat,lon&arrival=&radius=&limit=   nearest with spaces predicted free at arrival
    POST /vehicles                          {plate}: bind a plate to my account (无感支付, my bills)
    POST /reservations                      {carparkId, plate, start, end} → 201; 409 full or duplicate;
                                            400 past window / closed / malformed plate
    GET  /reservations/mine
    POST /reservations/{id}/cancel
    POST /events                            gate camera: {eventId, carparkId, plate, direction: entry|exit, at?}
                                            (parking.gate); repeats answer the same session with duplicate=true
    GET  /sessions/mine                     my sessions and bills
    GET  /sessions/{id}                     with its payments (owner or staff)
    POST /sessions/{id}/dispute             {reason} (the plate's owner; audited)
    POST /sessions/{id}/refund              {amount, reason} (parking.manage; audited)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response, read_json_object
from cityos.core.tasks import periodic
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal
from cityos.traffic.parking.service import ParkingService, moment_of

router = APIRouter(prefix="/api/parking", tags=["parking"])
routers: list[APIRouter] = [router]
NO_SHOW_INTERVAL_SECONDS = 60.0
OCCUPANCY_INTERVAL_SECONDS = 900.0


def parking_of(request: Request) -> ParkingService:
    service: ParkingService = request.app.state.parking
    return service


def parse_near(value: str) -> tuple[float, float]:
    try:
        lat_text, lon_text = value.split(",")
        return float(lat_text), float(lon_text)
    except ValueError as exc:
        raise BadRequestData("near must be lat,lon") from exc


@router.get("/carparks")
async def list_carparks(request: Request, limit: int = Query(200, ge=1, le=1000),
                        principal: Principal | None = Depends(require("parking.read"))) -> Response:
    return json_response(await parking_of(request).list_carparks(principal, request_tenant(request, principal),
                                                                  limit))


@router.post("/carparks", status_code=201)
async def register(request: Request, principal: Principal | None = Depends(require("parking.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await parking_of(request).register(principal, request_tenant(request, principal), body),
                         201)


@router.get("/carparks/{carpark_id}")
async def get_carpark(request: Request, carpark_id: str,
                      principal: Principal | None = Depends(require("parking.read"))) -> Response:
    return json_response(await parking_of(request).carpark(principal, request_tenant(request, principal),
                                                           carpark_id[:64]))


@router.get("/carparks/{carpark_id}/sessions")
async def carpark_sessions(request: Request, carpark_id: str, limit: int = Query(200, ge=1, le=1000),
                           principal: Principal | None = Depends(require("parking.read"))) -> Response:
    return json_response(await parking_of(request).carpark_sessions(
        principal, request_tenant(request, principal), carpark_id[:64], limit))


@router.get("/guidance")
async def guidance(request: Request, near: str = Query(..., max_length=64),
                   arrival: str | None = Query(None, max_length=40), radius: float = Query(3000.0),
                   limit: int = Query(5), principal: Principal | None = Depends(require("parking.read"))) -> Response:
    lat, lon = parse_near(near)
    when = moment_of(arrival, "arrival") if arrival is not None else None
    return json_response(await parking_of(request).guidance(principal, request_tenant(request, principal), lat, lon,
                                                            when, radius, limit))


@router.post("/vehicles", status_code=201)
async def add_vehicle(request: Request,
                      principal: Principal | None = Depends(require("parking.reserve"))) -> Response:
    body = await read_json_object(request)
    return json_response(await parking_of(request).add_vehicle(principal, request_tenant(request, principal),
                                                               body.get("plate")), 201)


@router.post("/reservations", status_code=201)
async def reserve(request: Request, principal: Principal | None = Depends(require("parking.reserve"))) -> Response:
    body = await read_json_object(request)
    return json_response(await parking_of(request).reserve(principal, request_tenant(request, principal), body),
                         201)


@router.get("/reservations/mine")
async def my_reservations(request: Request,
                          principal: Principal | None = Depends(require("parking.reserve"))) -> Response:
    return json_response(await parking_of(request).my_reservations(principal, request_tenant(request, principal)))


@router.post("/reservations/{reservation_id}/cancel")
async def cancel(request: Request, reservation_id: str,
                 principal: Principal | None = Depends(require("parking.read"))) -> Response:
    return json_response(await parking_of(request).cancel(principal, request_tenant(request, principal),
                                                          reservation_id[:64]))


@router.post("/events")
async def plate_event(request: Request, principal: Principal | None = Depends(require("parking.gate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await parking_of(request).plate_event(principal, request_tenant(request, principal), body))


@router.get("/sessions/mine")
async def my_sessions(request: Request,
                      principal: Principal | None = Depends(require("parking.reserve"))) -> Response:
    return json_response(await parking_of(request).my_sessions(principal, request_tenant(request, principal)))


@router.get("/sessions/{session_id}")
async def get_session(request: Request, session_id: str,
                      principal: Principal | None = Depends(require("parking.read"))) -> Response:
    return json_response(await parking_of(request).session(principal, request_tenant(request, principal),
                                                           session_id[:64]))


@router.post("/sessions/{session_id}/dispute")
async def dispute(request: Request, session_id: str,
                  principal: Principal | None = Depends(require("parking.reserve"))) -> Response:
    body: dict[str, Any] = await read_json_object(request)
    return json_response(await parking_of(request).dispute(principal, request_tenant(request, principal),
                                                           session_id[:64], body.get("reason")))


@router.post("/sessions/{session_id}/refund")
async def refund(request: Request, session_id: str,
                 principal: Principal | None = Depends(require("parking.manage"))) -> Response:
    body: dict[str, Any] = await read_json_object(request)
    return json_response(await parking_of(request).refund(principal, request_tenant(request, principal),
                                                          session_id[:64], body.get("amount"), body.get("reason")))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.parking`; start the no-show release and the occupancy sampling loops."""
    hub = getattr(app.state, "hub", None)
    service = ParkingService(app.state.engine, write_lock_of(app), app.state.security.service.audit,
                             hub.service if hub is not None else None, hub.resolver.core if hub is not None else None)
    app.state.parking = service
    stop_no_shows = periodic("parking no-shows", service.release_no_shows, NO_SHOW_INTERVAL_SECONDS, first=10.0)
    stop_occupancy = periodic("parking occupancy", service.record_occupancy, OCCUPANCY_INTERVAL_SECONDS, first=30.0)

    async def stop() -> None:
        await stop_no_shows()
        await stop_occupancy()

    return stop
