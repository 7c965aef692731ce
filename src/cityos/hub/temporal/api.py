"""The NGSI-LD temporal API at /ngsi-ld/v1/temporal/entities, and the history-retention admin endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.hub.access import access_of
from cityos.hub.api import Hub, build_query, hub_of, require_selector
from cityos.hub.http import (
    Negotiated,
    accepted,
    body_context,
    page_links,
    parse_bool,
    query_context,
    read_body,
    render,
    split_list,
    tenant_of,
)
from cityos.hub.model import body_id, check_name
from cityos.hub.projection import project_rendered, projection_of
from cityos.hub.temporal.params import TemporalQuery, parse_temporal_query
from cityos.hub.temporal.render import only_datasets, render_temporal_entity
from cityos.hub.temporal.retention import MAX_DAYS, default_days, drop_policy, list_policies, set_policy
from cityos.hub.temporal.service import TemporalResult, TemporalService
from cityos.security.api import require

PREFIX = "/ngsi-ld/v1/temporal"
router = APIRouter(prefix=PREFIX, tags=["NGSI-LD temporal"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require("tenant.manage"))])
READ = [Depends(require("entity.read"))]
WRITE = [Depends(require("entity.write"))]
DELETE = [Depends(require("entity.delete"))]


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


def _dataset_filter(params: Any) -> frozenset[str] | None:
    names = split_list(params.get("datasetId"))
    return frozenset(names) if names else None


@router.get("/entities", dependencies=READ)
async def query_temporal(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    params = dict(request.query_params)
    tq = parse_temporal_query(params, ctx.expand)
    require_selector(params)
    query = build_query(request, ctx, hub.settings, params)
    access = await access_of(request)
    # The same refusal of filters on attributes hidden from the caller as for entity queries (403).
    plan = await access.plan_query(query, restrict_sql=False)
    query = plan.query
    if plan.empty:
        result = TemporalResult([], 0 if query.count else None, None)
    else:
        result = await temporal_of(request).query(access.tenant, query, tq)
    entities = result.entities if query.limit else []
    last_id, returned = (entities[-1].id if entities else None), len(entities)
    if plan.checks:
        entities = [e for e in entities if access.matches_temporal(plan, e)]
    entities = [seen for seen in (access.view_temporal(e) for e in entities) if seen is not None]
    await access.finish()
    if tq.lower is not None or tq.upper is not None:
        # A temporal query with timerel matches the entities with instances in its interval (§5.7.4);
        # an attribute cut by paging (kept, empty) still counts: its instances are in a later part.
        entities = [e for e in entities if e.instances or e.buckets]
    dataset_ids = _dataset_filter(params)
    if dataset_ids is not None:
        # An entity none of whose instances has one of the datasetIds has nothing to show.
        entities = [e for e in (only_datasets(e, dataset_ids) for e in entities) if e.instances or e.buckets]
    headers: dict[str, str] = {}
    if result.total is not None and plan.exact:
        headers["NGSILD-Results-Count"] = str(result.total)
    pick, omit = projection_of(params, ctx.expand)
    payload = [out for out in (project_rendered(render_temporal_entity(e, ctx.compact, tq), pick, omit, ctx.expand)
                               for e in entities) if out]
    response = _respond(request, hub, Negotiated(media, ctx), result, tq, payload, headers)
    links = page_links(request, query.offset, query.limit, returned, last_id, result.total,
                       keyset=not query.order_by)
    if links:
        existing = response.headers.get("Link")
        response.headers["Link"] = f"{existing}, {links}" if existing else links
    return response


@router.get("/entities/{entity_id}", dependencies=READ)
async def retrieve_temporal(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    tq = parse_temporal_query(dict(request.query_params), ctx.expand)
    pick, omit = projection_of(request.query_params, ctx.expand)
    access = await access_of(request)
    result = await temporal_of(request).retrieve(access.tenant, entity_id, tq)
    seen = access.view_temporal(result.entities[0])
    if seen is None:
        raise ResourceNotFound(f"entity {entity_id} not found")
    await access.finish()
    if tq.attrs and not any(iri in seen.instances or iri in seen.buckets or iri in (seen.current_attrs or {})
                            for iri in tq.attrs):
        raise ResourceNotFound(f"entity {entity_id} has none of the attributes asked for")  # §5.7.3, as §5.7.1
    seen = only_datasets(seen, _dataset_filter(request.query_params))
    payload = project_rendered(render_temporal_entity(seen, ctx.compact, tq), pick, omit, ctx.expand)
    if not payload:
        raise ResourceNotFound(f"pick/omit leave nothing of entity {entity_id}")
    return _respond(request, hub, Negotiated(media, ctx), result, tq, payload, {})


# ---------------------------------------------------------------------- writes


# Every history write runs under the caller's write guard (`Access.audited`): the temporal service
# checks the entity id it actually writes (after parsing `id`/`@id`) against the entity's current
# state, inside the write transaction.


@router.post("/entities", dependencies=WRITE)
async def upsert_temporal(request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    named = body_id(body) if isinstance(body, dict) else None
    entity_id, created = await access.audited("temporal.upsert", str(named or "")[:256],
                                              temporal_of(request).upsert_evolution(access.tenant, body, ctx))
    if created:
        return _no_content(201, {"Location": f"{PREFIX}/entities/{entity_id}"})
    return _no_content()


@router.post("/entities/{entity_id}/attrs", dependencies=WRITE)
async def append_temporal_attrs(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    await access.audited("temporal.append", entity_id,
                         temporal_of(request).append_instances(access.tenant, entity_id, body, ctx))
    return _no_content()


@router.delete("/entities/{entity_id}", dependencies=DELETE)
async def delete_temporal(entity_id: str, request: Request) -> Response:
    access = await access_of(request)
    await access.audited("temporal.delete", entity_id, temporal_of(request).delete_evolution(access.tenant, entity_id))
    return _no_content()


@router.delete("/entities/{entity_id}/attrs/{attr_id}", dependencies=WRITE)
async def delete_temporal_attr(entity_id: str, attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    ctx = await query_context(request, hub.resolver)
    delete_all = parse_bool(request.query_params.get("deleteAll"), "deleteAll")
    await access.audited("temporal.delete_attr", entity_id, temporal_of(request).delete_attr(
        access.tenant, entity_id, attr_id, ctx, request.query_params.get("datasetId"), delete_all),
        attr=attr_id[:256])
    return _no_content()


@router.patch("/entities/{entity_id}/attrs/{attr_id}/{instance_id}", dependencies=WRITE)
async def patch_temporal_instance(entity_id: str, attr_id: str, instance_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)
    await access.audited("temporal.patch_instance", entity_id, temporal_of(request).patch_instance(
        access.tenant, entity_id, attr_id, instance_id, body, ctx), attr=attr_id[:256])
    return _no_content()


@router.delete("/entities/{entity_id}/attrs/{attr_id}/{instance_id}", dependencies=WRITE)
async def delete_temporal_instance(entity_id: str, attr_id: str, instance_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    ctx = await query_context(request, hub.resolver)
    await access.audited("temporal.delete_instance", entity_id, temporal_of(request).delete_instance(
        access.tenant, entity_id, attr_id, instance_id, ctx), attr=attr_id[:256])
    return _no_content()


# ---------------------------------------------------------------------- retention admin
# Policies of the tenant named by NGSILD-Tenant. Entity types are expanded with the @context of
# the Link header, as in the NGSI-LD API. The router needs tenant.manage.


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
    await (await access_of(request)).record("retention.set", entity_type or "*", days=days)
    return _no_content()


@admin_router.delete("/history-retention", status_code=204)
async def delete_retention(request: Request) -> Response:
    hub = hub_of(request)
    ctx = await query_context(request, hub.resolver)
    entity_type = _policy_type(request.query_params.get("entityType"), ctx.expand)
    async with hub.service.store.write() as conn:
        if not await drop_policy(conn, tenant_of(request), entity_type):
            raise ResourceNotFound("no such retention policy")
    await (await access_of(request)).record("retention.delete", entity_type or "*")
    return _no_content()


def _policy_type(raw: Any, expand: Any) -> str:
    if raw is None:
        return ""
    return str(expand(check_name(raw, "entity type")))


# ---------------------------------------------------------------------- data classes admin
# The data class of each attribute of an entity type, for this tenant (see cityos.security.classes).
# Kept as DataClassPolicy entities in the hub, so every process sees them.


@admin_router.get("/data-classes")
async def get_data_classes(request: Request) -> Response:
    hub = hub_of(request)
    ctx = await query_context(request, hub.resolver)
    access = await access_of(request)
    found = access.registry.describe(access.tenant)
    body = {ctx.compact(iri): tc.to_json(ctx.compact) for iri, tc in sorted(found.items())}
    return Response(orjson.dumps(body), media_type="application/json")


def _policy_id(type_iri: str) -> str:
    import hashlib

    return f"urn:ngsi-ld:DataClassPolicy:{hashlib.sha256(type_iri.encode()).hexdigest()[:24]}"


@admin_router.put("/data-classes/{entity_type}", status_code=204)
async def put_data_classes(entity_type: str, request: Request) -> Response:
    """Body: {"attributes": {"name": "sensitive", ...}, "default": "internal", "owningDepartment": "civil"}."""
    from cityos.security.classes import check_class

    hub = hub_of(request)
    access = await access_of(request)
    body, _media = await read_body(request, hub.settings)
    ctx = await query_context(request, hub.resolver)
    if not isinstance(body, dict) or set(body) - {"attributes", "default", "owningDepartment"}:
        raise BadRequestData('the body is {"attributes": {"attr": "class"}, "default": "class", '
                             '"owningDepartment": "dept"}')
    attrs = body.get("attributes") or {}
    dept = body.get("owningDepartment")
    try:
        if not isinstance(attrs, dict) or len(attrs) > 1000:
            raise ValueError("attributes must be an object of at most 1000 attribute names")
        classes = {ctx.expand(check_name(str(k))): check_class(v) for k, v in attrs.items()}
        default = check_class(body.get("default", "internal"))
        if dept is not None and (not isinstance(dept, str) or not 0 < len(dept) <= 128):
            raise ValueError("owningDepartment must be a string of 1-128 characters")
    except ValueError as exc:
        raise BadRequestData(str(exc)) from exc
    type_iri = ctx.expand(check_name(entity_type, "entity type"))
    entity: dict[str, Any] = {
        "id": _policy_id(type_iri), "type": "DataClassPolicy",
        "entityType": {"type": "Property", "value": type_iri},
        "defaultClass": {"type": "Property", "value": default},
        "attributeClasses": {"type": "Property", "value": [{"attribute": k, "dataClass": v}
                                                            for k, v in sorted(classes.items())]}}
    if dept:
        entity["owningDepartment"] = {"type": "Property", "value": dept}
    with access.guarding():
        result = await hub.service.batch_write(access.tenant, [entity], hub.resolver.core, "upsert", set())
    if result.errors:
        raise BadRequestData(str(result.errors[0]["error"].get("detail")))
    access.registry.forget_tenant(access.tenant)
    await access.record("dataclass.set", type_iri, attributes={k: v for k, v in sorted(classes.items())},
                        default=default, owningDepartment=dept)
    return _no_content()


@admin_router.delete("/data-classes/{entity_type}", status_code=204)
async def delete_data_classes(entity_type: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    ctx = await query_context(request, hub.resolver)
    type_iri = ctx.expand(check_name(entity_type, "entity type"))
    with access.guarding():
        await hub.service.delete_entity(access.tenant, _policy_id(type_iri))
    access.registry.forget_tenant(access.tenant)
    await access.record("dataclass.delete", type_iri)
    return _no_content()
