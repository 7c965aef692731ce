"""HTTP API of community services (社区), `/api/community`.

    POST /residents                    {"community", "building", "person", "phone"?} (community.manage)
    POST /repairs                      a resident's one-click repair: JSON {"place", "description"}, or multipart
                                       with `place`, `description` and a `photo` (JPEG/PNG ≤ 2 MiB) (community.report)
    GET  /repairs?community=&open=     staff: the work orders, overdue first; a resident: their own
    GET  /repairs/{id}                 the reporter or staff (history, SLA, overdue)
    GET  /repairs/{id}/photo
    POST /repairs/{id}/advance         {"to", "note"?, "rating"?}: staff accepted → in_progress → done; the reporter
                                       confirmed (with a 1–5 rating) or reopened
    POST /notices                      {"community", "title", "body", "buildings"?, "urgent"?} (community.manage);
                                       urgent notices also go by SMS
    GET  /home                         the caller's community and building (a registered resident)
    GET  /notices?community=           a resident: notices meant for them (read or not); staff: a community's,
                                       with read counts
    GET  /notices/{id}                 a resident it is meant for reads it (their read receipt)
    GET  /notices/{id}/receipts        staff: read counts, per building
    GET  /living-circle?minutes=15     each community's 15-minute walk: places reached per need, gaps, the
                                       isochrone as GeoJSON (public: planners and residents)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.responses import json_response, read_json_object
from cityos.livelihood.community.service import MAX_PHOTO_BYTES, CommunityService
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

router = APIRouter(prefix="/api/community", tags=["community"])
routers: list[APIRouter] = [router]


def community_of(request: Request) -> CommunityService:
    service: CommunityService = request.app.state.community
    return service


@router.post("/residents", status_code=201)
async def register(request: Request, principal: Principal | None = Depends(require("community.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await community_of(request).register(principal, request_tenant(request, principal), body),
                         201)


@router.post("/repairs", status_code=201)
async def report(request: Request, principal: Principal | None = Depends(require("community.report"))) -> Response:
    photo: bytes | None = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=5, max_part_size=MAX_PHOTO_BYTES + 1024)
        body = {"place": form.get("place"), "description": form.get("description")}
        upload = form.get("photo")
        if upload is not None and not isinstance(upload, str):
            photo = await upload.read()
    else:
        body = await read_json_object(request)
    return json_response(await community_of(request).report(principal, request_tenant(request, principal), body,
                                                            photo), 201)


@router.get("/repairs")
async def list_repairs(request: Request, community: str | None = Query(None, max_length=64),
                       only_open: bool = Query(True, alias="open"),
                       principal: Principal | None = Depends(require("community.report"))) -> Response:
    return json_response(await community_of(request).list_repairs(principal, request_tenant(request, principal),
                                                                  community, only_open))


@router.get("/repairs/{repair_id}")
async def get_repair(request: Request, repair_id: str,
                     principal: Principal | None = Depends(require("community.report"))) -> Response:
    return json_response(await community_of(request).repair(principal, request_tenant(request, principal),
                                                            repair_id[:64]))


@router.get("/repairs/{repair_id}/photo")
async def get_photo(request: Request, repair_id: str,
                    principal: Principal | None = Depends(require("community.report"))) -> Response:
    data, kind = await community_of(request).photo(principal, request_tenant(request, principal), repair_id[:64])
    return Response(data, media_type=kind, headers={"Cache-Control": "private, no-store"})


@router.post("/repairs/{repair_id}/advance")
async def advance(request: Request, repair_id: str,
                  principal: Principal | None = Depends(require("community.report"))) -> Response:
    body = await read_json_object(request)
    return json_response(await community_of(request).advance(principal, request_tenant(request, principal),
                                                             repair_id[:64], body.get("to"), body.get("note"),
                                                             body.get("rating")))


@router.get("/living-circle")
async def living_circle(request: Request, minutes: float = Query(15.0, ge=1, le=60),
                        principal: Principal | None = Depends(require("community.plan"))) -> Response:
    return json_response(await community_of(request).living_circles(principal, request_tenant(request, principal),
                                                                     minutes))


@router.get("/communities")
async def communities(request: Request, principal: Principal | None = Depends(require("community.plan"))) -> Response:
    return json_response(await community_of(request).communities(principal, request_tenant(request, principal)))


@router.post("/notices", status_code=201)
async def publish(request: Request, principal: Principal | None = Depends(require("community.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await community_of(request).publish(principal, request_tenant(request, principal), body),
                         201)


@router.get("/home")
async def home(request: Request, principal: Principal | None = Depends(require("community.report"))) -> Response:
    return json_response(await community_of(request).home(principal, request_tenant(request, principal)))


@router.get("/notices")
async def list_notices(request: Request, community: str | None = Query(None, max_length=64),
                       principal: Principal | None = Depends(require("community.report"))) -> Response:
    return json_response(await community_of(request).list_notices(principal, request_tenant(request, principal),
                                                                  community))


@router.get("/notices/{notice_id}")
async def read_notice(request: Request, notice_id: str,
                      principal: Principal | None = Depends(require("community.report"))) -> Response:
    return json_response(await community_of(request).read_notice(principal, request_tenant(request, principal),
                                                                 notice_id[:64]))


@router.get("/notices/{notice_id}/receipts")
async def notice_receipts(request: Request, notice_id: str,
                          principal: Principal | None = Depends(require("community.manage"))) -> Response:
    return json_response(await community_of(request).receipts_of(principal, request_tenant(request, principal),
                                                                 notice_id[:64]))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    if getattr(app.state, "notifier", None) is None:
        raise RuntimeError("the community domain needs the notification service started first")
    app.state.community = CommunityService(app.state.engine, write_lock_of(app), app.state.notifier,
                                           app.state.security.service.keyring, app.state.hub.service,
                                           app.state.hub.resolver.core)

    async def stop() -> None:
        return None

    return stop
