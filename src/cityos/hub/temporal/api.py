"""The NGSI-LD temporal API at /ngsi-ld/v1/temporal/entities, and the history-retention admin endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.hub.api import Hub, build_query, hub_of
from cityos.hub.http import (
    Negotiated,
    accepted,
    body_context,
    page_links,
    parse_bool,
    query_context,
    read_body,
    render,
    tenant_of,
)
from cityos.hub.model import check_name
from cityos.hub.temporal.params import TemporalQuery, parse_temporal_query
from cityos.hub.temporal.render import render_temporal_entity
from cityos.hub.temporal.retention import MAX_DAYS, default_days, drop_policy, list_policies, set_policy
from cityos.hub.temporal.service import TemporalResult, TemporalService

PREFIX = "/ngsi-ld/v1/temporal"
router = APIRouter(prefix=PREFIX, tags=["NGSI-LD temporal"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])


def temporal_of(request: Request) -> TemporalService:
    service: TemporalService = request.app.state.temporal
    return service


def _no_content(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, headers=headers)


def _respond(request: Request, hub: Hub, neg: Negotiated, result: TemporalResult, tq: TemporalQuery,
             payload: Any, headers: dict[str, str]) -> Response:
    if result.range is not None:
        headers["Content-Range"] = result.range.header()
    tenant = tenant_of(request)
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    return render(request, payload, neg, hub.contexts, status=206 if result.range else 200, headers=headers)


# ---------------------------------------------------------------------- reads


@router.get("/entities")
async def query_temporal(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    params = dict(request.query_params)
    tq = parse_temporal_query(params, ctx.expand)
    query = build_query(request, ctx, hub.settings, params)
    result = await temporal_of(request).query(tenant_of(request), query, tq)
    entities = result.entities if query.limit else []
    headers: dict[str, str] = {}
    if result.total is not None:
        headers["NGSILD-Results-Count"] = str(result.total)
    payload = [render_temporal_entity(e, ctx.compact, tq) for e in entities]
    response = _respond(request, hub, Negotiated(media, ctx), result, tq, payload, headers)
    links = page_links(request, query.offset, query.limit, len(entities), entities[-1].id if entities else None,
                       result.total)
    if links:
        existing = response.headers.get("Link")
        response.headers["Link"] = f"{existing}, {links}" if existing else links
    return response


@router.get("/entities/{entity_id}")
async def retrieve_temporal(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    tq = parse_temporal_query(dict(request.query_params), ctx.expand)
    result = await temporal_of(request).retrieve(tenant_of(request), entity_id, tq)
    payload = render_temporal_entity(result.entities[0], ctx.compact, tq)
    return _respond(request, hub, Negotiated(media, ctx), result, tq, payload, {})


# ---------------------------------------------------------------------- writes


@router.post("/entities")
async def upsert_temporal(request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    created = await temporal_of(request).upsert_evolution(tenant_of(request), body, ctx)
    if created:
        return _no_content(201, {"Location": f"{PREFIX}/entities/{body.get('id', body.get('@id'))}"})
    return _no_content()


@router.post("/entities/{entity_id}/attrs")
async def append_temporal_attrs(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    await temporal_of(request).append_instances(tenant_of(request), entity_id, body, ctx)
    return _no_content()


@router.delete("/entities/{entity_id}")
async def delete_temporal(entity_id: str, request: Request) -> Response:
    await temporal_of(request).delete_evolution(tenant_of(request), entity_id)
    return _no_content()


@router.delete("/entities/{entity_id}/attrs/{attr_id}")
async def delete_temporal_attr(entity_id: str, attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    ctx = await query_context(request, hub.resolver)
    delete_all = parse_bool(request.query_params.get("deleteAll"), "deleteAll")
    await temporal_of(request).delete_attr(tenant_of(request), entity_id, attr_id, ctx,
                                           request.query_params.get("datasetId"), delete_all)
    return _no_content()


@router.patch("/entities/{entity_id}/attrs/{attr_id}/{instance_id}")
async def patch_temporal_instance(entity_id: str, attr_id: str, instance_id: str, request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)
    await temporal_of(request).patch_instance(tenant_of(request), entity_id, attr_id, instance_id, body, ctx)
    return _no_content()


@router.delete("/entities/{entity_id}/attrs/{attr_id}/{instance_id}")
async def delete_temporal_instance(entity_id: str, attr_id: str, instance_id: str, request: Request) -> Response:
    hub = hub_of(request)
    ctx = await query_context(request, hub.resolver)
    await temporal_of(request).delete_instance(tenant_of(request), entity_id, attr_id, instance_id, ctx)
    return _no_content()


# ---------------------------------------------------------------------- retention admin
# Policies of the tenant named by NGSILD-Tenant. Entity types are expanded with the @context of
# the Link header, as in the NGSI-LD API. (Access control arrives with the security domain.)


@admin_router.get("/history-retention")
async def get_retention(request: Request) -> Response:
    hub = hub_of(request)
    ctx = await query_context(request, hub.resolver)
    async with hub.service.store.read() as conn:
        policies = await list_policies(conn, tenant_of(request))
    body = {"defaultDays": default_days(),
            "policies": [{"entityType": ctx.compact(p.entity_type) if p.entity_type else None, "days": p.days}
                         for p in policies]}
    return Response(orjson.dumps(body), media_type="application/json")


@admin_router.put("/history-retention", status_code=204)
async def put_retention(request: Request) -> Response:
    """Body: {"days": 30} for the whole tenant, or {"entityType": "AirQualityObserved", "days": 7}."""
    hub = hub_of(request)
    body, _media = await read_body(request, hub.settings)
    ctx = await query_context(request, hub.resolver)
    if not isinstance(body, dict) or set(body) - {"days", "entityType"}:
        raise BadRequestData('the body must be {"days": n} or {"entityType": "T", "days": n}')
    days = body.get("days")
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise BadRequestData(f"days must be an integer from 1 to {MAX_DAYS}")
    entity_type = _policy_type(body.get("entityType"), ctx.expand)
    async with hub.service.store.write() as conn:
        await hub.service.store.ensure_tenant(conn, tenant_of(request))
        await set_policy(conn, tenant_of(request), entity_type, days)
    return _no_content()


@admin_router.delete("/history-retention", status_code=204)
async def delete_retention(request: Request) -> Response:
    hub = hub_of(request)
    ctx = await query_context(request, hub.resolver)
    entity_type = _policy_type(request.query_params.get("entityType"), ctx.expand)
    async with hub.service.store.write() as conn:
        if not await drop_policy(conn, tenant_of(request), entity_type):
            raise ResourceNotFound("no such retention policy")
    return _no_content()


def _policy_type(raw: Any, expand: Any) -> str:
    if raw is None:
        return ""
    return str(expand(check_name(raw, "entity type")))
