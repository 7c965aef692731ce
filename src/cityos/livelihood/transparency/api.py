"""HTTP API of spending transparency (阳光政务), `/api/transparency`.

    PUT /departments/{department}/lines   [{"year", "category", "budget", "spent"}, …] the department's own
                                          (transparency.publish); a line with the same (year, category) replaces
                                          the old one; the totals are published to the hub as `BudgetExecution`
    GET /totals?year=                     budget, spending and execution rate per department and year (public)
    GET /departments/{department}/lines?year=   the department's lines (public)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.core.responses import json_response, read_body
from cityos.livelihood.transparency.service import TransparencyService
from cityos.security.api import request_tenant, require
from cityos.security.classes import class_registry
from cityos.security.policy import Principal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/transparency", tags=["spending transparency"])
routers: list[APIRouter] = [router]


def transparency_of(request: Request) -> TransparencyService:
    service: TransparencyService = request.app.state.transparency
    return service


@router.put("/departments/{department}/lines")
async def publish_lines(request: Request, department: str,
                        principal: Principal | None = Depends(require("transparency.publish"))) -> Response:
    try:
        body = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as exc:
        raise BadRequestData("the body is not JSON") from exc
    return json_response(await transparency_of(request).publish_lines(
        principal, request_tenant(request, principal), department[:129], body))


@router.get("/totals")
async def totals(request: Request, year: int | None = Query(None, ge=2000, le=2100),
                 principal: Principal | None = Depends(require("transparency.read"))) -> Response:
    return json_response(await transparency_of(request).totals(principal, request_tenant(request, principal), year))


@router.get("/departments/{department}/lines")
async def lines(request: Request, department: str, year: int | None = Query(None, ge=2000, le=2100),
                principal: Principal | None = Depends(require("transparency.read"))) -> Response:
    return json_response(await transparency_of(request).lines(principal, request_tenant(request, principal),
                                                              department[:129], year))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    hub = app.state.hub
    # Budgets are public by law (预算公开): the whole entity is of the public class, readable without a token.
    class_registry(app).declare("BudgetExecution", {}, "public", department=None)

    async def publish(tenant: str, entities: list[dict[str, Any]]) -> None:
        # Each department's budget entities are written as that department's transparency system, so a
        # declared authoritative source (一数一源) of BudgetExecution's fields refuses or flags them.
        by_department: dict[str, list[dict[str, Any]]] = {}
        for entity in entities:
            by_department.setdefault(str(entity.get("department", {}).get("value", "")), []).append(entity)
        for department, group in by_department.items():
            with hub.service.as_source(tenant, department or None, "transparency"):
                result = await hub.service.batch_write(tenant, group, hub.resolver.core, "upsert", set())
            for error in result.errors:
                log.warning("budget entity %s not published to the hub: %s", error.get("entityId"),
                            error.get("error", {}).get("detail"))

    app.state.transparency = TransparencyService(app.state.engine, write_lock_of(app), publish)

    async def stop() -> None:
        return None

    return stop
