"""HTTP API of waste sorting (垃圾分类), `/api/waste`.

    POST /cards                  {"card", "community", "person"? (staff)} a resident links a QR card (waste.own)
    POST /deposits               {"point", "scan", "card", "category", "weightKg", "correct"?, "checkedBy"?}
                                 from the bins' system (an OAuth client, client_credentials, with the sanitation
                                 department's role) or an attendant (waste.deposit) → 201, or 200 with the
                                 first deposit when the same (point, scan) is sent again
    POST /deposits/{id}/check    {"correct": bool} an attendant's check of an unchecked deposit
    GET  /points                 the resident's balance and ledger (waste.own)
    GET  /deposits/mine          the resident's own deposits, newest first (waste.own)
    GET  /rewards                the exchange catalogue (public)
    POST /rewards                {"name", "cost", "stock"} (waste.manage)
    POST /rewards/{id}/redeem    spend points (waste.own); 409 not enough points or out of stock
    GET  /stats?community=&days= participation and accuracy per community (public aggregates)
    GET  /trends?community=&weeks= the same per week, for trends (public aggregates)
    GET  /collections?status=&district=   collection tasks from full bins (waste.collect, sanitation)
    POST /collections/{id}/emptied        the crew emptied the bin (waste.collect); 409 already emptied
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response, read_json_object
from cityos.hub.service import ENTITY_CHANGED
from cityos.livelihood.waste.collection import CollectionService
from cityos.livelihood.waste.service import WasteService
from cityos.security.api import request_tenant, require
from cityos.security.policy import Principal

router = APIRouter(prefix="/api/waste", tags=["waste sorting"])
routers: list[APIRouter] = [router]


def waste_of(request: Request) -> WasteService:
    service: WasteService = request.app.state.waste
    return service


@router.post("/cards", status_code=201)
async def register_card(request: Request, principal: Principal | None = Depends(require("waste.read"))) -> Response:
    body = await read_json_object(request)
    return json_response(await waste_of(request).register_card(principal, request_tenant(request, principal), body),
                         201)


@router.post("/deposits")
async def deposit(request: Request, principal: Principal | None = Depends(require("waste.deposit"))) -> Response:
    body = await read_json_object(request)
    view, created = await waste_of(request).deposit(principal, request_tenant(request, principal), body)
    return json_response(view, 201 if created else 200)


@router.post("/deposits/{deposit_id}/check")
async def check_deposit(request: Request, deposit_id: str,
                        principal: Principal | None = Depends(require("waste.deposit"))) -> Response:
    body = await read_json_object(request)
    correct = body.get("correct")
    if not isinstance(correct, bool):
        raise BadRequestData("correct must be true or false")
    return json_response(await waste_of(request).check_deposit(principal, request_tenant(request, principal),
                                                               deposit_id[:64], correct))


@router.get("/points")
async def points(request: Request, principal: Principal | None = Depends(require("waste.own"))) -> Response:
    return json_response(await waste_of(request).balance(principal, request_tenant(request, principal)))


@router.get("/deposits/mine")
async def my_deposits(request: Request, principal: Principal | None = Depends(require("waste.own"))) -> Response:
    return json_response(await waste_of(request).my_deposits(principal, request_tenant(request, principal)))


@router.get("/rewards")
async def list_rewards(request: Request, principal: Principal | None = Depends(require("waste.read"))) -> Response:
    return json_response(await waste_of(request).list_rewards(request_tenant(request, principal)))


@router.post("/rewards", status_code=201)
async def add_reward(request: Request, principal: Principal | None = Depends(require("waste.manage"))) -> Response:
    body = await read_json_object(request)
    return json_response(await waste_of(request).add_reward(principal, request_tenant(request, principal), body), 201)


@router.post("/rewards/{reward_id}/redeem")
async def redeem(request: Request, reward_id: str,
                 principal: Principal | None = Depends(require("waste.own"))) -> Response:
    return json_response(await waste_of(request).redeem(principal, request_tenant(request, principal),
                                                        reward_id[:64]))


@router.get("/stats")
async def stats(request: Request, community: str | None = Query(None, max_length=64),
                days: int = Query(30, ge=1, le=366),
                principal: Principal | None = Depends(require("waste.read"))) -> Response:
    return json_response(await waste_of(request).stats(request_tenant(request, principal), community, days))


@router.get("/trends")
async def trends(request: Request, community: str | None = Query(None, max_length=64),
                 weeks: int = Query(8, ge=1, le=26),
                 principal: Principal | None = Depends(require("waste.read"))) -> Response:
    return json_response(await waste_of(request).trends(request_tenant(request, principal), community, weeks))


@router.get("/collections")
async def collection_tasks(request: Request, status: str | None = Query(None, max_length=16),
                           district: str | None = Query(None, max_length=64),
                           principal: Principal | None = Depends(require("waste.collect"))) -> Response:
    collection: CollectionService = request.app.state.waste_collection
    return json_response(await collection.list_tasks(principal, request_tenant(request, principal), status,
                                                     district))


@router.post("/collections/{task_id}/emptied")
async def emptied(request: Request, task_id: str,
                  principal: Principal | None = Depends(require("waste.collect"))) -> Response:
    collection: CollectionService = request.app.state.waste_collection
    return json_response(await collection.mark_emptied(principal, request_tenant(request, principal),
                                                       task_id[:64]))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    app.state.waste = WasteService(app.state.engine, write_lock_of(app))
    collection = CollectionService(app.state.engine, write_lock_of(app))
    collection.bus = app.state.bus
    app.state.waste_collection = collection
    # Bins' fill levels arrive as hub changes of WasteContainer entities (IoT ingestion writes them).
    unsubscribe = app.state.bus.subscribe(ENTITY_CHANGED, collection.on_entity_changed)

    async def stop() -> None:
        unsubscribe()

    return stop
