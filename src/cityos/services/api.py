"""HTTP API of 一网通办 (router and start-up). Thin: parsing, access gates, then `ServiceDesk`.

    GET    /api/services/catalogue                ?q=&lifeEvent=&audience=citizen|enterprise&department=
    GET    /api/services/catalogue/{code}         the guide (a service or a bundle)
    POST   /api/services/catalogue                a definition with inline BPMN/DMN (service.manage) → 201
    PUT    /api/services/catalogue/{code}         replace it; DELETE removes it (managed services only)
    POST   /api/services/uploads                  multipart `file` → 201 {uploadId, sha256, size, contentType}
    GET    /api/services/uploads/{id}             the bytes (uploader, or whoever may read an application
                                                  holding it); audited
    POST   /api/services/applications             {serviceCode, form, materials, channel?} → 201
    GET    /api/services/applications             ?status=&limit=&offset= (mine / my departments' / tenant);
                                                  &group=case: a one-thing bundle is one item (kind bundle)
    GET    /api/services/applications/{id}
    POST   /api/services/applications/{id}/supplement   {form, materials} answers a 补正 request
    GET    /api/services/tasks                    ?status=open|completed|cancelled|all&department=&limit=&offset=
    GET    /api/services/tasks/{id}
    POST   /api/services/tasks/{id}/approve|reject|request-supplement   {comment} | {reason}
    POST   /api/services/bundles                  {bundleCode, form, materials} → 201 one case
    GET    /api/services/bundles/{caseId}
    GET    /api/services/supervision/overdue      ?department=&limit=
    GET    /api/services/metrics                  ?by=service|department

Access: each route has the coarse gate `require(action)` (the action in the caller's tenant); the
service checks the real resource (owner, department) through `enforce`, so refusals are audited.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, TooLarge, UnsupportedMediaType
from cityos.security.api import client_ip, enforce, request_tenant, require
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource
from cityos.security.service import Unauthorized
from cityos.services.desk import Check
from cityos.services.prefill import PrefilledApplications
from cityos.services.scheduled import start_sweeper
from cityos.services.service import ServiceDesk

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/services", tags=["services"])
routers: list[APIRouter] = [router]
MAX_JSON = 1024 * 1024


def desk_of(request: Request) -> ServiceDesk:
    desk: ServiceDesk = request.app.state.services
    return desk


def _user(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized()
    return principal


def _check(request: Request, principal: Principal | None) -> Check:
    async def check(action: str, resource: Resource) -> None:
        await enforce(request, principal, action, resource)

    return check


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, default=str), status_code=status, media_type="application/json")


async def _body(request: Request) -> Any:
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("this API takes application/json")
    body = await request.body()
    if len(body) > MAX_JSON:
        raise TooLarge(f"the body is larger than {MAX_JSON} bytes")
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"malformed JSON: {exc}") from exc


def _page(request: Request, limit: int | None, offset: int) -> tuple[int, int]:
    settings = request.app.state.settings
    size = settings.default_page_size if limit is None else limit
    if size < 1 or size > settings.max_page_size:
        raise BadRequestData(f"limit must be 1..{settings.max_page_size}")
    if offset < 0 or offset > 10_000_000:
        raise BadRequestData("offset out of range")
    return size, offset


async def _audit(request: Request, principal: Principal | None, action: str, resource: str, **detail: Any) -> None:
    await request.app.state.security.service.record(AuditEvent.of(
        principal, action, resource, ip=client_ip(request), tenant=request_tenant(request, principal), **detail))


# ------------------------------------------------------------------------------ catalogue


@router.get("/catalogue")
async def catalogue(request: Request, q: str | None = Query(None, max_length=200),
                    life_event: str | None = Query(None, alias="lifeEvent", max_length=64),
                    audience: str | None = Query(None, pattern="^(citizen|enterprise)$"),
                    department: str | None = Query(None, max_length=128),
                    principal: Principal | None = Depends(require("service.read"))) -> Response:
    return _json(await desk_of(request).search(request_tenant(request, principal), q, life_event, audience,
                                               department))


@router.get("/catalogue/{code}")
async def guide(request: Request, code: str,
                principal: Principal | None = Depends(require("service.read"))) -> Response:
    return _json(await desk_of(request).guide(request_tenant(request, principal), code))


@router.post("/catalogue", status_code=201)
async def create_service(request: Request,
                         principal: Principal | None = Depends(require("service.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    guide_doc = await desk_of(request).put_service(principal, tenant, await _body(request),
                                                   _check(request, principal), ip=client_ip(request))
    return _json(guide_doc, 201)


@router.put("/catalogue/{code}")
async def replace_service(request: Request, code: str,
                          principal: Principal | None = Depends(require("service.manage"))) -> Response:
    tenant = request_tenant(request, principal)
    guide_doc = await desk_of(request).put_service(principal, tenant, await _body(request),
                                                   _check(request, principal), code=code, ip=client_ip(request))
    return _json(guide_doc)


@router.delete("/catalogue/{code}", status_code=204)
async def delete_service(request: Request, code: str,
                         principal: Principal | None = Depends(require("service.manage"))) -> Response:
    await desk_of(request).delete_service(request_tenant(request, principal), code, _check(request, principal),
                                          principal, ip=client_ip(request))
    return Response(status_code=204)


# ------------------------------------------------------------------------------ uploads


@router.post("/uploads", status_code=201)
async def upload(request: Request, principal: Principal | None = Depends(require("application.submit"))) -> Response:
    user = _user(principal)
    desk = desk_of(request)
    limit = desk.settings.max_upload_bytes
    length = request.headers.get("Content-Length")
    if length and length.isdecimal() and int(length) > limit + 64 * 1024:
        raise BadRequestData(f"the upload is larger than {limit} bytes", errors=[
            {"field": "file", "message": f"larger than {limit} bytes"}])
    if not request.headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("uploads are multipart/form-data with one `file` part")
    form = await request.form(max_files=1, max_fields=4)
    part = form.get("file")
    if part is None or isinstance(part, str):
        raise BadRequestData("the multipart body needs a `file` part", errors=[{"field": "file",
                                                                                 "message": "required"}])
    data = await part.read(limit + 1)
    await form.close()
    result = await desk.upload(user, request_tenant(request, principal), data, part.content_type, part.filename,
                               ip=client_ip(request))
    return _json(result, 201)


@router.get("/uploads/{upload_id}")
async def download(request: Request, upload_id: str,
                   principal: Principal | None = Depends(require("application.read"))) -> Response:
    data, content_type, applications = await desk_of(request).upload_blob(
        _user(principal), request_tenant(request, principal), upload_id[:64], _check(request, principal))
    await _audit(request, principal, "upload.download", f"upload:{upload_id[:64]}", applications=applications)
    return Response(data, media_type=content_type, headers={"Content-Disposition": "attachment",
                                                            "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------------------ applications


@router.post("/applications", status_code=201)
async def submit(request: Request, principal: Principal | None = Depends(require("application.submit"))) -> Response:
    user = _user(principal)
    view = await desk_of(request).submit(user, request_tenant(request, principal), await _body(request),
                                         _check(request, principal))
    await _audit(request, principal, "application.submit", f"application:{view['id']}",
                 service=view["serviceCode"], receipt=view["receipt"])
    return _json(view, 201)


@router.get("/applications")
async def list_applications(request: Request, status: str | None = Query(None, max_length=16),
                            limit: int | None = Query(None), offset: int = Query(0),
                            group: str | None = Query(None, pattern="^case$"),
                            principal: Principal | None = Depends(require("application.read"))) -> Response:
    size, start = _page(request, limit, offset)
    return _json(await desk_of(request).applications(_user(principal), request_tenant(request, principal),
                                                     status=status, limit=size, offset=start, group=group))


@router.get("/applications/{app_id}")
async def get_application(request: Request, app_id: str,
                          principal: Principal | None = Depends(require("application.read"))) -> Response:
    return _json(await desk_of(request).application(principal, request_tenant(request, principal), app_id,
                                                    _check(request, principal)))


@router.post("/applications/{app_id}/supplement")
async def supplement(request: Request, app_id: str,
                     principal: Principal | None = Depends(require("application.submit"))) -> Response:
    view = await desk_of(request).supplement(_user(principal), request_tenant(request, principal), app_id,
                                             await _body(request), _check(request, principal))
    await _audit(request, principal, "application.supplement", f"application:{app_id}")
    return _json(view)


# ------------------------------------------------------------------------------ tasks


@router.get("/tasks")
async def inbox(request: Request, status: str = Query("open", pattern="^(open|completed|cancelled|all)$"),
                department: str | None = Query(None, max_length=128), limit: int | None = Query(None),
                offset: int = Query(0), principal: Principal | None = Depends(require("task.act"))) -> Response:
    size, start = _page(request, limit, offset)
    return _json(await desk_of(request).inbox(_user(principal), request_tenant(request, principal), status=status,
                                              limit=size, offset=start, department=department))


@router.get("/tasks/{task_id}")
async def get_task(request: Request, task_id: str,
                   principal: Principal | None = Depends(require("task.act"))) -> Response:
    return _json(await desk_of(request).task(_user(principal), request_tenant(request, principal), task_id,
                                             _check(request, principal)))


@router.post("/tasks/{task_id}/{action}")
async def act(request: Request, task_id: str, action: str,
              principal: Principal | None = Depends(require("task.act"))) -> Response:
    view = await desk_of(request).act(_user(principal), request_tenant(request, principal), task_id, action,
                                      await _body(request), _check(request, principal))
    await _audit(request, principal, "task.act", f"task:{task_id}", op=action, application=view["id"])
    return _json(view)


# ------------------------------------------------------------------------------ bundles


@router.post("/bundles", status_code=201)
async def submit_bundle(request: Request,
                        principal: Principal | None = Depends(require("application.submit"))) -> Response:
    case = await desk_of(request).submit_bundle(_user(principal), request_tenant(request, principal),
                                                await _body(request), _check(request, principal))
    await _audit(request, principal, "application.submit", f"case:{case['caseId']}", bundle=case["bundleCode"])
    return _json(case, 201)


@router.get("/bundles/{case_id}")
async def get_bundle(request: Request, case_id: str,
                     principal: Principal | None = Depends(require("application.read"))) -> Response:
    return _json(await desk_of(request).bundle(principal, request_tenant(request, principal), case_id,
                                               _check(request, principal)))


# ------------------------------------------------------------------------------ supervision


@router.get("/supervision/overdue")
async def overdue(request: Request, department: str | None = Query(None, max_length=128),
                  limit: int | None = Query(None),
                  principal: Principal | None = Depends(require("supervision.read"))) -> Response:
    user = _user(principal)
    tenant = request_tenant(request, principal)
    if department:
        await enforce(request, principal, "supervision.read", Resource("supervision", tenant, department=department))
    size, _ = _page(request, limit, 0)
    return _json(await desk_of(request).overdue(user, tenant, department, size))


@router.get("/metrics")
async def metrics(request: Request, by: str = Query("service", pattern="^(service|department)$"),
                  principal: Principal | None = Depends(require("supervision.read"))) -> Response:
    return _json(await desk_of(request).metrics(principal, request_tenant(request, principal), by))


# ------------------------------------------------------------------------------ start-up


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Load the catalogue (a broken definition stops start-up with the reason), start the timer sweep."""
    desk = ServiceDesk(app.state.engine, app.state.bus, app.state, write_lock=write_lock_of(app))
    app.state.services = desk
    try:
        await desk.reconcile_audit()  # submissions whose audit record a crash lost
    except Exception:
        log.exception("audit reconciliation of submissions failed; the service starts anyway")
    stop_sweeper = start_sweeper(desk)
    unsubscribe = PrefilledApplications(desk, app.state.bus).subscribe()

    async def stop() -> None:
        unsubscribe()
        await stop_sweeper()

    return stop
