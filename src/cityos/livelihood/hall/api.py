"""HTTP API of the service hall (智慧大厅), `/api/hall/{hall}`.

    POST /groups                       {"code", "name", "department"?} (hall.operate) → 201
    PUT  /windows/{n}                  {"skills": ["A", …]} opens window n for those groups (hall.operate)
    GET  /windows/{n}                  the desk's view: open, skills, current ticket, waiting, today's counts
    POST /windows/{n}/close
    POST /windows/{n}/call-next        the longest-waiting ticket of its groups → called; 404 nobody waiting;
                                       409 the window still has a ticket or is closed
    POST /tickets                      {"group", "channel": online|kiosk|desk} → 201 with its predicted wait;
                                       online = the citizen's own (hall.ticket), kiosk/desk = staff (hall.operate);
                                       409 when no window serves the group now or the citizen holds a ticket
    GET  /tickets/mine                 the citizen's own tickets of today, a waiting one with its predicted wait
    GET  /tickets/{id}                 the holder or staff: the ticket and its predicted wait, updated at each read
    POST /tickets/{id}/advance         {"to": serving|done|noshow|transfer, "group"? (transfer)} (hall.operate)
    GET  /board                        the call screen: latest calls, queue lengths, waits (public)
    POST /plan                         {"arrivalsPerHour"?: [...], "handlingMinutes"?, "opening"?} windows per
                                       hour by Erlang C, checked by simulation, against static staffing
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response, read_json_object
from cityos.livelihood.hall.service import HallService
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

router = APIRouter(prefix="/api/hall/{hall}", tags=["service hall"])
routers: list[APIRouter] = [router]
HallName = Path(..., max_length=64, pattern=r"^[\w\-]+$")
WindowNumber = Path(..., ge=1, le=200)  # 窗口号; out of range is a 422, never a database overflow


def hall_of(request: Request) -> HallService:
    service: HallService = request.app.state.hall
    return service


@router.post("/groups", status_code=201)
async def define_group(request: Request, hall: str = HallName,
                       principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await hall_of(request).define_group(principal, request_tenant(request, principal), hall,
                                                             body), 201)


@router.put("/windows/{number}")
async def open_window(request: Request, number: int = WindowNumber, hall: str = HallName,
                      principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await hall_of(request).open_window(principal, request_tenant(request, principal), hall,
                                                            number, body))


@router.get("/windows/{number}")
async def window_state(request: Request, number: int = WindowNumber, hall: str = HallName,
                       principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    return json_response(await hall_of(request).window_state(principal, request_tenant(request, principal), hall,
                                                             number))


@router.post("/windows/{number}/close")
async def close_window(request: Request, number: int = WindowNumber, hall: str = HallName,
                       principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    return json_response(await hall_of(request).close_window(principal, request_tenant(request, principal), hall,
                                                             number))


@router.post("/windows/{number}/call-next")
async def call_next(request: Request, number: int = WindowNumber, hall: str = HallName,
                    principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    return json_response(await hall_of(request).call_next(principal, request_tenant(request, principal), hall,
                                                          number))


@router.post("/tickets", status_code=201)
async def take_ticket(request: Request, hall: str = HallName,
                      principal: Principal | None = Depends(require("hall.read"))) -> Response:
    body = await read_json_object(request)
    group, channel = body.get("group"), body.get("channel", "online")
    if not isinstance(group, str) or not group or len(group) > 8 or not isinstance(channel, str):
        raise BadRequestData("group must be a service group code and channel a string")
    return json_response(await hall_of(request).take_ticket(principal, request_tenant(request, principal), hall,
                                                            group, channel), 201)


@router.get("/tickets/mine")
async def my_tickets(request: Request, hall: str = HallName,
                     principal: Principal | None = Depends(require("hall.ticket"))) -> Response:
    return json_response(await hall_of(request).my_tickets(principal, request_tenant(request, principal), hall))


@router.get("/tickets/{ticket_id}")
async def get_ticket(request: Request, ticket_id: str, hall: str = HallName,
                     principal: Principal | None = Depends(require("hall.read"))) -> Response:
    return json_response(await hall_of(request).ticket(principal, request_tenant(request, principal),
                                                       ticket_id[:64]))


@router.post("/tickets/{ticket_id}/advance")
async def advance(request: Request, ticket_id: str, hall: str = HallName,
                  principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    body = await read_json_object(request)
    to, group = body.get("to"), body.get("group")
    if not isinstance(to, str) or (group is not None and not isinstance(group, str)):
        raise BadRequestData("to must be a string (serving, done, noshow, transfer); group a group code")
    return json_response(await hall_of(request).advance(principal, request_tenant(request, principal),
                                                        ticket_id[:64], to, group))


@router.get("/board")
async def board(request: Request, hall: str = HallName,
                principal: Principal | None = Depends(require("hall.read"))) -> Response:
    return json_response(await hall_of(request).board(principal, request_tenant(request, principal), hall))


@router.post("/plan")
async def plan(request: Request, hall: str = HallName,
               principal: Principal | None = Depends(require("hall.operate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await hall_of(request).plan(principal, request_tenant(request, principal), hall, body))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    app.state.hall = HallService(app.state.engine, write_lock_of(app))

    async def stop() -> None:
        return None

    return stop
