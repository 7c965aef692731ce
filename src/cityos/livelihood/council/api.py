"""HTTP API of the citizens' council (市民议事厅), `/api/council`.

    POST /members                      {"community", "person"} the community office verifies a resident (council.manage)
    GET  /memberships                  the communities where the caller is a verified resident
    GET  /communities/{c}/proposals    the community's proposals; results once closed (public)
    POST /proposals                    {"community", "title", "body", "days"?} a verified resident (council.participate)
    POST /proposals/{id}/votes         {"choice": yes|no|abstain}; a second vote replaces the first until the close
    GET  /proposals/{id}/comments      (public; commenters are not named)
    POST /proposals/{id}/comments      {"body"} a verified resident
    POST /proposals/{id}/moderate      {"reason"} hides it; its author sees the reason (council.manage)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.responses import json_response, read_json_object
from cityos.livelihood.council.service import CouncilService
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

router = APIRouter(prefix="/api/council", tags=["citizens' council"])
routers: list[APIRouter] = [router]


def council_of(request: Request) -> CouncilService:
    service: CouncilService = request.app.state.council
    return service


@router.post("/members", status_code=201)
async def verify(request: Request, principal: Principal | None = Depends(require("council.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await council_of(request).verify(principal, request_tenant(request, principal),
                                                          body.get("community"), body.get("person")), 201)


@router.get("/memberships")
async def memberships(request: Request,
                      principal: Principal | None = Depends(require("council.participate"))) -> Response:
    return json_response(await council_of(request).memberships(principal, request_tenant(request, principal)))


@router.get("/communities/{community}/proposals")
async def list_proposals(request: Request, community: str,
                         principal: Principal | None = Depends(require("council.read"))) -> Response:
    return json_response(await council_of(request).proposals(principal, request_tenant(request, principal),
                                                        community[:65]))


@router.post("/proposals", status_code=201)
async def propose(request: Request, principal: Principal | None = Depends(require("council.participate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await council_of(request).propose(principal, request_tenant(request, principal), body), 201)


@router.post("/proposals/{proposal_id}/votes")
async def vote(request: Request, proposal_id: str,
               principal: Principal | None = Depends(require("council.participate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await council_of(request).vote(principal, request_tenant(request, principal),
                                                        proposal_id[:64], body.get("choice")))


@router.get("/proposals/{proposal_id}/comments")
async def list_comments(request: Request, proposal_id: str,
                        principal: Principal | None = Depends(require("council.read"))) -> Response:
    return json_response(await council_of(request).comments_of(principal, request_tenant(request, principal),
                                                               proposal_id[:64]))


@router.post("/proposals/{proposal_id}/comments", status_code=201)
async def comment(request: Request, proposal_id: str,
                  principal: Principal | None = Depends(require("council.participate"))) -> Response:
    body = await read_json_object(request)
    return json_response(await council_of(request).comment(principal, request_tenant(request, principal),
                                                           proposal_id[:64], body.get("body")), 201)


@router.post("/proposals/{proposal_id}/moderate")
async def moderate(request: Request, proposal_id: str,
                   principal: Principal | None = Depends(require("council.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await council_of(request).moderate(principal, request_tenant(request, principal),
                                                            proposal_id[:64], body.get("reason")))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    app.state.council = CouncilService(app.state.engine, write_lock_of(app))

    async def stop() -> None:
        return None

    return stop
