"""NGSI-LD /csourceRegistrations (§5.9, §5.10) and /csourceSubscriptions (§5.11)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, InvalidRequest
from cityos.core.tasks import StepGuard
from cityos.hub import geoquery
from cityos.hub.access import access_of
from cityos.hub.api import PREFIX, hub_of
from cityos.hub.http import (
    Negotiated,
    accepted,
    body_context,
    page_links,
    parse_bool,
    parse_int,
    query_context,
    read_body,
    render,
    split_list,
    tenant_of,
)
from cityos.hub.model import check_entity_id, check_name
from cityos.hub.registrations.csubs import CsubService
from cityos.hub.registrations.federation import Federation
from cityos.hub.registrations.match import Filter, Selector, parse_expr, parse_temporal
from cityos.hub.registrations.service import RegistrationService
from cityos.hub.registrations.spec import check_pattern, render_registration
from cityos.security.api import require

log = logging.getLogger("cityos.hub.csource")
READ = [Depends(require("csource.read"))]
MANAGE = [Depends(require("csource.manage"))]
router = APIRouter(prefix=PREFIX, tags=["NGSI-LD context sources"])

_QUERY_PARAMS = frozenset({"type", "id", "idPattern", "attrs", "q", "csf", "georel", "geometry", "coordinates",
                           "geoproperty", "timerel", "timeAt", "endTimeAt", "timeproperty", "limit", "offset",
                           "count", "options", "local", "via"})


def registrations_of(request: Request) -> RegistrationService:
    service: RegistrationService = request.app.state.csource_registrations
    return service


def csubs_of(request: Request) -> CsubService:
    service: CsubService = request.app.state.csource_subscriptions
    return service


def _sys_attrs(request: Request) -> bool:
    options = split_list(request.query_params.get("options"))
    unknown = [o for o in options if o != "sysAttrs"]
    if unknown:
        raise InvalidRequest(f"unknown option {unknown[0][:60]!r}")
    return "sysAttrs" in options


def _may_see_secrets(request: Request) -> bool:
    principal = getattr(request.state, "principal", None)
    return getattr(principal, "role", None) == "sys_admin"


# ---------------------------------------------------------------------- registrations


@router.post("/csourceRegistrations", status_code=201, dependencies=MANAGE)
async def create_registration(request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    reg_id = await access.audited("csource.create", str(body.get("id") or "")[:256] if isinstance(body, dict) else "",
                                  registrations_of(request).create(access.tenant, body, ctx))
    return Response(status_code=201, headers={"Location": f"{PREFIX}/csourceRegistrations/{reg_id}"})


def registration_filter(params: Any, expand: Callable[[str], str]) -> Filter:
    unknown = [k for k in params if k not in _QUERY_PARAMS]
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0][:60]!r}")
    types = [expand(check_name(t, "entity type")) for t in split_list(params.get("type"))]
    ids = [check_entity_id(i) for i in split_list(params.get("id"))]
    pattern = params.get("idPattern")
    attrs = [expand(check_name(a)) for a in split_list(params.get("attrs"))]
    selector = Selector(types=frozenset(types) or None, ids=frozenset(ids) or None,
                        pattern=re.compile(check_pattern(pattern)) if pattern is not None else None)
    geo = geoquery.parse_geoquery(params.get("georel"), params.get("geometry"), params.get("coordinates"),
                                  params.get("geoproperty"), lambda n: n)
    return Filter(selectors=[selector] if (types or ids or pattern) else [], attrs=frozenset(attrs) or None,
                  q=parse_expr(params.get("q"), "q"), csf=parse_expr(params.get("csf"), "csf"), geo=geo,
                  temporal=parse_temporal(params.get("timerel"), params.get("timeAt"), params.get("endTimeAt"),
                                          params.get("timeproperty")), expand=expand)


@router.get("/csourceRegistrations", dependencies=READ)
async def query_registrations(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    params = request.query_params
    flt = registration_filter(params, ctx.expand)
    if not any(params.get(k) is not None for k in ("type", "attrs", "id", "idPattern", "q", "csf", "georel")):
        # §5.10.2: a discovery names entity types or attributes (or ids, or a filter).
        raise BadRequestData("a registration query needs type, attrs, id, idPattern, q, csf or a geo-query")
    count = parse_bool(params.get("count"), "count")
    limit = parse_int(params.get("limit"), "limit", hub.settings.default_page_size, 0, hub.settings.max_page_size)
    if limit == 0 and not count:
        raise BadRequestData("limit=0 is only allowed together with count=true")
    offset = parse_int(params.get("offset"), "offset", 0, 0, 1_000_000_000)
    sys_attrs = _sys_attrs(request)
    page, total = await registrations_of(request).query(tenant_of(request), flt, limit, offset)
    secrets = _may_see_secrets(request)
    items = [render_registration(s.spec, ctx.compact, created_at=s.created_at, modified_at=s.modified_at,
                                 sys_attrs=sys_attrs, secrets=secrets) for s in page]
    headers = {"NGSILD-Results-Count": str(total)} if count else {}
    response = render(request, items, Negotiated(media, ctx), hub.contexts, headers=headers)
    links = page_links(request, offset, limit, len(items), None, total, keyset=False)
    if links:
        response.headers["Link"] = f"{response.headers['Link']}, {links}" if "Link" in response.headers else links
    return response


@router.get("/csourceRegistrations/{reg_id}", dependencies=READ)
async def retrieve_registration(reg_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    stored = await registrations_of(request).retrieve(tenant_of(request), reg_id)
    out = render_registration(stored.spec, ctx.compact, created_at=stored.created_at,
                              modified_at=stored.modified_at, sys_attrs=_sys_attrs(request),
                              secrets=_may_see_secrets(request))
    return render(request, out, Negotiated(media, ctx), hub.contexts)


@router.patch("/csourceRegistrations/{reg_id}", status_code=204, dependencies=MANAGE)
async def update_registration(reg_id: str, request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    await access.audited("csource.update", reg_id[:256],
                         registrations_of(request).update(access.tenant, reg_id, body, ctx))
    return Response(status_code=204)


@router.delete("/csourceRegistrations/{reg_id}", status_code=204, dependencies=MANAGE)
async def delete_registration(reg_id: str, request: Request) -> Response:
    access = await access_of(request)
    await access.audited("csource.delete", reg_id[:256], registrations_of(request).delete(access.tenant, reg_id))
    return Response(status_code=204)


# ---------------------------------------------------------------------- csource subscriptions


@router.post("/csourceSubscriptions", status_code=201, dependencies=MANAGE)
async def create_csub(request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    sub_id = await access.audited("csource.subscribe", str(body.get("id") or "")[:256] if isinstance(body, dict)
                                  else "", csubs_of(request).create(access.tenant, body, ctx))
    return Response(status_code=201, headers={"Location": f"{PREFIX}/csourceSubscriptions/{sub_id}"})


@router.get("/csourceSubscriptions", dependencies=READ)
async def query_csubs(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    params = request.query_params
    count = parse_bool(params.get("count"), "count")
    limit = parse_int(params.get("limit"), "limit", hub.settings.default_page_size, 0, hub.settings.max_page_size)
    offset = parse_int(params.get("offset"), "offset", 0, 0, 1_000_000_000)
    items, total = await csubs_of(request).query(tenant_of(request), ctx.compact, limit, offset, _sys_attrs(request))
    headers = {"NGSILD-Results-Count": str(total)} if count else {}
    response = render(request, items, Negotiated(media, ctx), hub.contexts, headers=headers)
    links = page_links(request, offset, limit, len(items), None, total, keyset=False)
    if links:
        response.headers["Link"] = f"{response.headers['Link']}, {links}" if "Link" in response.headers else links
    return response


@router.get("/csourceSubscriptions/{sub_id}", dependencies=READ)
async def retrieve_csub(sub_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    item = await csubs_of(request).retrieve(tenant_of(request), sub_id, ctx.compact, _sys_attrs(request))
    return render(request, item, Negotiated(media, ctx), hub.contexts)


@router.patch("/csourceSubscriptions/{sub_id}", status_code=204, dependencies=MANAGE)
async def update_csub(sub_id: str, request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    await access.audited("csource.subscription_update", sub_id[:256],
                         csubs_of(request).update(access.tenant, sub_id, body, ctx))
    return Response(status_code=204)


@router.delete("/csourceSubscriptions/{sub_id}", status_code=204, dependencies=MANAGE)
async def delete_csub(sub_id: str, request: Request) -> Response:
    access = await access_of(request)
    await access.audited("csource.unsubscribe", sub_id[:256], csubs_of(request).delete(access.tenant, sub_id))
    return Response(status_code=204)


# ---------------------------------------------------------------------- wiring


routers = [router]


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Build the services; a loop sends the periodic csource notifications."""
    hub = app.state.hub
    store = hub.service.store
    regs = RegistrationService(store.engine, store.write_lock)
    csubs = CsubService(store.engine, store.write_lock, hub.resolver, app.state.outbound,
                        registrations=regs.all)
    regs.listeners.append(csubs.registration_changed)
    app.state.csource_registrations = regs
    app.state.csource_subscriptions = csubs
    federation = Federation(regs, app.state.outbound)
    regs.listeners.append(federation.registration_changed)
    await federation.warm_up()
    app.state.federation = federation
    guard = StepGuard("csource-periodic")

    async def loop() -> None:
        while True:
            try:
                await guard.step(csubs.periodic_round())
            except Exception:
                log.warning("csource periodic notifications: a round failed", exc_info=True)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(loop())

    async def stop() -> None:
        await guard.stop([task])
        await csubs.close()
        await federation.close()

    return stop
