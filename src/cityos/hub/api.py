"""The NGSI-LD API at /ngsi-ld/v1 (ETSI GS CIM 009 v1.8.1): entities, batch, discovery, @contexts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cityos.config import Settings
from cityos.core.errors import BadRequestData, InvalidRequest, LdContextNotAvailable, ResourceNotFound
from cityos.hub import geoquery
from cityos.hub.access import Access, access_of, batch_audit_detail, denied_in
from cityos.hub.http import (
    GEO_JSON,
    JSON,
    JSON_LD,
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
)
from cityos.hub.jsonld import ActiveContext, ContextResolver, ContextStore, check_shape
from cityos.hub.linked import Linker, join_of
from cityos.hub.model import check_entity_id, check_name, render_entity
from cityos.hub.ordering import parse_order_by
from cityos.hub.projection import nested_projections, project_core, projection_of
from cityos.hub.qlang import parse_q, python_pattern
from cityos.hub.registrations.federation import federate_query, federate_retrieve
from cityos.hub.registrations.writes import WriteRequest, entity_path, federate_write
from cityos.hub.scopeq import parse_scopeq
from cityos.hub.service import BatchResult, HubService, UpdateResult
from cityos.hub.store import EntityQuery, EntityRecord
from cityos.hub.typesel import all_types, is_conjunctive, parse_type_selection, selection_sql
from cityos.security.api import require

PREFIX = "/ngsi-ld/v1"
FORMATS = {"keyValues": "keyValues", "simplified": "keyValues", "concise": "concise", "normalized": "normalized"}


@dataclass
class Hub:
    """What the hub's routers need, built once by the app."""

    settings: Settings
    service: HubService
    resolver: ContextResolver
    contexts: ContextStore


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


@dataclass
class View:
    fmt: str
    sys_attrs: bool
    attrs: list[str] | None
    lang: str | None
    # v1.8 projection (§4.21): `pick` keeps only the named members, `omit` drops them; both may name
    # id, type and scope besides attributes. Attribute names are expanded; core members stay as they are.
    pick: frozenset[str] | None = None
    omit: frozenset[str] = frozenset()
    # Linked entities (§4.5.23): join mode, hops, and the nested projections by relationship IRI.
    join: str | None = None
    join_level: int = 0
    nested: dict[str, tuple[str, str]] = field(default_factory=dict)
    # datasetId filter (§4.5.5, §6.4.3.2): only the instances with one of these datasetIds ("@none": default).
    dataset_ids: frozenset[str] | None = None


def view_of(request: Request, ctx: ActiveContext, params: Any = None) -> View:
    options = split_list(request.query_params.get("options"))
    fmt = "normalized"
    for option in options:
        if option in FORMATS:
            fmt = FORMATS[option]
        elif option not in ("sysAttrs", "normalized"):
            raise InvalidRequest(f"unknown option {option!r}")
    explicit = request.query_params.get("format")
    if explicit:
        if explicit not in FORMATS:
            raise InvalidRequest(f"unknown format {explicit!r}")
        fmt = FORMATS[explicit]
    names = split_list(request.query_params.get("attrs"))
    attrs = [ctx.expand(check_name(n)) for n in names if n not in ("id", "type")] if names else None
    pick, omit = projection_of(request.query_params, ctx.expand)
    join, join_level = join_of(params if params is not None else request.query_params)
    dataset_ids = split_list(request.query_params.get("datasetId"))
    return View(fmt, "sysAttrs" in options, attrs, request.query_params.get("lang"), pick, omit, join, join_level,
                nested_projections(request.query_params, ctx.expand) if join else {},
                frozenset(dataset_ids) if dataset_ids else None)


def linked_view(view: View, iri: str, ctx: ActiveContext) -> View:
    """The view of the entities a relationship links to: the request's format and options, with the
    relationship's nested projection if pick/omit gave one."""
    nested = view.nested.get(iri)
    if nested is None:
        return replace(view, attrs=None, pick=None, omit=frozenset(), nested={})
    params = {nested[0]: nested[1]}
    pick, omit = projection_of(params, ctx.expand)
    return replace(view, attrs=None, pick=pick, omit=omit, nested=nested_projections(params, ctx.expand))


def shows(view: View, iri: str) -> bool:
    return ((view.attrs is None or iri in view.attrs) and (view.pick is None or iri in view.pick)
            and iri not in view.omit)


def linker_for(access: Access, hub: Hub, ctx: ActiveContext) -> Linker[View]:
    async def load(ids: list[str]) -> dict[str, EntityRecord]:
        found = await hub.service.retrieve_many(access.tenant, ids)
        seen = {entity_id: access.view(record) for entity_id, record in found.items()}
        return {entity_id: record for entity_id, record in seen.items() if record is not None}

    return Linker(load, lambda record, view: entity_out(record, ctx, view),
                  lambda view, iri: linked_view(view, iri, ctx), shows, ctx.compact)


