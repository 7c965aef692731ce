"""HTTP API of the livelihood domain (一网协同). Thin: the services check access and do the work.

    POST /api/livelihood/records                        a department's record (livelihood.record.publish)
    POST /api/livelihood/subjects/{id}/life-event       re-evaluate one person or company now
    GET  /api/livelihood/profiles/{id}                  a profile, masked by data class (livelihood.profile.read)
    GET  /api/livelihood/policies[/{id}]                the catalogue (public)
    PUT  /api/livelihood/policies/{id}                  a new version; everyone is re-evaluated (policy.manage)
    GET  /api/livelihood/me/services                    "services for me" with why (own)
    POST /api/livelihood/me/confirm/{policyId}          one click → a pre-filled application (own)
    POST /api/livelihood/me/decline/{policyId}          "not for me": decline one invitation (own; a refusal)
    PUT  /api/livelihood/me/opt-out                     {"optOut": true|false}
    POST /api/livelihood/me/payouts/{id}/objection      {"reason": "..."} within the objection window
    GET  /api/livelihood/payouts                        ?status&department (payout.read)
    POST /api/livelihood/payouts/{id}/approve|reject    a supervisor's decision above the threshold
    POST /api/livelihood/payouts/settle                 pay what is due now (also run by the schedule)
    GET  /api/livelihood/uptake                         per policy: eligible, notified, confirmed, opted out, paid
    …/care/…                                            elderly care (`eldercare/api.py`)
    …/me/policy-match, …/finance/…                      companies: policy calculator, financing (`enterprise/api.py`)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.config import env_float
from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, TooLarge
from cityos.core.responses import json_response
from cityos.core.tasks import StepGuard
from cityos.livelihood.eldercare import api as care_api
from cityos.livelihood.enterprise import api as enterprise_api
from cityos.livelihood.enterprise.financing import FinancingService
from cityos.livelihood.proactive.service import (
    APPLICATION_CHANGED,
    APPLICATION_REFUSED,
    ProactiveService,
    policy_view,
)
from cityos.livelihood.profiles.service import view_facts
from cityos.security.api import current_principal, enforce, request_tenant, require
from cityos.security.policy import Principal, Resource, Scope, scope_for
from cityos.security.service import Unauthorized

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/livelihood", tags=["livelihood"])
routers: list[APIRouter] = [router, care_api.router, enterprise_api.router]
MAX_BODY = 256 * 1024


def service_of(request: Request) -> ProactiveService:
    found: ProactiveService = request.app.state.livelihood
    return found


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise TooLarge("the body is larger than 256 KiB")
    try:
        return orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"malformed JSON: {exc}") from exc


async def _me(request: Request, action: str) -> tuple[Principal, str]:
    principal = await current_principal(request)
    if principal is None:
        raise Unauthorized(f"{action} needs a bearer token")
    tenant = request_tenant(request, principal)
    await enforce(request, principal, action, Resource("livelihood", tenant, owner=principal.id))
    return principal, tenant


@router.post("/records", status_code=201)
async def publish_record(request: Request,
                         principal: Principal | None = Depends(require("livelihood.record.publish"))) -> Response:
    tenant = request_tenant(request, principal)

    async def check(action: str, department: Any) -> None:
        await enforce(request, principal, action, Resource("record", tenant, department=str(department)))

    result = await service_of(request).publish(principal, tenant, await json_body(request), check)
    return json_response(result, status=201)


@router.post("/subjects/{subject_id}/life-event")
async def life_event(subject_id: str, request: Request,
                     principal: Principal | None = Depends(require("livelihood.record.publish"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await service_of(request).life_event(tenant, subject_id[:64]))


@router.get("/profiles/{subject_id}")
async def profile(subject_id: str, request: Request,
                  principal: Principal | None = Depends(require("livelihood.profile.read"))) -> Response:
    tenant = request_tenant(request, principal)
    svc = service_of(request)
    async with svc.engine.connect() as conn:
        subject = await svc.store.subject(conn, tenant, subject_id[:64])
        if subject is None:
            from cityos.core.errors import ResourceNotFound

            raise ResourceNotFound(f"unknown person or company {subject_id[:64]!r}")
        await enforce(request, principal, "livelihood.profile.read",
                      Resource("profile", tenant, id=subject.id, district=subject.district))
        facts = await svc.store.facts(conn, tenant, subject.id)
        flagged = await svc.store.flagged(conn, tenant, subject.id)
    fields = view_facts(subject.kind, facts, principal, own=False)
    await svc.audit.record(_audit(principal, "livelihood.profile.read", f"subject:{subject.id}", tenant,
                                  fields=sorted(fields)))
    return json_response({"id": subject.id, "kind": subject.kind, "fields": fields, "flagged": flagged})


def _audit(principal: Principal | None, action: str, resource: str, tenant: str, **detail: Any) -> Any:
    from cityos.security.audit import AuditEvent

    return AuditEvent.of(principal, action, resource, tenant=tenant, **detail)


@router.get("/policies")
async def policies(request: Request, audience: str | None = Query(None, pattern="^(person|company)$"),
                   principal: Principal | None = Depends(require("livelihood.policy.read"))) -> Response:
    tenant = request_tenant(request, principal)
    items = [policy_view(p) for p in await service_of(request).catalogue(tenant)
             if audience is None or p.audience == audience]
    return json_response({"items": items})


@router.get("/policies/{policy_id}")
async def one_policy(policy_id: str, request: Request,
                     principal: Principal | None = Depends(require("livelihood.policy.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(policy_view(await service_of(request).policy(tenant, policy_id[:64])))


@router.put("/policies/{policy_id}")
async def put_policy(policy_id: str, request: Request,
                     principal: Principal | None = Depends(require("livelihood.policy.manage"))) -> Response:
    assert principal is not None
    tenant = request_tenant(request, principal)
    body = await json_body(request)
    department = body.get("department") if isinstance(body, dict) else None
    await enforce(request, principal, "livelihood.policy.manage",
                  Resource("policy", tenant, id=policy_id[:64], department=str(department)))
    return json_response(await service_of(request).put_policy(principal, tenant, policy_id[:64], body))


@router.get("/me/services")
async def services_for_me(request: Request) -> Response:
    principal, tenant = await _me(request, "livelihood.services.read")
    return json_response(await service_of(request).services_for(tenant, principal))


@router.post("/me/confirm/{policy_id}")
async def confirm(policy_id: str, request: Request) -> Response:
    principal, tenant = await _me(request, "livelihood.confirm")
    return json_response(await service_of(request).confirm(tenant, principal, policy_id[:64]))


@router.post("/me/decline/{policy_id}")
async def decline(policy_id: str, request: Request) -> Response:
    principal, tenant = await _me(request, "livelihood.confirm")  # the resident's own answer, as a confirmation
    return json_response(await service_of(request).decline(tenant, principal, policy_id[:64]))


@router.put("/me/opt-out")
async def opt_out(request: Request) -> Response:
    principal, tenant = await _me(request, "livelihood.confirm")
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("optOut"), bool):
        raise BadRequestData('the body is {"optOut": true|false}')
    return json_response(await service_of(request).opt_out(tenant, principal, body["optOut"]))


@router.post("/me/payouts/{payout_id}/objection")
async def objection(payout_id: str, request: Request) -> Response:
    principal, tenant = await _me(request, "livelihood.confirm")
    body = await json_body(request)
    reason = body.get("reason") if isinstance(body, dict) else None
    return json_response(await service_of(request).object(tenant, principal, payout_id[:32], reason))


def _departments(principal: Principal | None, action: str) -> frozenset[str] | None:
    """None: the whole tenant; else the departments the caller's department scope reaches."""
    if principal is None or scope_for(principal.role, action) is not Scope.DEPARTMENT:
        return None
    return principal.departments


