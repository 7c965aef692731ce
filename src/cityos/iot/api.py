"""The IoT HTTP API: registry and operations under /api/iot, and ThingsBoard's HTTP device API under /api/v1.

Management (`/api/iot`): a bearer token whose role may `device.manage` (operator, dept_admin,
sys_admin); every change is audited. The broker hooks (`/mqtt/auth`, `/mqtt/acl`) are called by the
MQTT broker, not by people: when `CITYOS_IOT_ADMIN_TOKEN` is set they need `Authorization: Bearer <it>`.

    GET  /profiles, /profiles/{id}
    POST /devices                 DeviceIn → 201 {"id", "token"}   (the token is shown only here)
    POST /devices/bulk            [DeviceIn] → 201 | 207 {"created": [{row,id,name,token}], "errors": [{row,error}]}
    POST /devices/import          text/csv (header row 1) → same as bulk, rows numbered as in the file
    GET  /devices                 ?profile&district&department&status&gateway&limit&offset → {total, items}
    GET  /devices/{id}            id = urn:ngsi-ld:Device:<name> or <name>
    POST /devices/{id}/token      rotate → {"id", "token"}; the old token stops working at once
    DELETE /devices/{id}/token    revoke; DELETE /devices/{id}
    POST /devices/{id}/rpc        RpcIn → the request with its status; GET /rpc/{id}
    GET  /dead-letters            ?status=pending|replayed|&device&reason&department&limit&offset
    GET  /dead-letters/{id}
    POST /dead-letters/{id}/replay  optional {"payload": <fixed JSON>, "device": name}
    GET  /health                  ?department: device counts by status, offline per district, low batteries
    (a dept_admin sees only its departments' devices, dead letters and health)
    POST /mqtt/auth, /mqtt/acl    broker hooks (EMQX HTTP authn/authz, mosquitto-go-auth HTTP backend)

Devices (ThingsBoard HTTP device API): `POST /api/v1/{token}/telemetry` and `/attributes`; 200 on
commit; 401 unknown token; 400 malformed JSON or nothing usable; 413 oversize. Every refusal but
a bad body of a disabled device is also a dead letter.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, ProblemError, ResourceNotFound, TooLarge, UnsupportedMediaType
from cityos.iot.messages import BulkResult, hash_token
from cityos.iot.models import DeviceIn, ReplayIn, RpcIn
from cityos.iot.service import IotService
from cityos.security.api import client_ip, current_principal, enforce, require, security_of
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource, Scope, role_of, scope_for
from cityos.security.service import Forbidden

MAX_INT = 2**53  # ids, limits and offsets beyond this are not ours (and overflow the databases' integers)


class Unauthorized(ProblemError):
    status, error_type, title = 401, "https://cityos.dev/errors/Unauthorized", "Unauthorized"


def iot_of(request: Request) -> IotService:
    service: IotService = request.app.state.iot
    return service


def _broker(request: Request) -> None:
    """The broker hooks' shared secret (the broker is configured with it)."""
    expected = os.environ.get("CITYOS_IOT_ADMIN_TOKEN")
    if not expected:
        return
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(hash_token(given), hash_token(expected)):
        raise Unauthorized("this API needs 'Authorization: Bearer <CITYOS_IOT_ADMIN_TOKEN>'",
                           headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix="/api/iot", tags=["iot"])
MANAGE = [Depends(require("device.manage"))]
BROKER = [Depends(_broker)]
device_router = APIRouter(prefix="/api/v1", tags=["iot devices"])


async def _audit(request: Request, action: str, resource: str, **detail: Any) -> None:
    principal = getattr(request.state, "principal", None)
    await security_of(request).service.record(AuditEvent.of(principal, action, resource, ip=client_ip(request),
                                                            **detail))


# ---------------------------------------------------------------------- department scope of device.manage


async def _scoped(request: Request) -> Principal | None:
    """The caller when its `device.manage` is department-scoped (dept_admin), else None (tenant-wide)."""
    principal = await current_principal(request)
    return principal if scope_for(role_of(principal), "device.manage") is Scope.DEPARTMENT else None


