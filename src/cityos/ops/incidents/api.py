"""HTTP API of ops.incidents (router and start-up).

    GET    /api/ops/incidents                 ?status=a,b&category&department&district&level&source&open=true
                                              &includeMerged=true&limit(1-500)&offset → {"total", "items"}
    POST   /api/ops/incidents                 IncidentIn (manual or 12345 hotline) → 201 {"outcome", "incident"}
    GET    /api/ops/incidents/routing         the routing table and merge settings
    GET    /api/ops/incidents/sla/policies    defaults + custom policies
    PUT    /api/ops/incidents/sla/policies    PolicyIn → the custom policy (sla.manage)
    DELETE /api/ops/incidents/sla/policies/{id}
    GET    /api/ops/incidents/reports/sla     ?by=department|category|district&from&to → compliance %, mean times
    GET    /api/ops/incidents/{id}            the incident with its timeline and merged reports
    GET    /api/ops/incidents/{id}/timeline
    GET    /api/ops/incidents/{id}/reporter   personal data of the reporter (audited; incident.act scope)
    POST   /api/ops/incidents/{id}/{action}   action ∈ dispatch accept arrive resolve close reopen; ActionIn
    POST   /api/ops/incidents/{id}/confirm    the reporter: {"satisfied": true} closes, false reopens
    POST   /api/ops/incidents/{id}/merge      {"into": "<id>"}; POST /{id}/split undoes it

Illegal transitions answer 409, unknown ids 404, bodies that do not parse 400.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from cityos.config import env_float
from cityos.core import clock
from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData
from cityos.ops.incidents.core import NewIncident, Plan, parse_id
from cityos.ops.incidents.listeners import Listeners
from cityos.ops.incidents.models import STATUSES, ActionIn, ConfirmIn, IncidentIn, MergeIn, PolicyIn, incidents
from cityos.ops.incidents.scheduled import start_loops
from cityos.ops.incidents.service import IncidentService
from cityos.security.api import current_principal, enforce, request_tenant, require
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource, Scope, role_of, scope_for
from cityos.security.service import Forbidden

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/ops/incidents", tags=["ops: incidents"])
routers: list[APIRouter] = [router]


def incidents_of(request: Request) -> IncidentService:
    service: IncidentService = request.app.state.ops_incidents
    return service


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _resource(tenant: str, view: dict[str, Any], owner: str | None = None) -> Resource:
    return Resource("incident", tenant, id=view["id"], department=view["department"], district=view["district"],
                    owner=owner)


def read_scope(principal: Principal | None) -> tuple[list[str] | None, str | None]:
    """(departments the caller may read, or None for all; reporter id for own-scope callers)."""
    scope = scope_for(role_of(principal), "incident.read")
    if principal is None or scope in (Scope.TENANT, Scope.ALL):
        return None, None
    if scope is Scope.OWN:
        return None, principal.id
    return sorted(principal.departments), None


async def _reporter_id(request: Request, tenant: str, incident_id: str) -> str | None:
    async with incidents_of(request).engine.connect() as conn:
        row = (await conn.execute(select(incidents.c.reporter_id).where(
            incidents.c.tenant == tenant, incidents.c.id == parse_id(incident_id)))).first()
    return row.reporter_id if row else None


async def _readable(request: Request, principal: Principal | None, incident_id: str,
                    timeline: bool = True) -> tuple[str, dict[str, Any]]:
    tenant = request_tenant(request, principal)
    view = await incidents_of(request).get(tenant, incident_id, timeline=timeline)
    owner = await _reporter_id(request, tenant, incident_id) if principal is not None and \
        scope_for(principal.role, "incident.read") is Scope.OWN else None
    await enforce(request, principal, "incident.read", _resource(tenant, view, owner))
    return tenant, view


# ---------------------------------------------------------------------- collection


@router.get("")
async def list_incidents(request: Request, principal: Principal | None = Depends(require("incident.read")),
                         status: str | None = Query(None, max_length=200),
                         category: str | None = Query(None, max_length=64),
                         department: str | None = Query(None, max_length=128),
                         district: str | None = Query(None, max_length=256),
                         level: str | None = Query(None, max_length=24),
                         source: str | None = Query(None, max_length=16),
                         open: bool = False, includeMerged: bool = False,
                         kind: str | None = Query(None, pattern="^(incident|maintenance)$",
                                                  description="incident: city incidents only; maintenance: only "
                                                              "device work orders (IT operations)"),
                         limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**31)) -> Response:
    tenant = request_tenant(request, principal)
    statuses = [s for s in status.split(",") if s] if status else None
    if statuses and any(s not in STATUSES for s in statuses):
        raise BadRequestData(f"status must be among {', '.join(STATUSES)}")
    departments_in, reporter_id = read_scope(principal)
    items, total = await incidents_of(request).search(
        tenant, departments_in=departments_in, reporter_id=reporter_id, status=statuses, category=category,
        department=department, district=district, level=level, source=source, open_only=open,
        include_merged=includeMerged, limit=limit, offset=offset, kind=kind)
    return _json({"total": total, "items": items})


@router.post("", status_code=201)
async def create_incident(request: Request, body: IncidentIn,
                          principal: Principal | None = Depends(require("incident.create"))) -> Response:
    tenant = request_tenant(request, principal)
    if body.source == "hotline" and body.caller is None:
        raise BadRequestData("a hotline entry needs the caller (name and/or phone)")
    reporter = {k: v for k, v in (body.caller.model_dump() if body.caller else {}).items() if v}
    new = NewIncident(category=body.category, title=body.title, description=body.description, source=body.source,
                      level=body.level, location=body.location, address=body.address, reporter=reporter or None)

    async def check(plan: Plan) -> None:
        await enforce(request, principal, "incident.create",
                      Resource("incident", tenant, department=plan.department, district=plan.district))

    created = await incidents_of(request).create(tenant, new, principal, check=check)
    return _json({"outcome": created.outcome, "incident": created.incident}, 201)


@router.get("/routing")
async def routing(request: Request, _principal: Principal | None = Depends(require("incident.read"))) -> Response:
    return _json(incidents_of(request).routing.to_json())


@router.get("/sla/policies")
async def list_policies(request: Request, principal: Principal | None = Depends(require("incident.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return _json([p.to_json() for p in await incidents_of(request).policies(tenant)])


@router.put("/sla/policies")
async def set_policy(request: Request, body: PolicyIn,
                     principal: Principal | None = Depends(require("sla.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    policy = await incidents_of(request).set_policy(tenant, body.category, body.level, body.responseMinutes,
                                                    body.resolutionMinutes, principal)
    return _json(policy)


@router.delete("/sla/policies/{policy_id}", status_code=204)
async def delete_policy(request: Request, policy_id: str,
                        principal: Principal | None = Depends(require("sla.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    await incidents_of(request).delete_policy(tenant, policy_id, principal)
    return Response(status_code=204)


def _moment(raw: str | None, name: str, default: datetime) -> datetime:
    if raw is None:
        return default
    try:
        return clock.parse_iso(raw)
    except ValueError as exc:
        raise BadRequestData(f"{name} must be an ISO 8601 date-time with a time zone") from exc


@router.get("/reports/sla")
async def sla_report(request: Request, principal: Principal | None = Depends(require("incident.read")),
                     by: str = Query("department", max_length=16),
                     start: str | None = Query(None, alias="from", max_length=40),
                     end: str | None = Query(None, alias="to", max_length=40)) -> Response:
    tenant = request_tenant(request, principal)
    now = clock.now()
    end_at = _moment(end, "to", now + timedelta(seconds=1))
    start_at = _moment(start, "from", end_at - timedelta(days=30))
    departments_in, reporter_id = read_scope(principal)
    if reporter_id is not None:
        raise Forbidden("SLA reports are for staff")
    return _json(await incidents_of(request).sla_report(tenant, by, start_at, end_at, departments_in))


# ---------------------------------------------------------------------- one incident


@router.get("/{incident_id}")
async def get_incident(request: Request, incident_id: str,
                       principal: Principal | None = Depends(require("incident.read"))) -> Response:
    _tenant, view = await _readable(request, principal, incident_id)
    return _json(view)


@router.get("/{incident_id}/timeline")
async def get_timeline(request: Request, incident_id: str,
                       principal: Principal | None = Depends(require("incident.read"))) -> Response:
    _tenant, view = await _readable(request, principal, incident_id)
    return _json(view["timeline"])


@router.get("/{incident_id}/reporter")
async def get_reporter(request: Request, incident_id: str,
                       principal: Principal | None = Depends(require("incident.act"))) -> Response:
    tenant = request_tenant(request, principal)
    service = incidents_of(request)
    view = await service.get(tenant, incident_id)
    await enforce(request, principal, "incident.act", _resource(tenant, view))
    data = await service.reporter(tenant, incident_id)
    await request.app.state.security.service.record(AuditEvent.of(
        principal, "incident.reporter.read", f"incident:{view['id']}", tenant=tenant, fields=sorted(data)))
    return _json(data)


@router.post("/{incident_id}/confirm")
async def confirm(request: Request, incident_id: str, body: ConfirmIn,
                  principal: Principal | None = Depends(current_principal)) -> Response:
    tenant = request_tenant(request, principal)
    service = incidents_of(request)
    view = await service.get(tenant, incident_id)
    owner = await _reporter_id(request, tenant, incident_id)
    if principal is None:
        await enforce(request, principal, "incident.read", _resource(tenant, view, owner))
    if principal is None or owner is None or owner != principal.id:
        await request.app.state.security.service.record(AuditEvent.of(
            principal, "incident.confirm", f"incident:{view['id']}", "denied", tenant=tenant,
            reason="not the reporter"))
        raise Forbidden("only the reporter confirms a resolution; staff use /close or /reopen")
    return _json(await service.confirm(tenant, incident_id, principal, body.satisfied, body.note))


@router.post("/{incident_id}/merge")
async def merge(request: Request, incident_id: str, body: MergeIn,
                principal: Principal | None = Depends(require("incident.act"))) -> Response:
    tenant = request_tenant(request, principal)
    service = incidents_of(request)
    for ident in (incident_id, body.into):
        await enforce(request, principal, "incident.act", _resource(tenant, await service.get(tenant, ident)))
    return _json(await service.merge(tenant, incident_id, body.into, principal))


@router.post("/{incident_id}/split")
async def split(request: Request, incident_id: str,
                principal: Principal | None = Depends(require("incident.act"))) -> Response:
    tenant = request_tenant(request, principal)
    service = incidents_of(request)
    await enforce(request, principal, "incident.act", _resource(tenant, await service.get(tenant, incident_id)))
    return _json(await service.split(tenant, incident_id, principal))


@router.post("/{incident_id}/{action}")
async def act(request: Request, incident_id: str, action: str, body: ActionIn | None = None,
              principal: Principal | None = Depends(require("incident.act"))) -> Response:
    tenant = request_tenant(request, principal)
    service = incidents_of(request)
    view = await service.get(tenant, incident_id)
    await enforce(request, principal, "incident.act", _resource(tenant, view))
    body = body or ActionIn()
    if body.department is not None and action != "dispatch":
        raise BadRequestData("department is only for dispatch")
    return _json(await service.act(tenant, incident_id, action, principal, body.note, body.department))


# ---------------------------------------------------------------------- start-up


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Start this domain's services and background work on `app`; returns the shutdown function."""
    hub = app.state.hub
    security = app.state.security.service
    service = IncidentService(app.state.engine, hub.service, hub.resolver.core, app.state.bus, security,
                              write_lock=write_lock_of(app),
                              auto_close_hours=env_float("CITYOS_INCIDENT_AUTO_CLOSE_HOURS", 72.0))
    app.state.ops_incidents = service
    listeners = Listeners(service, app.state.bus)
    try:
        await listeners.reconcile()
    except Exception:
        log.exception("reconciling incidents from Alert entities failed")
    stop_loops = start_loops(service)

    async def stop() -> None:
        listeners.close()
        await stop_loops()
        service.close()

    return stop
