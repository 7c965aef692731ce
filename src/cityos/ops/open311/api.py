"""Open311 GeoReport v2 at /open311/v2 (every resource as .json and .xml) and its key administration.

    GET  /open311/v2/discovery.{fmt}
    GET  /open311/v2/services.{fmt}                 the service list
    GET  /open311/v2/services/{service_code}.{fmt}  the service definition (attributes)
    POST /open311/v2/requests.{fmt}                 form-encoded; api_key, service_code, lat+long |
                                                    address_string | address_id, attribute[code]=…,
                                                    email, first_name, last_name, phone, description,
                                                    media_url, device_id, account_id
                                                    → [{"service_request_id", "service_notice", "account_id"}]
    GET  /open311/v2/requests.{fmt}                 service_request_id (comma list) | service_code, start_date,
                                                    end_date, status (open,closed); default: the last 90 days;
                                                    at most CITYOS_OPEN311_MAX_REQUESTS (1000) requests
    GET  /open311/v2/requests/{id}.{fmt}, /open311/v2/tokens/{token}.{fmt}

    GET|POST /api/ops/open311/keys, DELETE /api/ops/open311/keys/{id}   (tenant.manage) — keys are
    shown once and stored as SHA-256 digests.

Errors use the GeoReport format with the HTTP status as code. The tenant of a POST is its api_key's;
anonymous GETs read the jurisdiction's tenant (CITYOS_OPEN311_TENANT, default ""; a header naming another
tenant is refused), signed-in callers their token's tenant. A citizen's Bearer
token on a POST makes the citizen the reporter, who may then follow the incident under
/api/ops/incidents and confirm its resolution.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from cityos.config import public_url
from cityos.core.db import write_lock_of
from cityos.core.errors import ProblemError, ResourceNotFound
from cityos.core.responses import read_body
from cityos.ops.incidents.core import Plan
from cityos.ops.incidents.service import IncidentService
from cityos.ops.open311.formats import FORMATS, error, render
from cityos.ops.open311.service import Open311Error, Open311Service
from cityos.security.api import current_principal, enforce, header_tenant, request_tenant, require
from cityos.security.policy import Principal, Resource
from cityos.security.service import Unauthorized

PREFIX = "/open311/v2"
MAX_FORM_BYTES = 64 * 1024
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"

router = APIRouter(prefix=PREFIX, tags=["open311"])
admin_router = APIRouter(prefix="/api/ops/open311", tags=["open311"])
routers: list[APIRouter] = [router, admin_router]


def open311_of(request: Request) -> Open311Service:
    service: Open311Service = request.app.state.ops_open311
    return service


Handler = Callable[[], Awaitable[Response]]


async def guarded(fmt: str, handler: Handler) -> Response:
    """Run a GeoReport handler; every refusal comes back in the GeoReport error format."""
    if fmt not in FORMATS:
        return error("json", 404, f"format {fmt[:16]!r} is not supported; use .json or .xml")
    try:
        return await handler()
    except Open311Error as exc:
        return error(fmt, exc.status, exc.description)
    except ProblemError as exc:
        response = error(fmt, exc.status, exc.detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response


async def _tenant(request: Request) -> str:
    principal = await current_principal(request)
    tenant = open311_of(request).reader_tenant(principal, header_tenant(request), request_tenant(request, principal))
    jurisdiction = request.query_params.get("jurisdiction_id")
    if jurisdiction is not None:
        _check_jurisdiction(request, jurisdiction)
    return tenant


def _check_jurisdiction(request: Request, jurisdiction: str) -> None:
    if jurisdiction not in ("", open311_of(request).catalogue.jurisdiction):
        raise Open311Error(404, f"jurisdiction_id {jurisdiction[:64]!r} not found")


def _param(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if not values:
        return None
    joined = ",".join(values)
    if len(joined) > 16_000:
        raise Open311Error(400, f"{name} is too long")
    return joined


# ---------------------------------------------------------------------- GeoReport


@router.get("/discovery.{fmt}")
async def discovery(request: Request, fmt: str) -> Response:
    async def run() -> Response:
        catalogue = open311_of(request).catalogue
        base = str(request.base_url).rstrip("/") + PREFIX
        body = {"changeset": "2026-03-01T00:00:00Z", "contact": catalogue.contact,
                "key_service": catalogue.key_service,
                "endpoints": [{"specification": SPECIFICATION, "url": base, "changeset": "2026-03-01T00:00:00Z",
                               "type": "production", "formats": ["text/xml", "application/json"]}]}
        return render(fmt, "discovery", body)

    return await guarded(fmt, run)


@router.get("/services.{fmt}")
async def services(request: Request, fmt: str) -> Response:
    async def run() -> Response:
        await _tenant(request)
        items = [s.to_json() for s in open311_of(request).catalogue.services.values()]
        return render(fmt, "services", items)

    return await guarded(fmt, run)


@router.get("/services/{service_code}.{fmt}")
async def service_definition(request: Request, service_code: str, fmt: str) -> Response:
    async def run() -> Response:
        await _tenant(request)
        return render(fmt, "service_definition", open311_of(request).service(service_code).definition())

    return await guarded(fmt, run)


async def _form(request: Request) -> dict[str, list[str]]:
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise Open311Error(415, "POST requests takes application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Open311Error(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Open311Error(400, "malformed form body") from exc
    form: dict[str, list[str]] = {}
    for key, value in pairs:
        form.setdefault(key, []).append(value)
    return form


@router.post("/requests.{fmt}")
async def post_request(request: Request, fmt: str) -> Response:
    async def run() -> Response:
        service = open311_of(request)
        principal = await current_principal(request)
        form = await _form(request)
        keys = form.get("api_key") or []
        if len(keys) > 1:
            raise Open311Error(400, "api_key is given more than once")
        # A signed-in citizen (the portal's 随手拍) reports in the token's tenant without a key.
        tenant = (principal.tenant if principal is not None and not keys
                  else await service.key_tenant(keys[0] if keys else None))
        jurisdiction = form.get("jurisdiction_id")
        if jurisdiction:
            _check_jurisdiction(request, jurisdiction[0])
        if principal is not None and principal.tenant != tenant and principal.role != "sys_admin":
            raise Open311Error(403, "the api_key belongs to another tenant than the token")
        await enforce(request, principal, "report.submit", Resource("report", tenant))

        async def check(plan: Plan) -> None:
            await enforce(request, principal, "report.submit",
                          Resource("report", tenant, department=plan.department, district=plan.district))

        result = await service.submit(tenant, form, principal, check)
        return render(fmt, "service_requests", [{"service_request_id": result["service_request_id"],
                                                 "service_notice": result["service_notice"],
                                                 "account_id": result["account_id"]}], 201)

    return await guarded(fmt, run)


@router.get("/requests.{fmt}")
async def get_requests(request: Request, fmt: str) -> Response:
    async def run() -> Response:
        tenant = await _tenant(request)
        params = {name: _param(request, name) for name in
                  ("service_request_id", "service_code", "start_date", "end_date", "status")}
        return render(fmt, "service_requests", await open311_of(request).requests(tenant, params))

    return await guarded(fmt, run)


@router.get("/requests/{request_id}.{fmt}")
async def get_request(request: Request, request_id: str, fmt: str) -> Response:
    async def run() -> Response:
        tenant = await _tenant(request)
        return render(fmt, "service_requests", [await open311_of(request).request(tenant, request_id)])

    return await guarded(fmt, run)


@router.get("/tokens/{token}.{fmt}")
async def get_token(request: Request, token: str, fmt: str) -> Response:
    async def run() -> Response:
        tenant = await _tenant(request)
        return render(fmt, "service_requests", [await open311_of(request).token(tenant, token)])

    return await guarded(fmt, run)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def unknown(rest: str) -> Response:
    fmt = "xml" if rest.endswith(".xml") else "json"
    return error(fmt, 404, "no such GeoReport v2 resource")


# ---------------------------------------------------------------------- key administration


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@admin_router.get("/keys")
async def list_keys(request: Request, principal: Principal | None = Depends(require("tenant.manage"))) -> Response:
    return _json(await open311_of(request).list_keys(request_tenant(request, principal)))


@admin_router.post("/keys", status_code=201)
async def create_key(request: Request, body: KeyIn,
                     principal: Principal | None = Depends(require("tenant.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    return _json(await open311_of(request).create_key(tenant, body.name, principal), 201)


@admin_router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(request: Request, key_id: str,
                     principal: Principal | None = Depends(require("tenant.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    if len(key_id) > 32 or not await open311_of(request).revoke_key(tenant, key_id, principal):
        raise ResourceNotFound(f"no active key {key_id[:32]!r}")
    return Response(status_code=204)


# ---------------------------------------------------------------------- photos (随手拍)

MEDIA_LIMIT = 8 * 1024 * 1024 + 1


@admin_router.post("/media", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/jpeg", "image/png", "image/webp")}}})
async def upload_media(request: Request, principal: Principal | None = Depends(require("report.submit"))) -> Response:
    """A report's photo (the raw image as the body); answers its id, media_url and EXIF location."""
    if principal is None:
        raise Unauthorized("a photo needs a signed-in reporter")
    tenant = request_tenant(request, principal)
    data = await read_body(request, MEDIA_LIMIT)
    stored = await open311_of(request).media.add(tenant, principal.id, data)
    stored["mediaUrl"] = f"{public_url()}/api/ops/open311/media/{stored['id']}"
    return _json(stored, 201)


@admin_router.get("/media/{media_id}")
async def get_media(media_id: str, request: Request) -> Response:
    """A report's photo, public like the report's media_url (it carries no metadata)."""
    content_type, data = await open311_of(request).media.get(media_id)
    return Response(data, media_type=content_type, headers={"Cache-Control": "public, max-age=86400",
                                                            "X-Content-Type-Options": "nosniff"})


# ---------------------------------------------------------------------- start-up


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Start this domain's services and background work on `app`; returns the shutdown function."""
    incidents: IncidentService = app.state.ops_incidents
    app.state.ops_open311 = Open311Service(app.state.engine, incidents, app.state.security.service,
                                           write_lock=write_lock_of(app))

    async def stop() -> None:
        return None

    return stop