async def _may_manage(request: Request, device: str | None, department: str | None,
                      district: str | None, tenant: str) -> None:
    """A dept_admin manages only the devices of its departments (or, without a department, its districts)."""
    principal = await _scoped(request)
    if principal is not None:
        await enforce(request, principal, "device.manage", Resource("device", tenant, id=device,
                                                                    department=department, district=district))


async def _device_in_scope(request: Request, ident: str) -> None:
    if await _scoped(request) is None:
        return
    found = await iot_of(request).get_device(ident)
    await _may_manage(request, found.id, found.department, found.district, found.tenant)


async def _specs_in_scope(request: Request, specs: list[Any]) -> None:
    """Every row of a bulk provisioning must be in the caller's scope (the whole request is refused)."""
    if await _scoped(request) is None:
        return
    for spec in specs:
        if isinstance(spec, dict):
            dept, district = spec.get("department") or None, spec.get("district") or None
            await _may_manage(request, str(spec.get("name", ""))[:256], dept if isinstance(dept, str) else None,
                              district if isinstance(district, str) else None, iot_of(request).tenant)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _bulk(result: BulkResult) -> Response:
    return _json({"created": result.created, "errors": result.errors}, 207 if result.errors else 201)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("Content-Length")
    if declared and declared.isdecimal() and int(declared) > limit:
        raise TooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, limit: int) -> Any:
    raw = await _body(request, limit)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"the body is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------- profiles


@router.get("/profiles", dependencies=MANAGE)
async def list_profiles(request: Request) -> Response:
    return _json([p.raw for p in iot_of(request).profiles.values()])


@router.get("/profiles/{profile_id}", dependencies=MANAGE)
async def get_profile(request: Request, profile_id: str) -> Response:
    return _json(iot_of(request).profile(profile_id).raw)


# ---------------------------------------------------------------------- registry


@router.post("/devices", status_code=201, dependencies=MANAGE)
async def provision(request: Request, spec: DeviceIn) -> Response:
    await _may_manage(request, spec.name, spec.department, spec.district, iot_of(request).tenant)
    device_id, token = await iot_of(request).provision(spec)
    await _audit(request, "device.provision", device_id)
    return _json({"id": device_id, "token": token}, 201)


@router.post("/devices/bulk", dependencies=MANAGE)
async def provision_bulk(request: Request) -> Response:
    body = await _json_body(request, request.app.state.settings.max_body_bytes)
    if not isinstance(body, list):
        raise BadRequestData("the body must be a JSON array of devices")
    await _specs_in_scope(request, body)
    result = await iot_of(request).provision_many(body)
    await _audit(request, "device.provision_bulk", f"{len(result.created)} devices",
                 ids=[c["id"] for c in result.created[:100]])
    return _bulk(result)


@router.post("/devices/import", dependencies=MANAGE)
async def import_csv(request: Request) -> Response:
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media not in ("text/csv", "text/plain", "application/csv"):
        raise UnsupportedMediaType(f"Content-Type must be text/csv, not {media!r}")
    raw = await _body(request, request.app.state.settings.max_body_bytes)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequestData("the CSV must be UTF-8") from exc
    if await _scoped(request) is not None:
        import csv
        import io

        await _specs_in_scope(request, list(csv.DictReader(io.StringIO(text))))
    result = await iot_of(request).import_csv(text)
    await _audit(request, "device.import", f"{len(result.created)} devices",
                 ids=[c["id"] for c in result.created[:100]])
    return _bulk(result)


@router.get("/devices", dependencies=MANAGE)
async def list_devices(request: Request, profile: str | None = None, district: str | None = None,
                       department: str | None = None, status: str | None = None, gateway: bool | None = None,
                       limit: int = Query(100, ge=1, le=MAX_INT), offset: int = Query(0, ge=0, le=MAX_INT)) -> Response:
    limit = min(limit, request.app.state.settings.max_page_size)
    department = await _department_in_scope(request, department)
    items, total = await iot_of(request).list_devices(profile=profile, district=district, department=department,
                                                      status=status, gateway=gateway, limit=limit, offset=offset)
    return _json({"total": total, "limit": limit, "offset": offset, "items": [d.public() for d in items]})


