"""The NGSI-LD subscription API at /ngsi-ld/v1/subscriptions (ETSI GS CIM 009 v1.8.1 §5.8)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

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
    tenant_of,
)
from cityos.hub.subscriptions.service import SubscriptionService, owner_claims
from cityos.security.api import require

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD subscriptions"],
                   dependencies=[Depends(require("subscription.manage"))])


def subscriptions_of(request: Request) -> SubscriptionService:
    service: SubscriptionService = request.app.state.subscriptions
    return service


@router.post("/subscriptions", status_code=201)
async def create_subscription(request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    # Notifications are masked for the subscriber: the creator's role and departments travel with it.
    sub_id = await subscriptions_of(request).create(access.tenant, body, ctx, owner=owner_claims(access.principal))
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
    items, total = await subscriptions_of(request).query(tenant, ctx.compact, limit, offset, count)
    headers: dict[str, str] = {}
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    response = render(request, items, Negotiated(media, ctx), hub.contexts, headers=headers)
    links = page_links(request, offset, limit, len(items), items[-1]["id"] if items else None, total)
    if links:
        response.headers["Link"] = f"{response.headers['Link']}, {links}" if "Link" in response.headers else links
    return response


@router.get("/subscriptions/{sub_id}")
async def retrieve_subscription(sub_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    item = await subscriptions_of(request).retrieve(tenant_of(request), sub_id, ctx.compact)
    return render(request, item, Negotiated(media, ctx), hub.contexts)


@router.patch("/subscriptions/{sub_id}", status_code=204)
async def update_subscription(sub_id: str, request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)
    access = await access_of(request)
    await subscriptions_of(request).update(access.tenant, sub_id, body, ctx, owner=owner_claims(access.principal))
    await access.record("subscription.update", sub_id)
    return Response(status_code=204)


@router.delete("/subscriptions/{sub_id}", status_code=204)
async def delete_subscription(sub_id: str, request: Request) -> Response:
    access = await access_of(request)
    await subscriptions_of(request).delete(access.tenant, sub_id)
    await access.record("subscription.delete", sub_id)
    return Response(status_code=204)
