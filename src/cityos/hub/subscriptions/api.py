"""The NGSI-LD subscription API at /ngsi-ld/v1/subscriptions (ETSI GS CIM 009 v1.8.1 §5.8)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cityos.core.errors import InvalidRequest
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
from cityos.hub.service import AccessDenied
from cityos.hub.subscriptions.service import SubscriptionService, owner_claims
from cityos.security.api import current_principal, enforce, require
from cityos.security.policy import Principal, Resource, Scope, authorize, role_of, scope_for

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD subscriptions"],
                   dependencies=[Depends(require("subscription.manage"))])


def _resource(tenant: str, sub_id: str | None, owner: dict[str, Any] | None) -> Resource:
    """A subscription as a resource of its creator's department. One created by someone without a
    department (or before owners were kept) belongs to no department: tenant-wide roles only."""
    owner = owner if isinstance(owner, dict) else {}
    dept = owner.get("department")
    return Resource("subscription", tenant, id=sub_id, department=dept if isinstance(dept, str) and dept else "",
                    owner=owner.get("id") if isinstance(owner.get("id"), str) else None)


def _mine(principal: Principal, tenant: str, owner: dict[str, Any] | None) -> bool:
    resource = _resource(tenant, None, owner)
    return resource.owner == principal.id or bool(authorize(principal, "subscription.manage", resource))


async def _scoped(request: Request) -> Principal | None:
    """The caller when its subscription.manage is department-scoped (official, dept_admin)."""
    principal = await current_principal(request)
    return principal if scope_for(role_of(principal), "subscription.manage") is Scope.DEPARTMENT else None


async def _may_change(request: Request, tenant: str, sub_id: str) -> None:
    """An official or dept_admin sees and changes only subscriptions it or its department created (403)."""
    principal = await _scoped(request)
    if principal is None:
        return
    owner = await subscriptions_of(request).owner(tenant, sub_id)
    if _resource(tenant, sub_id, owner).owner == principal.id:
        return
    await enforce(request, principal, "subscription.manage", _resource(tenant, sub_id, owner))


def subscriptions_of(request: Request) -> SubscriptionService:
    service: SubscriptionService = request.app.state.subscriptions
    return service


def _with_sys_attrs(request: Request, item: dict[str, Any]) -> dict[str, Any]:
    """createdAt and modifiedAt are system attributes: shown only with options=sysAttrs (§5.2.12)."""
    options = split_list(request.query_params.get("options"))
    unknown = [o for o in options if o != "sysAttrs"]
    if unknown:
        raise InvalidRequest(f"unknown option {unknown[0]!r}")
    if "sysAttrs" not in options:
        item.pop("createdAt", None)
        item.pop("modifiedAt", None)
    return item


@router.post("/subscriptions", status_code=201)
async def create_subscription(request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    # Notifications are masked for the subscriber: the creator's role and departments travel with it.
    # Filters on attributes it may not read in clear are refused (403, audited).
    try:
        sub_id = await subscriptions_of(request).create(access.tenant, body, ctx, owner=owner_claims(access.principal))
    except AccessDenied as exc:
        named = str(body.get("id") or "")[:256] if isinstance(body, dict) else ""
        await access.record("subscription.create", named, "denied", reason=exc.detail)
        raise
    await access.record("subscription.create", sub_id)
    return Response(status_code=201, headers={"Location": f"{PREFIX}/subscriptions/{sub_id}"})


@router.get("/subscriptions")
async def list_subscriptions(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    params = request.query_params
    count = parse_bool(params.get("count"), "count")
    limit = parse_int(params.get("limit"), "limit", hub.settings.default_page_size, 0, hub.settings.max_page_size)
    offset = parse_int(params.get("offset"), "offset", 0, 0, 1_000_000_000)
    tenant = tenant_of(request)
    scoped = await _scoped(request)
    visible = None if scoped is None else (lambda owner: _mine(scoped, tenant, owner))
    viewer = await current_principal(request)
    items, total, more = await subscriptions_of(request).query(tenant, ctx.compact, limit, offset, count, visible,
                                                               viewer=viewer.id if viewer is not None else None)
    headers: dict[str, str] = {}
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    items = [_with_sys_attrs(request, item) for item in items]
    response = render(request, items, Negotiated(media, ctx), hub.contexts, headers=headers)
    # Subscriptions are paged by offset only (a tenant holds few): no `after` in the links.
    # The last page has no next link (§6.3.9): without a count, the row past the page says whether one follows.
    known = total if total is not None else (None if more else offset + len(items))
    links = page_links(request, offset, limit, len(items), items[-1]["id"] if items else None, known, keyset=False)
    if links:
        response.headers["Link"] = f"{response.headers['Link']}, {links}" if "Link" in response.headers else links
    return response


@router.get("/subscriptions/{sub_id}")
async def retrieve_subscription(sub_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    await _may_change(request, tenant_of(request), sub_id)
    viewer = await current_principal(request)
    item = await subscriptions_of(request).retrieve(tenant_of(request), sub_id, ctx.compact,
                                                    viewer=viewer.id if viewer is not None else None)
    return render(request, _with_sys_attrs(request, item), Negotiated(media, ctx), hub.contexts)


@router.patch("/subscriptions/{sub_id}", status_code=204)
async def update_subscription(sub_id: str, request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    await _may_change(request, access.tenant, sub_id)
    await access.audited("subscription.update", sub_id, subscriptions_of(request).update(
        access.tenant, sub_id, body, ctx, owner=owner_claims(access.principal)))
    return Response(status_code=204)


@router.delete("/subscriptions/{sub_id}", status_code=204)
async def delete_subscription(sub_id: str, request: Request) -> Response:
    access = await access_of(request)
    await _may_change(request, access.tenant, sub_id)
    await subscriptions_of(request).delete(access.tenant, sub_id)
    await access.record("subscription.delete", sub_id)
    return Response(status_code=204)