@router.get("/devices/{device}", dependencies=MANAGE)
async def get_device(request: Request, device: str) -> Response:
    await _device_in_scope(request, device)
    return _json((await iot_of(request).get_device(device)).public())


@router.post("/devices/{device}/token", dependencies=MANAGE)
async def rotate_token(request: Request, device: str) -> Response:
    service = iot_of(request)
    await _device_in_scope(request, device)
    token = await service.rotate_token(device)
    await _audit(request, "device.token_rotate", device[:256])
    return _json({"id": (await service.get_device(device)).id, "token": token})


@router.delete("/devices/{device}/token", status_code=204, dependencies=MANAGE)
async def revoke_token(request: Request, device: str) -> Response:
    await _device_in_scope(request, device)
    await iot_of(request).revoke_token(device)
    await _audit(request, "device.token_revoke", device[:256])
    return Response(status_code=204)


@router.delete("/devices/{device}", status_code=204, dependencies=MANAGE)
async def delete_device(request: Request, device: str) -> Response:
    await _device_in_scope(request, device)
    await iot_of(request).delete_device(device)
    await _audit(request, "device.delete", device[:256])
    return Response(status_code=204)


# ---------------------------------------------------------------------- RPC


@router.post("/devices/{device}/rpc", status_code=201, dependencies=MANAGE)
async def send_rpc(request: Request, device: str, spec: RpcIn) -> Response:
    await _device_in_scope(request, device)
    sent = await request.app.state.iot_commands.send(device, spec)
    await _audit(request, "device.rpc", device[:256], method=spec.method)
    return _json(sent, 201)


@router.get("/rpc/{rpc_id}", dependencies=MANAGE)
async def get_rpc(request: Request, rpc_id: int = Path(ge=1, le=MAX_INT)) -> Response:
    found = await iot_of(request).get_rpc(rpc_id)
    if isinstance(found, dict) and isinstance(found.get("device"), str):
        await _device_in_scope(request, found["device"])
    return _json(found)


# ---------------------------------------------------------------------- dead letters and health


@router.get("/dead-letters", dependencies=MANAGE)
async def list_dead_letters(request: Request, status: str | None = "pending", device: str | None = None,
                            reason: str | None = None, department: str | None = None,
                            limit: int = Query(100, ge=1, le=MAX_INT),
                            offset: int = Query(0, ge=0, le=MAX_INT)) -> Response:
    limit = min(limit, request.app.state.settings.max_page_size)
    department = await _department_in_scope(request, department)
    items, total = await iot_of(request).list_dead_letters(status=status or None, device=device, reason=reason,
                                                           limit=limit, offset=offset, department=department)
    return _json({"total": total, "limit": limit, "offset": offset, "items": items})


@router.get("/dead-letters/{letter_id}", dependencies=MANAGE)
async def get_dead_letter(request: Request, letter_id: int = Path(ge=1, le=MAX_INT)) -> Response:
    letter = await iot_of(request).get_dead_letter(letter_id)
    await _letter_in_scope(request, letter.get("device"))
    return _json(letter)


async def _department_in_scope(request: Request, department: str | None) -> str | None:
    """A dept_admin sees one of its departments (its own unless it names another); None is tenant-wide."""
    scoped = await _scoped(request)
    if scoped is None:
        return department
    department = department or scoped.department or ""
    await _may_manage(request, None, department, None, iot_of(request).tenant)
    return department


