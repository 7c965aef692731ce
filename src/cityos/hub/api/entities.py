"""The entity routes (/entities...): create, query, purge, retrieve, replace, merge, delete, and the
attribute operations. Writes reach the context sources registered for the entity too (§4.3.6)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, InvalidRequest, ResourceNotFound
from cityos.hub.access import Access, access_of
from cityos.hub.api.common import (
    DELETE,
    ENTITY_BODY,
    FRAGMENT_BODY,
    PREFIX,
    QUERY_PARAMS,
    READ,
    READ_PARAMS,
    WRITE,
    Hub,
    _no_content,
    hub_of,
)
from cityos.hub.api.query import build_query, require_selector, respond_entities
from cityos.hub.api.views import View, entity_out, geojson_feature, joined, view_of
from cityos.hub.http import (
    GEO_JSON,
    JSON,
    Negotiated,
    accepted,
    body_context,
    parse_bool,
    query_context,
    read_body,
    render,
    split_list,
)
from cityos.hub.jsonld import ActiveContext
from cityos.hub.model import check_entity_id, check_name
from cityos.hub.registrations.federation import federate_query, federate_retrieve
from cityos.hub.registrations.writes import WriteRequest, entity_path, federate_write
from cityos.hub.service import UpdateResult
from cityos.hub.store import EntityRecord

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD"])


def _update_result(result: UpdateResult) -> Response:
    if not result.not_updated:
        return _no_content()
    body = {"updated": result.updated, "notUpdated": result.not_updated}
    return Response(orjson.dumps(body), status_code=207, media_type="application/json")


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
