"""HTTP API of ops.rules (router and start-up).

Rules (`rule.read` to read, `rule.manage` to write; a dept_admin only for rules of its department):

    GET    /api/ops/rules                     ?enabled&type&department&severity&limit&offset → {total, items}
    POST   /api/ops/rules                     JSON or YAML rule document → 201 (version 1)
    GET    /api/ops/rules/schema              the JSON Schema of a rule document
    POST   /api/ops/rules/validate            → the normalised document, or 400 saying what is wrong
    POST   /api/ops/rules/install-defaults    → {"created": [ids]} (idempotent)
    GET    /api/ops/rules/{id}
    PUT    /api/ops/rules/{id}                a new version (optional `If-Match: <version>` → 409 if stale)
    DELETE /api/ops/rules/{id}                204; its open alarms are cleared; 409 if another rule refers to it
    POST   /api/ops/rules/{id}/enable | /disable   a new version
    GET    /api/ops/rules/{id}/versions       every version; GET …/versions/{n}

Alarms (`alarm.read`, `alarm.act`):

    GET    /api/ops/alarms                    ?status=active|acknowledged|cleared|open&severity&type&district
                                              &department&ruleId&entityId&limit&offset → {total, items}
    GET    /api/ops/alarms/{id}
    POST   /api/ops/alarms/{id}/acknowledge   active → acknowledged (409 otherwise)
    POST   /api/ops/alarms/{id}/clear         optional {"reason": "..."}; → cleared (409 if already cleared)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, TooLarge
from cityos.ops.rules import spec
from cityos.ops.rules.service import DEVICE_TOPICS, RulesService, RulesSettings
from cityos.security.api import client_ip, enforce, request_tenant, require, security_of
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource

MAX_INT = 2**53

router = APIRouter(prefix="/api/ops", tags=["ops rules and alarms"])


def rules_of(request: Request) -> RulesService:
    service: RulesService = request.app.state.ops_rules
    return service


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _actor(principal: Principal | None) -> str:
    return principal.label if principal is not None else "anonymous"


async def _document(request: Request) -> Any:
    declared = request.headers.get("Content-Length")
    if declared and declared.isdecimal() and int(declared) > spec.MAX_BODY_BYTES:
        raise TooLarge(f"the body is larger than {spec.MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if not raw.strip():
        raise BadRequestData("the body is empty; send a rule document as JSON or YAML")
    return spec.parse_body(raw, request.headers.get("Content-Type"))


async def _audit(request: Request, principal: Principal | None, action: str, resource: str, tenant: str,
                 **detail: Any) -> None:
    await security_of(request).service.record(AuditEvent.of(principal, action, resource, ip=client_ip(request),
                                                            tenant=tenant, **detail))


async def _may_manage(request: Request, principal: Principal | None, tenant: str, rule_id: str | None,
                      department: Any) -> None:
    await enforce(request, principal, "rule.manage",
                  Resource("rule", tenant, id=rule_id, department=department if isinstance(department, str) else None))


def _limit(request: Request, limit: int) -> int:
    return min(limit, request.app.state.settings.max_page_size, 1000)


# ---------------------------------------------------------------------- rules


@router.get("/rules/schema")
async def rule_schema(_principal: Principal | None = Depends(require("rule.read"))) -> Response:
    return _json(spec.SCHEMA)


@router.post("/rules/validate")
async def validate_rule(request: Request, principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    return _json(await rules_of(request).validate(tenant, await _document(request)))


@router.post("/rules/install-defaults")
async def install_defaults(request: Request,
                           principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    await _may_manage(request, principal, tenant, None, None)
    created = await rules_of(request).install_defaults(tenant, _actor(principal))
    await _audit(request, principal, "rule.install_defaults", "rule:*", tenant, created=created)
    return _json({"created": created})


@router.get("/rules")
async def list_rules(request: Request, enabled: bool | None = None, type: str | None = None,
                     department: str | None = None, severity: str | None = None,
                     limit: int = Query(100, ge=1, le=MAX_INT), offset: int = Query(0, ge=0, le=MAX_INT),
                     principal: Principal | None = Depends(require("rule.read"))) -> Response:
    if severity is not None and severity not in spec.SEVERITIES:
        raise BadRequestData(f"severity must be one of {', '.join(spec.SEVERITIES)}")
    tenant = request_tenant(request, principal)
    limit = _limit(request, limit)
    items, total = await rules_of(request).list_rules(tenant, enabled=enabled, entity_type=type,
                                                      department=department, severity=severity, limit=limit,
                                                      offset=offset)
    return _json({"total": total, "limit": limit, "offset": offset, "items": items})


@router.post("/rules", status_code=201)
async def create_rule(request: Request, principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    doc = await _document(request)
    if isinstance(doc, dict):
        await _may_manage(request, principal, tenant, doc.get("id"), doc.get("department"))
    rule = await rules_of(request).create_rule(tenant, doc, _actor(principal))
    await _audit(request, principal, "rule.create", f"rule:{rule['id']}", tenant, version=rule["version"])
    return _json(rule, 201, {"Location": f"/api/ops/rules/{rule['id']}"})


@router.get("/rules/{rule_id}")
async def get_rule(request: Request, rule_id: str,
                   principal: Principal | None = Depends(require("rule.read"))) -> Response:
    return _json(await rules_of(request).get_rule(request_tenant(request, principal), rule_id))


def _if_match(request: Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip().strip('"')
    if not text.isdecimal():
        raise BadRequestData("If-Match must be the rule's version number")
    return int(text)


@router.put("/rules/{rule_id}")
async def update_rule(request: Request, rule_id: str,
                      principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    service = rules_of(request)
    current = await service.get_rule(tenant, rule_id)
    await _may_manage(request, principal, tenant, rule_id, current.get("department"))
    doc = await _document(request)
    if isinstance(doc, dict) and doc.get("department") != current.get("department"):
        await _may_manage(request, principal, tenant, rule_id, doc.get("department"))
    rule = await service.update_rule(tenant, rule_id, doc, _actor(principal), _if_match(request))
    await _audit(request, principal, "rule.update", f"rule:{rule_id}", tenant, version=rule["version"])
    return _json(rule)


@router.delete("/rules/{rule_id}", status_code=204)
async def delete_rule(request: Request, rule_id: str,
                      principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    service = rules_of(request)
    current = await service.get_rule(tenant, rule_id)
    await _may_manage(request, principal, tenant, rule_id, current.get("department"))
    await service.delete_rule(tenant, rule_id, _actor(principal))
    await _audit(request, principal, "rule.delete", f"rule:{rule_id}", tenant)
    return Response(status_code=204)


async def _toggle(request: Request, rule_id: str, principal: Principal | None, enabled: bool) -> Response:
    tenant = request_tenant(request, principal)
    service = rules_of(request)
    current = await service.get_rule(tenant, rule_id)
    await _may_manage(request, principal, tenant, rule_id, current.get("department"))
    rule = await service.set_enabled(tenant, rule_id, enabled, _actor(principal))
    await _audit(request, principal, "rule.enable" if enabled else "rule.disable", f"rule:{rule_id}", tenant,
                 version=rule["version"])
    return _json(rule)


@router.post("/rules/{rule_id}/enable")
async def enable_rule(request: Request, rule_id: str,
                      principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    return await _toggle(request, rule_id, principal, True)


@router.post("/rules/{rule_id}/disable")
async def disable_rule(request: Request, rule_id: str,
                       principal: Principal | None = Depends(require("rule.manage"))) -> Response:
    return await _toggle(request, rule_id, principal, False)


@router.get("/rules/{rule_id}/versions")
async def rule_versions(request: Request, rule_id: str,
                        principal: Principal | None = Depends(require("rule.read"))) -> Response:
    return _json(await rules_of(request).versions(request_tenant(request, principal), rule_id))


@router.get("/rules/{rule_id}/versions/{version}")
async def rule_version(request: Request, rule_id: str, version: int = Path(ge=1, le=MAX_INT),
                       principal: Principal | None = Depends(require("rule.read"))) -> Response:
    return _json(await rules_of(request).version(request_tenant(request, principal), rule_id, version))


# ---------------------------------------------------------------------- alarms

STATUS_FILTERS = ("active", "acknowledged", "cleared", "open")


@router.get("/alarms")
async def list_alarms(request: Request, status: str | None = None, severity: str | None = None,
                      type: str | None = None, district: str | None = None,
                      department: str | None = None, ruleId: str | None = None,
                      entityId: str | None = None,
                      limit: int = Query(100, ge=1, le=MAX_INT), offset: int = Query(0, ge=0, le=MAX_INT),
                      principal: Principal | None = Depends(require("alarm.read"))) -> Response:
    if status is not None and status not in STATUS_FILTERS:
        raise BadRequestData(f"status must be one of {', '.join(STATUS_FILTERS)}")
    if severity is not None and severity not in spec.SEVERITIES:
        raise BadRequestData(f"severity must be one of {', '.join(spec.SEVERITIES)}")
    tenant = request_tenant(request, principal)
    limit = _limit(request, limit)
    items, total = await rules_of(request).list_alarms(
        tenant, status=status, severity=severity, entity_type=type, district=district, department=department,
        rule_id=ruleId, entity_id=entityId, limit=limit, offset=offset)
    return _json({"total": total, "limit": limit, "offset": offset, "items": items})


@router.get("/alarms/{alarm_id}")
async def get_alarm(request: Request, alarm_id: int = Path(ge=1, le=MAX_INT),
                    principal: Principal | None = Depends(require("alarm.read"))) -> Response:
    return _json(await rules_of(request).get_alarm(request_tenant(request, principal), alarm_id))


async def _may_act(request: Request, principal: Principal | None, alarm_id: int) -> tuple[str, RulesService]:
    tenant = request_tenant(request, principal)
    service = rules_of(request)
    alarm = await service.get_alarm(tenant, alarm_id)
    await enforce(request, principal, "alarm.act", Resource("alarm", tenant, id=str(alarm_id),
                                                            department=alarm["department"],
                                                            district=alarm["district"]))
    return tenant, service


@router.post("/alarms/{alarm_id}/acknowledge")
async def acknowledge_alarm(request: Request, alarm_id: int = Path(ge=1, le=MAX_INT),
                            principal: Principal | None = Depends(require("alarm.act"))) -> Response:
    tenant, service = await _may_act(request, principal, alarm_id)
    alarm = await service.acknowledge(tenant, alarm_id, _actor(principal))
    await _audit(request, principal, "alarm.acknowledge", f"alarm:{alarm_id}", tenant)
    return _json(alarm)


@router.post("/alarms/{alarm_id}/clear")
async def clear_alarm(request: Request, alarm_id: int = Path(ge=1, le=MAX_INT),
                      principal: Principal | None = Depends(require("alarm.act"))) -> Response:
    raw = await request.body()
    reason: str | None = None
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequestData(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or set(body) - {"reason"} or not isinstance(body.get("reason", ""), str):
            raise BadRequestData('the body must be {"reason": "<text>"} (or empty)')
        reason = body.get("reason")
    tenant, service = await _may_act(request, principal, alarm_id)
    alarm = await service.clear(tenant, alarm_id, _actor(principal), reason)
    await _audit(request, principal, "alarm.clear", f"alarm:{alarm_id}", tenant)
    return _json(alarm)


routers: list[APIRouter] = [router]


# ---------------------------------------------------------------------- start-up


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return max(0.05, float(raw)) if raw else default
    except ValueError:
        return default


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.ops_rules`, subscribe to the bus and start the timer loop; returns the shutdown function."""
    hub = app.state.hub
    core = hub.resolver.core
    settings = RulesSettings(tick_seconds=_env_seconds("CITYOS_RULES_TICK_SECONDS", 5.0),
                             flush_seconds=_env_seconds("CITYOS_RULES_FLUSH_SECONDS", 1.0),
                             resync_seconds=_env_seconds("CITYOS_RULES_RESYNC_SECONDS", 30.0))
    service = RulesService(app.state.engine, hub.service, app.state.bus, core.expand, core.compact, core, settings)
    app.state.ops_rules = service
    await service.reload()
    bus = app.state.bus
    unsubscribe = [bus.subscribe("hub.entity.changed", service.on_entity_changed, group="rules")]
    unsubscribe += [bus.subscribe(topic, service.on_device_event, group="rules") for topic in DEVICE_TOPICS]
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping), name="ops-rules-timer")

    async def stop() -> None:
        for undo in unsubscribe:
            undo()
        stopping.set()
        await task

    return stop


async def install_default_rules(app: Any, tenant: str = "") -> list[str]:
    """The demo's hook: install the shipped default rules into `tenant` (idempotent); returns the new ids."""
    service: RulesService = app.state.ops_rules
    return await service.install_defaults(tenant)