async def _letter_in_scope(request: Request, device: str | None) -> None:
    """A dead letter belongs to its device's department; one of no known device only to tenant-wide roles."""
    if await _scoped(request) is None:
        return
    if not device:
        raise Forbidden("a dead letter of no known device is for tenant-wide device managers")
    try:
        await _device_in_scope(request, device)
    except ResourceNotFound as exc:
        raise Forbidden("a dead letter of no known device is for tenant-wide device managers") from exc


@router.post("/dead-letters/{letter_id}/replay", dependencies=MANAGE)
async def replay(request: Request, letter_id: int = Path(ge=1, le=MAX_INT)) -> Response:
    raw = await _body(request, request.app.state.settings.max_body_bytes)
    spec = ReplayIn()
    if raw.strip():
        try:
            spec = ReplayIn.model_validate_json(raw)
        except ValueError as exc:
            raise BadRequestData(f"expected {{\"payload\": ..., \"device\": ...}}: {exc}") from exc
    await _letter_in_scope(request, (await iot_of(request).get_dead_letter(letter_id)).get("device"))
    if spec.device:
        await _letter_in_scope(request, spec.device)
    report = await iot_of(request).replay(letter_id, spec.payload, spec.device)
    await _audit(request, "device.dead_letter_replay", str(letter_id))
    return _json({"replayed": letter_id, "readings": report.readings, "stored": report.stored,
                  "duplicates": report.duplicates})


@router.get("/health", dependencies=MANAGE)
async def health(request: Request, department: str | None = None) -> Response:
    return _json(await iot_of(request).health_summary(await _department_in_scope(request, department)))


# ---------------------------------------------------------------------- broker hooks


@router.post("/mqtt/auth", dependencies=BROKER)
async def mqtt_auth(request: Request) -> Response:
    """EMQX HTTP authentication / mosquitto-go-auth `getuser`: {"username": token, ...} → allow or deny."""
    body = await _json_body(request, 64 * 1024)
    username = body.get("username") if isinstance(body, dict) else None
    device = await iot_of(request).mqtt_authenticate(username if isinstance(username, str) else None)
    if device is None:
        return _json({"result": "deny", "ok": False, "error": "unknown token"})
    return _json({"result": "allow", "ok": True, "is_superuser": False,
                  "client_attrs": {"device": device.name, "gateway": str(device.gateway).lower()}})


@router.post("/mqtt/acl", dependencies=BROKER)
async def mqtt_acl(request: Request) -> Response:
    """EMQX HTTP authorization / mosquitto-go-auth `acl_check`: may this token use this topic?"""
    from cityos.iot.ingest import PREFIX

    body = await _json_body(request, 64 * 1024)
    if not isinstance(body, dict):
        raise BadRequestData("expected a JSON object")
    device = await iot_of(request).mqtt_authenticate(str(body.get("username") or ""))
    action = str(body.get("action") or "")
    action = {"1": "subscribe", "2": "publish", "4": "subscribe", "read": "subscribe", "write": "publish"}.get(
        action, action)
    allowed = device is not None and IotService.mqtt_allowed(device, str(body.get("topic") or ""), action, PREFIX)
    return _json({"result": "allow" if allowed else "deny", "ok": allowed})


# ---------------------------------------------------------------------- ThingsBoard HTTP device API


async def _device_post(request: Request, token: str, kind: str) -> Response:
    service = iot_of(request)
    oversize = False
    try:
        raw = await _body(request, service.settings.max_payload_bytes)
    except TooLarge:
        oversize, raw = True, b""
    call = await service.device_report(token, kind, raw, "http", oversize)
    if call.outcome == "unauthorized":
        raise Unauthorized(call.detail)
    if call.outcome == "oversize":
        raise TooLarge(call.detail)
    if call.outcome == "rejected":
        raise BadRequestData(call.detail, rejected=call.body()["rejected"])
    return _json(call.body())


@device_router.post("/{token}/telemetry")
async def device_telemetry(request: Request, token: str) -> Response:
    return await _device_post(request, token, "telemetry")


@device_router.post("/{token}/attributes")
async def device_attributes(request: Request, token: str) -> Response:
    return await _device_post(request, token, "attributes")
