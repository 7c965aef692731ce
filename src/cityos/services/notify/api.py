"""HTTP API of services.notify: the caller's own in-app inbox.

    GET  /api/services/notifications              ?unread=true&limit&offset → {total, unread, items}
    POST /api/services/notifications/{id}/read    → the message (idempotent); 404 for an id that is
                                                   not the caller's own (no existence leak)

Both need a bearer token (401 otherwise). E-mail and SMS are sent by `app.state.notifier`
(`Notifier.notify`), which other services call; there is no HTTP endpoint to send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response

from cityos.core.responses import json_response
from cityos.security.api import current_principal, request_tenant
from cityos.security.policy import Principal
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


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build `app.state.notifier` and start the outbox worker; returns the shutdown function."""
    store = app.state.hub.service.store
    notifier = Notifier(app.state.engine, app.state.security.service.keyring,
                        write_lock=getattr(store, "_sqlite_write_lock", None))
    app.state.notifier = notifier
    notifier.start()
    return notifier.stop
