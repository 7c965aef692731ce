"""HTTP API of services.notify: the caller's own in-app inbox.

    GET  /api/services/notifications              ?unread=true&limit&offset → {total, unread, items}
    POST /api/services/notifications/{id}/read    → the message (idempotent); 404 for an id that is
                                                   not the caller's own (no existence leak)

    GET  /api/services/notifications/contacts/{department}   the department's duty contacts (service.manage)
    PUT  /api/services/notifications/contacts/{department}   {"contacts": [{userId, role: staff|supervisor,
                                                   email?, phone?}]} replaces them; department "*" holds the
                                                   tenant-wide supervisors (tenant-scoped service.manage only)

Deadline timers (warning / escalation / overdue) notify the department's staff accounts, its
contacts and the supervisors, in-app and by e-mail / SMS where the roster has an address.

All need a bearer token (401 otherwise). E-mail and SMS are sent by `app.state.notifier`
(`Notifier.notify`), which other services call; there is no HTTP endpoint to send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, TooLarge
from cityos.core.responses import json_response
from cityos.security.api import current_principal, enforce, request_tenant, require
from cityos.security.policy import Principal, Resource
from cityos.security.service import Unauthorized
from cityos.services.notify.service import Notifier

router = APIRouter(prefix="/api/services/notifications", tags=["services: notifications"])
routers: list[APIRouter] = [router]


def notifier_of(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.notifier
    return notifier



async def _caller(request: Request) -> tuple[Principal, str]:
    principal = await current_principal(request)
    if principal is None:
        raise Unauthorized("the inbox needs a bearer token")
    return principal, request_tenant(request, principal)


@router.get("")
async def inbox(request: Request, unread: bool = False, limit: int = Query(50, ge=1, le=500),
                offset: int = Query(0, ge=0, le=2**31)) -> Response:
    principal, tenant = await _caller(request)
    return json_response(await notifier_of(request).inbox(tenant, principal.id, unread, limit, offset))


@router.post("/{message_id}/read")
async def mark_read(request: Request, message_id: str) -> Response:
    principal, tenant = await _caller(request)
    return json_response(await notifier_of(request).mark_read(tenant, principal.id, message_id[:64]))


async def _contacts_access(request: Request, principal: Principal | None, department: str) -> str:
    tenant = request_tenant(request, principal)
    # "*" (the tenant-wide supervisors) is nobody's department: only a tenant-wide manager passes.
    await enforce(request, principal, "service.manage", Resource("contacts", tenant, id=department[:128],
                                                                 department=department[:128]))
    return tenant


@router.get("/contacts/{department}")
async def get_contacts(request: Request, department: str,
                       principal: Principal | None = Depends(require("service.manage"))) -> Response:
    tenant = await _contacts_access(request, principal, department)
    return json_response(await notifier_of(request).contacts(tenant, department))


@router.put("/contacts/{department}")
async def put_contacts(request: Request, department: str,
                       principal: Principal | None = Depends(require("service.manage"))) -> Response:
    tenant = await _contacts_access(request, principal, department)
    raw = await request.body()
    if len(raw) > 256 * 1024:
        raise TooLarge("the contact list is larger than 256 KiB")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"malformed JSON: {exc}") from exc
    return json_response(await notifier_of(request).set_contacts(tenant, department, body))


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.notifier` and start the outbox worker; returns the shutdown function."""
    notifier = Notifier(app.state.engine, app.state.security.service.keyring, write_lock=write_lock_of(app))
    app.state.notifier = notifier
    notifier.start()
    return notifier.stop
