"""HTTP API of services.ratings (好差评 and 整改).

    POST /api/services/ratings                    {"applicationId", "score": 1-5, "comment"?} by the applicant
                                                  → 201 the rating (+ rectificationId when 1–2);
                                                  400 bad body, 401, 403 not the applicant, 404 unknown
                                                  application, 409 not completed or already rated
    GET  /api/services/ratings?applicationId=     the rating of one's own application (404 when none)
    GET  /api/services/ratings/summary            ?by=service|department (supervision.read; department-
                                                  scoped roles see their departments) → {by, overall, items}
    GET  /api/services/rectifications             ?department&status=open|replied|overdue&limit&offset
                                                  (rectification.act or supervision.read)
    GET  /api/services/rectifications/{id}
    POST /api/services/rectifications/{id}/reply  {"reply"} rectification.act in the task's department
                                                  (audited) → the task; 409 when already replied
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.responses import json_response, read_json_object
from cityos.security.api import client_ip, current_principal, enforce, request_tenant, require
from cityos.security.policy import Principal, Resource, Scope, authorize, role_of, scope_for
from cityos.security.service import Unauthorized
from cityos.services.ratings.service import RatingService, validate_comment, validate_score

MAX_BODY = 16 * 1024
MAX_ID = 128

router = APIRouter(prefix="/api/services", tags=["services: ratings"])
routers: list[APIRouter] = [router]


def ratings_of(request: Request) -> RatingService:
    service: RatingService = request.app.state.ratings
    return service






async def _who(request: Request) -> tuple[Principal | None, str]:
    principal = await current_principal(request)
    return principal, request_tenant(request, principal)


async def _gate(request: Request, principal: Principal | None, tenant: str, action: str) -> None:
    """401 / 403 (audited) when the caller's role may never perform `action`."""
    if scope_for(role_of(principal), action) is Scope.NONE:
        await enforce(request, principal, action, Resource(action.split(".")[0], tenant))


# ---------------------------------------------------------------------------------- ratings


@router.post("/ratings", status_code=201)
async def submit_rating(request: Request) -> Response:
    principal, tenant = await _who(request)
    await _gate(request, principal, tenant, "rating.submit")
    body = await read_json_object(request, MAX_BODY)
    application_id = body.get("applicationId")
    if not isinstance(application_id, str) or not application_id or len(application_id) > MAX_ID:
        raise BadRequestData(f"applicationId must be a non-empty string of at most {MAX_ID} characters")
    score = validate_score(body.get("score"))
    comment = validate_comment(body.get("comment"))
    service = ratings_of(request)
    application = await service.application(tenant, application_id)
    await enforce(request, principal, "rating.submit",
                  Resource("application", tenant, id=application_id, department=application["department"],
                           owner=application["applicant"]))
    assert principal is not None
    return json_response(await service.submit(tenant, application_id, principal.id, score, comment), 201)


@router.get("/ratings")
async def rating_of_application(request: Request, application_id: str = Query(..., alias="applicationId",
                                                                             min_length=1, max_length=MAX_ID)
                                ) -> Response:
    principal, tenant = await _who(request)
    if principal is None:
        raise Unauthorized("this needs a bearer token")
    service = ratings_of(request)
    application = await service.application(tenant, application_id)
    await enforce(request, principal, "application.read",
                  Resource("application", tenant, id=application_id, department=application["department"],
                           owner=application["applicant"]))
    rating = await service.rating_of(tenant, application_id)
    if rating is None:
        raise ResourceNotFound(f"application {application_id} has not been rated")
    return json_response(rating)


def _departments(principal: Principal | None, *actions: str) -> frozenset[str] | None:
    """None when the caller sees the whole tenant for one of `actions`, else its departments."""
    scopes = {scope_for(role_of(principal), action) for action in actions}
    if scopes & {Scope.TENANT, Scope.ALL}:
        return None
    return principal.departments if principal is not None else frozenset()


@router.get("/ratings/summary")
async def summary(request: Request, by: str = Query("department"),
                  principal: Principal | None = Depends(require("supervision.read"))) -> Response:
    if by not in ("service", "department"):
        raise BadRequestData("by must be 'service' or 'department'")
    tenant = request_tenant(request, principal)
    result = await ratings_of(request).satisfaction(tenant, _departments(principal, "supervision.read"))
    items = result["byService"] if by == "service" else result["byDepartment"]
    return json_response({"by": by, "overall": result["overall"], "items": items, "target": {"satisfaction": 95.0}})


# ---------------------------------------------------------------------------------- rectifications

_RECTIFY_READ = ("rectification.act", "supervision.read")


async def _rectification_reader(request: Request) -> tuple[Principal, str]:
    principal, tenant = await _who(request)
    if all(scope_for(role_of(principal), a) is Scope.NONE for a in _RECTIFY_READ):
        await enforce(request, principal, "supervision.read", Resource("rectification", tenant))
    assert principal is not None
    return principal, tenant


@router.get("/rectifications")
async def list_rectifications(request: Request, department: str | None = Query(None, max_length=MAX_ID),
                              status: str | None = Query(None, pattern="^(open|replied|overdue)$"),
                              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**31)
                              ) -> Response:
    principal, tenant = await _rectification_reader(request)
    departments = _departments(principal, *_RECTIFY_READ)
    if department is not None and departments is not None and department not in departments:
        await enforce(request, principal, "supervision.read",
                      Resource("rectification", tenant, department=department))
    return json_response(await ratings_of(request).rectifications(tenant, department=department, status=status,
                                                          departments=departments, limit=limit, offset=offset))


@router.get("/rectifications/{rectification_id}")
async def get_rectification(request: Request, rectification_id: str) -> Response:
    principal, tenant = await _rectification_reader(request)
    task = await ratings_of(request).rectification(tenant, rectification_id[:MAX_ID])
    resource = Resource("rectification", tenant, id=task["id"], department=task["department"])
    if not any(authorize(principal, action, resource) for action in _RECTIFY_READ):
        await enforce(request, principal, "rectification.act", resource)
    return json_response(task)


@router.post("/rectifications/{rectification_id}/reply")
async def reply(request: Request, rectification_id: str,
                principal: Principal | None = Depends(require("rectification.act"))) -> Response:
    tenant = request_tenant(request, principal)
    body = await read_json_object(request, MAX_BODY)
    service = ratings_of(request)
    task = await service.rectification(tenant, rectification_id[:MAX_ID])
    await enforce(request, principal, "rectification.act",
                  Resource("rectification", tenant, id=task["id"], department=task["department"]))
    return json_response(await service.reply(tenant, task["id"], body.get("reply"), principal,  # type: ignore[arg-type]
                                     ip=client_ip(request)))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.ratings` and listen for completed applications; returns the shutdown function."""
    notifier = getattr(app.state, "notifier", None)
    service = RatingService(app.state.engine, app.state.bus, audit=app.state.security.service.record,
                            notify=notifier.notify if notifier is not None else None,
                            write_lock=write_lock_of(app))
    service.subscribe()
    app.state.ratings = service

    async def stop() -> None:
        service.unsubscribe()

    return stop