@router.get("/payouts")
async def payouts(request: Request, status: str | None = Query(None, max_length=20),
                  department: str | None = Query(None, max_length=64), limit: int = Query(100, ge=1, le=1000),
                  principal: Principal | None = Depends(require("livelihood.payout.read"))) -> Response:
    tenant = request_tenant(request, principal)
    reach = _departments(principal, "livelihood.payout.read")
    if reach is not None:
        if department is None and len(reach) == 1:
            department = next(iter(reach))
        await enforce(request, principal, "livelihood.payout.read",
                      Resource("payout", tenant, department=department or "?"))
    return json_response(await service_of(request).payouts(tenant, status, department, limit))


@router.post("/payouts/settle")
async def settle(request: Request,
                 principal: Principal | None = Depends(require("livelihood.payout.approve"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response({"paid": await service_of(request).settle(tenant)})


@router.post("/payouts/{payout_id}/{verb}")
async def decide_payout(payout_id: str, verb: str, request: Request,
                        principal: Principal | None = Depends(require("livelihood.payout.approve"))) -> Response:
    assert principal is not None
    if verb not in ("approve", "reject"):
        raise BadRequestData("approve or reject")
    tenant = request_tenant(request, principal)
    svc = service_of(request)
    row = await svc.payout_row(tenant, payout_id[:32])
    await enforce(request, principal, "livelihood.payout.approve",
                  Resource("payout", tenant, id=row.id, department=row.department))
    return json_response(await svc.approve(tenant, principal, row.id, verb == "approve"))


@router.get("/uptake")
async def uptake(request: Request,
                 principal: Principal | None = Depends(require("livelihood.uptake.read"))) -> Response:
    tenant = request_tenant(request, principal)
    return json_response(await service_of(request).uptake(tenant, _departments(principal, "livelihood.uptake.read")))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.livelihood` (and the care service) and start the payout and escalation loop."""
    security = app.state.security
    lock = write_lock_of(app)
    service = ProactiveService(app.state.engine, security.service.keyring, security.audit, app.state.bus,
                               getattr(app.state, "notifier", None), lock)
    app.state.livelihood = service
    app.state.financing = FinancingService(service)
    care = care_api.build(app, lock)
    interval = env_float("CITYOS_LIVELIHOOD_INTERVAL_SECONDS", 30.0)
    steps = StepGuard("livelihood schedule")

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await steps.step(service.settle())
                await steps.step(care.sweep())
                await steps.step(service.republish_pending())
            except Exception as exc:  # a failed round is retried at the next one
                log.error("livelihood schedule round failed: %r", exc)

    task = asyncio.create_task(loop(), name="cityos-livelihood") if interval > 0 else None
    unsubscribe = [app.state.bus.subscribe(APPLICATION_CHANGED, service.on_application_changed),
                   app.state.bus.subscribe(APPLICATION_REFUSED, service.on_application_refused)]

    async def stop() -> None:
        for off in unsubscribe:
            off()
        care.close()
        await steps.stop([task])

    return stop