async def joined(access: Access, hub: Hub, ctx: ActiveContext, view: View, records: list[EntityRecord],
                 outs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered entities with their linked entities, as `join` asks (inline or flat)."""
    linker = linker_for(access, hub, ctx)
    if view.join == "flat":
        return await linker.flat(records, outs, view, view.join_level)
    for record, out in zip(records, outs, strict=True):
        await linker.inline(record, out, view, view.fmt, view.join_level)
    return outs


def _iso_created(record: EntityRecord) -> tuple[str, str]:
    from cityos.core.clock import iso

    return iso(record.created_at), iso(record.modified_at)


def entity_out(record: EntityRecord, ctx: ActiveContext, view: View) -> dict[str, Any]:
    created, modified = _iso_created(record)
    attrs = record.attrs
    only = view.attrs
    if view.pick is not None:
        only = [iri for iri in attrs if iri in view.pick]
    if view.omit:
        attrs = {iri: instances for iri, instances in attrs.items() if iri not in view.omit}
    if view.dataset_ids is not None:
        attrs = only_datasets(attrs, view.dataset_ids)
    out = render_entity(record.id, record.types, attrs, ctx.compact, fmt=view.fmt, sys_attrs=view.sys_attrs,
                        created_at=created, modified_at=modified, only=only, scope=record.scope, lang=view.lang)
    return project_core(out, view.pick, view.omit)


Instances = dict[str, list[dict[str, Any]]]


def only_datasets(attrs: Instances, dataset_ids: frozenset[str]) -> Instances:
    """The instances whose datasetId is listed ("@none" stands for the default instance); an attribute
    left without instances is left out."""
    kept = {iri: [inst for inst in instances if inst.get("datasetId", "@none") in dataset_ids]
            for iri, instances in attrs.items()}
    return {iri: instances for iri, instances in kept.items() if instances}


def geojson_feature(record: EntityRecord, ctx: ActiveContext, view: View, geo_attr: str) -> dict[str, Any]:
    body = entity_out(record, ctx, view)
    geometry = None
    for inst in record.attrs.get(geo_attr, []):
        if inst.get("type") == "GeoProperty":
            geometry = inst.get("value")
            break
    return {"id": body.pop("id"), "type": "Feature", "geometry": geometry, "properties": body}


def _no_content(headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=204, headers=headers)


def _update_result(result: UpdateResult) -> Response:
    if not result.not_updated:
        return _no_content()
    body = {"updated": result.updated, "notUpdated": result.not_updated}
    return Response(orjson.dumps(body), status_code=207, media_type="application/json")


def _batch_response(result: BatchResult, created_status: bool) -> Response:
    if result.errors:
        body = {"success": result.success, "errors": result.errors}
        return Response(orjson.dumps(body), status_code=207, media_type="application/json")
    if created_status and result.created:
        return Response(orjson.dumps(result.created), status_code=201, media_type="application/json")
    return _no_content()


def build_query(request: Request, ctx: ActiveContext, settings: Settings, params: dict[str, Any]) -> EntityQuery:
    types: list[str] = []
    type_filter: list[Any] = []
    if (params.get("type") or "").strip():
        selection = parse_type_selection(params["type"], ctx.expand)
        types = all_types(selection)  # every type named: the access plan and the index narrow on these
        if is_conjunctive(selection):
            type_filter.append(selection_sql(selection))
    ids = [check_entity_id(i) for i in split_list(params.get("id"))]
    pattern = params.get("idPattern")
    if pattern is not None:
        if len(pattern) > 256:
            raise BadRequestData("idPattern is longer than 256 characters")
        try:
            python_pattern(pattern)
        except ValueError as exc:
            raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc
    attrs = [ctx.expand(check_name(a)) for a in split_list(params.get("attrs"))]
    if any(iri.startswith("@") for iri in attrs):
        # `id` and `type` are the entity's members (@id, @type), not attribute names (§5.7.2: BadRequestData).
        raise BadRequestData("attrs names entity members (id, type), not attributes; pick selects those")
    q_text = params.get("q")
    geo = geoquery.parse_geoquery(params.get("georel"), params.get("geometry"), params.get("coordinates"),
                                  params.get("geoproperty"), ctx.expand)
    count = parse_bool(params.get("count"), "count")
    limit = parse_int(params.get("limit"), "limit", settings.default_page_size, 0, settings.max_page_size)
    if limit == 0 and not count:
        raise BadRequestData("limit=0 is only allowed together with count=true")
    after = params.get("after")
    if after is not None:
        check_entity_id(after)
    scope_text = params.get("scopeQ")
    return EntityQuery(
        scope_q=parse_scopeq(scope_text) if scope_text is not None else None,
        types=types or None, ids=ids or None, id_pattern=pattern, attrs=attrs or None,
        q=parse_q(q_text) if q_text else None, geo=geo, expand=ctx.expand, limit=limit,
        offset=parse_int(params.get("offset"), "offset", 0, 0, 1_000_000_000), after=after, count=count,
        order_by=parse_order_by(params.get("orderBy"), ctx.expand), extra=type_filter,
    )


async def respond_entities(request: Request, hub: Hub, ctx: ActiveContext, query: EntityQuery, view: View,
                           media: str) -> Response:
    access = await access_of(request)
    tenant = access.tenant
    # Filters on attributes the caller may not see are refused (403); types it never sees are left
    # out in SQL so that the count and the pages hold only what it is shown.
    plan = await access.plan_query(query)
    query = plan.query
    records: list[EntityRecord]
    total: int | None
    if plan.empty:
        records, total = [], (0 if query.count else None)
    else:
        records, total = await hub.service.query(tenant, query) if query.limit or query.count else ([], None)
    if query.limit == 0:
        records = []
    last_id, returned = (records[-1].id if records else None), len(records)
    if plan.checks:
        records = [r for r in records if access.matches(plan, r)]
    records = access.view_all(records)
    payload: Any
    if view.join and media != GEO_JSON:
        # An entity that projection leaves without any member is not returned (§4.21).
        shown = [(r, out) for r, out in ((r, entity_out(r, ctx, view)) for r in records) if out]
        payload = await joined(access, hub, ctx, view, [r for r, _ in shown], [out for _, out in shown])
    await access.finish()
    if not plan.exact:
        total = None  # some matches may be withheld from this caller: a count would tell of them
    headers: dict[str, str] = {}
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    links = page_links(request, query.offset, query.limit, returned, last_id, total,
                       keyset=not query.order_by)
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    neg = Negotiated(media, ctx)
    if media == GEO_JSON:
        geo_attr = ctx.expand(request.query_params.get("geometryProperty") or "location")
        payload = {"type": "FeatureCollection", "features": [geojson_feature(r, ctx, view, geo_attr) for r in records]}
    elif not view.join:
        # An entity that projection leaves without any member is not returned (§4.21).
        payload = [out for out in (entity_out(r, ctx, view) for r in records) if out]
    response = render(request, payload, neg, hub.contexts, headers=headers)
    if links:
        existing = response.headers.get("Link")
        response.headers["Link"] = f"{existing}, {links}" if existing else links
    return response


router = APIRouter(prefix=PREFIX, tags=["NGSI-LD"])


def _param(name: str, description: str, schema: dict[str, Any] | None = None,
           where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": False, "description": description,
            "schema": schema or {"type": "string"}}


TENANT = _param("NGSILD-Tenant", "tenant", where="header")
QUERY_PARAMS = [
    _param("type", "entity types, comma separated"), _param("id", "entity ids, comma separated"),
    _param("idPattern", "regular expression over ids"), _param("attrs", "attribute names, comma separated"),
    _param("q", "NGSI-LD query language"), _param("georel", "near;maxDistance==m | within | ..."),
    _param("geometry", "Point | LineString | Polygon | Multi*"), _param("coordinates", "GeoJSON coordinates"),
    _param("geoproperty", "GeoProperty to query"), _param("limit", "page size", {"type": "integer"}),
    _param("offset", "page start", {"type": "integer"}), _param("count", "return NGSILD-Results-Count",
                                                               {"type": "boolean"}),
    _param("options", "keyValues | concise | sysAttrs"), _param("lang", "language tag"), TENANT,
]
ENTITY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "type"],
    "properties": {"id": {"type": "string", "format": "uri"}, "type": {"type": "string"}},
    "additionalProperties": True,
}
ENTITY_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": ENTITY_SCHEMA}}},
               "parameters": [TENANT]}
FRAGMENT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": True}}}}, "parameters": [TENANT]}
BATCH_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "array", "items": ENTITY_SCHEMA}}}}, "parameters": [TENANT]}
ID_LIST_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "array", "items": {"type": "string"}}}}}, "parameters": [TENANT]}
READ_PARAMS = {"parameters": [_param("attrs", "attribute names"), _param("options", "keyValues | concise | sysAttrs"),
                              _param("lang", "language tag"), TENANT]}


READ = [Depends(require("entity.read"))]
WRITE = [Depends(require("entity.write"))]
DELETE = [Depends(require("entity.delete"))]


@router.post("/entities", status_code=201, openapi_extra=ENTITY_BODY, dependencies=WRITE)
async def create_entity(request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)

    async def run_local(part: Any) -> Response:
        entity_id = await access.audited("entity.create", str(body.get("id", "")) if isinstance(body, dict) else "",
                                         hub.service.create_entity(access.tenant, part, ctx))
        return Response(status_code=201, headers={"Location": f"{PREFIX}/entities/{entity_id}"})

    write = _create_write(body, media, ctx)
    if write is None:
        return await run_local(body)
    return await federate_write(request, write, _no_types, run_local)


async def _no_types() -> list[str] | None:
    return None


def _create_write(body: Any, media: str, ctx: ActiveContext) -> WriteRequest | None:
    """The distributed form of a create, when the body names a valid id and type (else the local
    create refuses it as it is)."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    try:
        entity_id = check_entity_id(body["id"])
        raw = body.get("type")
        types = [ctx.expand(check_name(t, "entity type")) for t in (raw if isinstance(raw, list) else [raw])]
    except (BadRequestData, InvalidRequest, TypeError):
        return None
    return WriteRequest("createEntity", "POST", "/entities", entity_id, body, media, ctx, types=types)


async def _write(request: Request, hub: Hub, access: Access, op: str, entity_id: str, body: Any, media: str,
                 ctx: ActiveContext, run_local: Any, *rest: str, action: str = "entity.write") -> Response:
    """An entity write here and at the context sources registered for the entity (§4.3.6, writes.py)."""
    if body is not None and not isinstance(body, dict):
        return await run_local(body)  # refused by the local write as it is

    async def local_types() -> list[str] | None:
        found = await hub.service.retrieve_many(access.tenant, [entity_id])
        record = found.get(entity_id)
        return list(record.types) if record is not None else None

    write = WriteRequest(op, request.method, entity_path(entity_id, *rest), entity_id, body, media, ctx,
                         attr=rest[-1] if len(rest) == 2 else None, action=action)
    return await federate_write(request, write, local_types, run_local)


QUERY_SELECTORS = ("type", "attrs", "q", "georel", "geometry", "coordinates")


def require_selector(params: dict[str, Any]) -> None:
    """v1.8.1 §5.7.2.4 / §5.7.4.4 (bindings §6.4.3.2, §6.18.3.2): a query naming no entity type, no
    attribute, no NGSI-LD query and no geo-query is refused with BadRequestData unless it asks for
    the whole local store with `local=true`; a list of ids alone does not make it a query.

    Only the NGSI-LD query routes check this: CityOS's own pages and workers query through the
    service layer (and name a type where they use these routes)."""
    if any((params.get(name) or "").strip() for name in QUERY_SELECTORS):
        return
    if parse_bool(params.get("local"), "local"):
        return
    raise BadRequestData("A query needs type, attrs, q or a geo-query (or local=true for every local entity)")


@router.get("/entities", openapi_extra={"parameters": QUERY_PARAMS}, dependencies=READ)
async def query_entities(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request, allow_geo=True)
    ctx = await query_context(request, hub.resolver)
    require_selector(dict(request.query_params))
    query = build_query(request, ctx, hub.settings, dict(request.query_params))
    response = await respond_entities(request, hub, ctx, query, view_of(request, ctx), media)
    return await federate_query(request, ctx, query, media, response)  # registered context sources (§4.3.6)


PURGE_SELECTORS = ("type", "id", "idPattern", "q", "georel", "scopeQ")


@router.delete("/entities", status_code=204, dependencies=DELETE)
async def purge_entities(request: Request) -> Response:
    """Purge entities (v1.8.1 §5.6.21): delete every matching entity, or with `drop`/`keep` only
    some of their attributes. An unfiltered purge must say `local=true`, so that a bare DELETE on the
    collection never empties the hub by accident."""
    hub = hub_of(request)
    access = await access_of(request)
    params = dict(request.query_params)
    drop, keep = params.pop("drop", None), params.pop("keep", None)
    if drop is not None and keep is not None:
        raise BadRequestData("drop and keep cannot be used together")
    local = parse_bool(params.pop("local", None), "local")
    if not local and not any(params.get(name) for name in PURGE_SELECTORS):
        raise BadRequestData("purge needs type, id, idPattern, q or a geo-query (or local=true for all entities)")
    ctx = await query_context(request, hub.resolver)
    names = split_list(drop if drop is not None else keep)
    if (drop is not None or keep is not None) and not names:
        raise BadRequestData("drop and keep need attribute names")
    chosen = {ctx.expand(check_name(n)) for n in names}
    params.update(limit=str(hub.settings.max_page_size), offset="0")
    query = build_query(request, ctx, hub.settings, params)
    plan = await access.plan_query(query)
    matched: list[EntityRecord] = []
    while not plan.empty:
        page, _total = await hub.service.query(access.tenant, plan.query)
        matched += [r for r in page if not plan.checks or access.matches(plan, r)]
        if len(page) < plan.query.limit:
            break
        plan.query.after = page[-1].id
    for record in matched:
        if drop is None and keep is None:
            await access.audited("entity.delete", record.id, hub.service.delete_entity(access.tenant, record.id))
            continue
        doomed = [iri for iri in record.attrs if (iri in chosen) == (drop is not None)]
        for iri in doomed:
            await access.audited("entity.delete_attr", record.id, hub.service.delete_attr(
                access.tenant, record.id, iri, ctx, None, True), attr=iri[:256])
    return _no_content()


async def visible_record(access: Access, hub: Hub, entity_id: str) -> EntityRecord:
    """The entity as the caller may see it; 404 when it may see none of it (its existence is not told)."""
    record = access.view(await hub.service.retrieve(access.tenant, entity_id))
    if record is None:
        raise ResourceNotFound(f"entity {entity_id} not found")
    await access.finish()
    return record


@router.get("/entities/{entity_id}", openapi_extra=READ_PARAMS, dependencies=READ)
async def retrieve_entity(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request, allow_geo=True)
    ctx = await query_context(request, hub.resolver)
    view = view_of(request, ctx)
    try:
        response = await _retrieve_local(request, hub, ctx, view, media, entity_id)
    except ResourceNotFound as missing:
        return await federate_retrieve(request, ctx, entity_id, media, None, missing, hub.contexts)
    return await federate_retrieve(request, ctx, entity_id, media, response, None, hub.contexts)


async def _retrieve_local(request: Request, hub: Hub, ctx: ActiveContext, view: View, media: str,
                          entity_id: str) -> Response:
    record = await visible_record(await access_of(request), hub, entity_id)
    if view.attrs is not None and not any(iri in record.attrs for iri in view.attrs):
        raise ResourceNotFound(f"entity {entity_id} has none of the attributes asked for")  # §5.7.1
    if media == GEO_JSON:
        geo_attr = ctx.expand(request.query_params.get("geometryProperty") or "location")
        return render(request, geojson_feature(record, ctx, view, geo_attr), Negotiated(media, ctx), hub.contexts)
    out = entity_out(record, ctx, view)
    if not out:
        raise ResourceNotFound(f"pick/omit leave nothing of entity {entity_id}")
    if view.join:
        access = await access_of(request)
        linked = await joined(access, hub, ctx, view, [record], [out])
        await access.finish()
        return render(request, linked if view.join == "flat" else linked[0], Negotiated(media, ctx), hub.contexts)
    return render(request, out, Negotiated(media, ctx), hub.contexts)


@router.put("/entities/{entity_id}", status_code=204, openapi_extra=FRAGMENT_BODY, dependencies=WRITE)
async def replace_entity(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)

    async def run_local(part: Any) -> Response:
        await access.audited("entity.replace", entity_id, hub.service.replace_entity(access.tenant, entity_id, part,
                                                                                      ctx))
        return _no_content()

    return await _write(request, hub, access, "replaceEntity", entity_id, body, media, ctx, run_local)


@router.patch("/entities/{entity_id}", status_code=204, openapi_extra=FRAGMENT_BODY, dependencies=WRITE)
async def merge_entity(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)

    async def run_local(part: Any) -> Response:
        await access.audited("entity.merge", entity_id, hub.service.merge_entity(access.tenant, entity_id, part, ctx))
        return _no_content()

    return await _write(request, hub, access, "mergeEntity", entity_id, body, media, ctx, run_local)


@router.delete("/entities/{entity_id}", status_code=204, dependencies=DELETE)
async def delete_entity(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)

    async def run_local(part: Any) -> Response:
        await access.audited("entity.delete", entity_id, hub.service.delete_entity(access.tenant, entity_id))
        return _no_content()

    ctx = await query_context(request, hub.resolver)
    return await _write(request, hub, access, "deleteEntity", entity_id, None, JSON, ctx, run_local,
                        action="entity.delete")


@router.post("/entities/{entity_id}/attrs", openapi_extra=FRAGMENT_BODY, dependencies=WRITE)
async def append_attrs(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)
    options = split_list(request.query_params.get("options"))

    async def run_local(part: Any) -> Response:
        return _update_result(await access.audited("entity.append_attrs", entity_id, hub.service.append_attrs(
            access.tenant, entity_id, part, ctx, "noOverwrite" in options)))

    return await _write(request, hub, access, "appendAttrs", entity_id, body, media, ctx, run_local, "attrs")


@router.patch("/entities/{entity_id}/attrs", openapi_extra=FRAGMENT_BODY, dependencies=WRITE)
async def update_attrs(entity_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)

    async def run_local(part: Any) -> Response:
        return _update_result(await access.audited("entity.update_attrs", entity_id, hub.service.update_attrs(
            access.tenant, entity_id, part, ctx)))

    return await _write(request, hub, access, "updateAttrs", entity_id, body, media, ctx, run_local, "attrs")


@router.patch("/entities/{entity_id}/attrs/{attr_id}", status_code=204, openapi_extra=FRAGMENT_BODY,
              dependencies=WRITE)
async def patch_attr(entity_id: str, attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=True)
    ctx = await body_context(request, hub.resolver, body, media)

    async def run_local(part: Any) -> Response:
        await access.audited("entity.patch_attr", entity_id, hub.service.patch_attr(
            access.tenant, entity_id, attr_id, part, ctx), attr=attr_id[:256])
        return _no_content()

    return await _write(request, hub, access, "updateAttrs", entity_id, body, media, ctx, run_local, "attrs",
                        attr_id)


@router.put("/entities/{entity_id}/attrs/{attr_id}", status_code=204, openapi_extra=FRAGMENT_BODY,
            dependencies=WRITE)
async def replace_attr(entity_id: str, attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings)
    ctx = await body_context(request, hub.resolver, body, media)

    async def run_local(part: Any) -> Response:
        await access.audited("entity.replace_attr", entity_id, hub.service.replace_attr(
            access.tenant, entity_id, attr_id, part, ctx), attr=attr_id[:256])
        return _no_content()

    return await _write(request, hub, access, "replaceAttrs", entity_id, body, media, ctx, run_local, "attrs",
                        attr_id)


@router.delete("/entities/{entity_id}/attrs/{attr_id}", status_code=204, dependencies=WRITE)
async def delete_attr(entity_id: str, attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    ctx = await query_context(request, hub.resolver)
    dataset_id = request.query_params.get("datasetId")
    delete_all = parse_bool(request.query_params.get("deleteAll"), "deleteAll")

    async def run_local(part: Any) -> Response:
        await access.audited("entity.delete_attr", entity_id, hub.service.delete_attr(
            access.tenant, entity_id, attr_id, ctx, dataset_id, delete_all), attr=attr_id[:256])
        return _no_content()

    return await _write(request, hub, access, "deleteAttrs", entity_id, None, JSON, ctx, run_local, "attrs", attr_id)


# ---------------------------------------------------------------------- batch


async def _audit_batch(access: Access, action: str, result: BatchResult) -> None:
    denied = denied_in(result.errors)
    if denied:
        await access.record(action, f"{len(denied)} entities", "denied", ids=denied[:100])
    if result.success:
        await access.record(action, result.success[0] if len(result.success) == 1 else
                            f"{len(result.success)} entities", **batch_audit_detail(result.success, result.errors))
    await access.settle()


def _batch_context_errors(body: list[Any], media: str) -> tuple[list[Any], BatchResult]:
    """Entities whose @context does not fit the Content-Type fail on their own (207, §6.3.5),
    not the whole batch: JSON carries no @context in the body, JSON-LD must."""
    kept, refused = [], BatchResult()
    for entity in body:
        has_context = isinstance(entity, dict) and "@context" in entity
        entity_id = entity.get("id") if isinstance(entity, dict) else None
        if media == JSON_LD and not has_context:
            refused.fail(entity_id, BadRequestData("an application/ld+json entity must contain an @context"))
        elif media != JSON_LD and has_context:
            refused.fail(entity_id, BadRequestData("an application/json entity must not contain @context; "
                                                   "use the Link header"))
        else:
            kept.append(entity)
    return kept, refused


async def _batch(request: Request, mode: str) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, media = await read_body(request, hub.settings, allow_merge_patch=mode == "merge")
    if isinstance(body, list) and len(body) > hub.settings.max_batch_entities:
        raise BadRequestData(f"a batch may hold at most {hub.settings.max_batch_entities} entities "
                             "(CITYOS_MAX_BATCH_ENTITIES)")
    if isinstance(body, list) and not body:
        raise BadRequestData("a batch needs at least one entity")
    refused = BatchResult()
    if isinstance(body, list):
        body, refused = _batch_context_errors(body, media)
        if not body:
            return _batch_response(refused, created_status=False)
    try:
        ctx = await body_context(request, hub.resolver, body, media)
    except LdContextNotAvailable as exc:
        # Each entity fails on its own (§6.3.5: 207 with the reason per entity), not the batch.
        for entity in body if isinstance(body, list) else []:
            refused.fail(entity.get("id") if isinstance(entity, dict) else None, exc)
        return _batch_response(refused, created_status=False)
    options = set(split_list(request.query_params.get("options")))
    with access.guarding(f"entity.batch_{mode}", "batch"):
        result = await hub.service.batch_write(access.tenant, body, ctx, mode, options)
    result.errors[:0] = refused.errors
    await _audit_batch(access, f"entity.batch_{mode}", result)
    return _batch_response(result, created_status=mode in ("create", "upsert"))


@router.post("/entityOperations/create", openapi_extra=BATCH_BODY, dependencies=WRITE)
async def batch_create(request: Request) -> Response:
    return await _batch(request, "create")


@router.post("/entityOperations/upsert", openapi_extra=BATCH_BODY, dependencies=WRITE)
async def batch_upsert(request: Request) -> Response:
    return await _batch(request, "upsert")


@router.post("/entityOperations/update", openapi_extra=BATCH_BODY, dependencies=WRITE)
async def batch_update(request: Request) -> Response:
    return await _batch(request, "update")


@router.post("/entityOperations/merge", openapi_extra=BATCH_BODY, dependencies=WRITE)
async def batch_merge(request: Request) -> Response:
    return await _batch(request, "merge")


@router.post("/entityOperations/delete", openapi_extra=ID_LIST_BODY, dependencies=DELETE)
async def batch_delete(request: Request) -> Response:
    hub = hub_of(request)
    access = await access_of(request)
    body, _media = await read_body(request, hub.settings)
    if isinstance(body, list) and not body:
        raise BadRequestData("a batch needs at least one entity id")
    with access.guarding("entity.batch_delete", "batch"):
        result = await hub.service.batch_delete(access.tenant, body)
    await _audit_batch(access, "entity.batch_delete", result)
    return _batch_response(result, created_status=False)


def _selectors_params(selectors: list[dict[str, Any]]) -> dict[str, str]:
    """Several EntitySelectors are served when their union is one filter: all name ids (ids and
    types are joined), or all name only types."""
    if len(selectors) == 1:
        return {key: ",".join(value) if isinstance(value, list) else str(value)
                for key, value in selectors[0].items() if key in ("type", "id", "idPattern")}
    def joined(key: str) -> str:
        items: list[str] = []
        for selector in selectors:
            value = selector.get(key)
            items += value if isinstance(value, list) else [str(value)] if value is not None else []
        return ",".join(dict.fromkeys(items))
    if all("id" in s and "idPattern" not in s for s in selectors):
        return {k: v for k, v in (("id", joined("id")), ("type", joined("type"))) if v}
    if all(set(s) <= {"type"} for s in selectors):
        return {"type": joined("type")}
    raise BadRequestData("several EntitySelectors are supported when all give ids or all give only types")


def query_body_params(body: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The query parameters a Query body (§5.2.23) stands for, over those of the URL."""
    selectors = body.get("entities") or []
    if not isinstance(selectors, list) or not all(isinstance(s, dict) for s in selectors):
        raise BadRequestData("Query.entities must be an array of EntitySelector objects")
    if selectors:
        params.update(_selectors_params(selectors))
    if "attrs" in body:
        params["attrs"] = ",".join(body["attrs"]) if isinstance(body["attrs"], list) else str(body["attrs"])
    if "q" in body:
        params["q"] = str(body["q"])
    geo_q = body.get("geoQ")
    if isinstance(geo_q, dict):
        params["georel"] = geo_q.get("georel")
        params["geometry"] = geo_q.get("geometry")
        params["coordinates"] = orjson.dumps(geo_q.get("coordinates")).decode()
        if geo_q.get("geoproperty"):
            params["geoproperty"] = geo_q["geoproperty"]
    for key in ("join", "joinLevel"):  # linked entities (§4.5.23), members of the Query
        if body.get(key) is not None:
            params[key] = str(body[key])
    temporal_q = body.get("temporalQ")
    if isinstance(temporal_q, dict):
        for key in ("timerel", "timeAt", "endTimeAt", "timeproperty", "lastN"):
            if temporal_q.get(key) is not None:
                params[key] = str(temporal_q[key])
    return params


@router.post("/entityOperations/query", openapi_extra=FRAGMENT_BODY, dependencies=READ)
async def batch_query(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request, allow_geo=True)
    body, body_media = await read_body(request, hub.settings)
    if not isinstance(body, dict) or body.get("type") != "Query":
        raise BadRequestData('the body must be a Query object with "type": "Query"')
    ctx = await body_context(request, hub.resolver, body, body_media)
    params = query_body_params(body, dict(request.query_params))
    query = build_query(request, ctx, hub.settings, params)
    return await respond_entities(request, hub, ctx, query, view_of(request, ctx, params), media)


# ---------------------------------------------------------------------- discovery


async def _discovery(request: Request, hub: Hub) -> tuple[list[tuple[str, str, str, int]], dict[str, int]]:
    """The tenant's types and attributes, less what the caller never sees (types none of whose
    attributes it may see, attributes hidden from it by data class)."""
    access = await access_of(request)
    pairs, counts = await hub.service.discovery(access.tenant)
    types = {t: n for t, n in counts.items() if access.visible_type(t)}
    return [p for p in pairs if p[0] in types and access.visible_attr(p[0], p[1])], types


def _list_id(kind: str, members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(members).encode()).hexdigest()[:16]
    return f"urn:ngsi-ld:{kind}:{digest}"


@router.get("/types", dependencies=READ)
async def list_types(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    pairs, counts = await _discovery(request, hub)
    names = sorted(ctx.compact(t) for t in counts)
    if parse_bool(request.query_params.get("details"), "details"):
        by_type: dict[str, set[str]] = {t: set() for t in counts}
        for etype, attr, _atype, _n in pairs:
            by_type.setdefault(etype, set()).add(ctx.compact(attr))
        payload: Any = [{"id": t, "type": "EntityType", "typeName": ctx.compact(t),
                         "attributeNames": sorted(attrs)} for t, attrs in sorted(by_type.items())]
    else:
        payload = {"id": _list_id("EntityTypeList", names), "type": "EntityTypeList", "typeList": names}
    return render(request, payload, Negotiated(media, ctx), hub.contexts)


@router.get("/types/{type_name:path}", dependencies=READ)
async def type_info(type_name: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    iri = ctx.expand(check_name(type_name, "entity type"))
    pairs, counts = await _discovery(request, hub)
    if iri not in counts:
        raise ResourceNotFound(f"no entity of type {type_name}")
    details: dict[str, set[str]] = {}
    for etype, attr, atype, _n in pairs:
        if etype == iri:
            details.setdefault(attr, set()).add(atype or "Property")
    payload = {"id": iri, "type": "EntityTypeInfo", "typeName": ctx.compact(iri), "entityCount": counts[iri],
               "attributeDetails": [{"id": a, "type": "Attribute", "attributeName": ctx.compact(a),
                                     "attributeTypes": sorted(t)} for a, t in sorted(details.items())]}
    return render(request, payload, Negotiated(media, ctx), hub.contexts)


def _attributes(pairs: list[tuple[str, str, str, int]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for etype, attr, atype, n in pairs:
        entry = found.setdefault(attr, {"count": 0, "types": set(), "typeNames": set()})
        entry["count"] += n
        entry["types"].add(atype or "Property")
        entry["typeNames"].add(etype)
    return found


def _attribute_out(iri: str, info: dict[str, Any], ctx: ActiveContext) -> dict[str, Any]:
    return {"id": iri, "type": "Attribute", "attributeName": ctx.compact(iri), "attributeCount": info["count"],
            "attributeTypes": sorted(info["types"]), "typeNames": sorted(ctx.compact(t) for t in info["typeNames"])}


@router.get("/attributes", dependencies=READ)
async def list_attributes(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    pairs, _counts = await _discovery(request, hub)
    found = _attributes(pairs)
    if parse_bool(request.query_params.get("details"), "details"):
        payload: Any = [_attribute_out(iri, info, ctx) for iri, info in sorted(found.items())]
    else:
        names = sorted(ctx.compact(a) for a in found)
        payload = {"id": _list_id("AttributeList", names), "type": "AttributeList", "attributeList": names}
    return render(request, payload, Negotiated(media, ctx), hub.contexts)


@router.get("/attributes/{attr_id:path}", dependencies=READ)
async def attribute_info(attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    iri = ctx.expand(check_name(attr_id))
    pairs, _counts = await _discovery(request, hub)
    found = _attributes(pairs)
    if iri not in found:
        raise ResourceNotFound(f"no attribute {attr_id}")
    return render(request, _attribute_out(iri, found[iri], ctx), Negotiated(media, ctx), hub.contexts)


# ---------------------------------------------------------------------- @contexts


def _context_entry(url: str, kind: str, created: str | None, uses: int) -> dict[str, Any]:
    return {"URL": url, "localId": hashlib.sha256(url.encode()).hexdigest()[:32], "kind": kind,
            "createdAt": created, "numberOfHits": uses}


@router.get("/jsonldContexts", dependencies=READ)
async def list_contexts(request: Request) -> Response:
    hub = hub_of(request)
    details = parse_bool(request.query_params.get("details"), "details")
    entries = [_context_entry(e.url, e.kind, e.fetched_at, e.uses) for e in hub.contexts.documents.values()]
    payload: Any = entries if details else [e["URL"] for e in entries]
    return Response(orjson.dumps(payload), media_type="application/json")


def _find_context(hub: Hub, context_id: str) -> tuple[str, Any] | None:
    for url, entry in hub.contexts.documents.items():
        if context_id in (url, url.rsplit("/", 1)[-1], hashlib.sha256(url.encode()).hexdigest()[:32]):
            return url, entry.body
    return None


@router.get("/jsonldContexts/{context_id:path}", dependencies=READ)
async def get_context(context_id: str, request: Request) -> Response:
    found = _find_context(hub_of(request), context_id)
    if found is None:
        raise ResourceNotFound(f"no @context {context_id}")
    return Response(orjson.dumps(found[1]), media_type="application/ld+json")


@router.delete("/jsonldContexts/{context_id:path}", status_code=204,
               dependencies=[Depends(require("tenant.manage"))])
async def drop_context(context_id: str, request: Request) -> Response:
    hub = hub_of(request)
    found = _find_context(hub, context_id)
    if found is None:
        raise ResourceNotFound(f"no @context {context_id}")
    hub.contexts.drop(found[0])
    hub.resolver.invalidate()
    await (await access_of(request)).record("context.delete", found[0][:512])
    return _no_content()


@router.post("/jsonldContexts", status_code=201, dependencies=WRITE)
async def add_context(request: Request) -> Response:
    hub = hub_of(request)
    body, _media = await read_body(request, hub.settings)
    if not isinstance(body, dict) or "@context" not in body:
        raise BadRequestData("the body must be a JSON object with an @context member")
    size = len(orjson.dumps(body))
    if size > hub.contexts.limits.max_bytes:
        raise BadRequestData(f"the @context document is larger than {hub.contexts.limits.max_bytes} bytes")
    check_shape(body, hub.contexts.limits, "the @context document")
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    url = str(request.base_url).rstrip("/") + f"{PREFIX}/jsonldContexts/{digest}"
    existing = hub.contexts.get(url)
    if existing is None or existing.kind != "Hosted":  # posting the same document again takes no room
        hub.contexts.check_room(size)
    hub.contexts.put(url, body, "Hosted", size)
    await (await access_of(request)).record("context.create", url[:512])
    return Response(status_code=201, headers={"Location": url})
