"""The batch routes (/entityOperations/...): create, upsert, update, merge and delete many entities
at once (207 with the failures per entity), and the query given as a Query body."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, LdContextNotAvailable
from cityos.hub.access import Access, access_of, batch_audit_detail, denied_in
from cityos.hub.api.common import (
    BATCH_BODY,
    DELETE,
    FRAGMENT_BODY,
    ID_LIST_BODY,
    PREFIX,
    READ,
    WRITE,
    _no_content,
    hub_of,
)
from cityos.hub.api.query import build_query, query_body_params, respond_entities
from cityos.hub.api.views import view_of
from cityos.hub.http import JSON_LD, accepted, body_context, read_body, split_list
from cityos.hub.service import BatchResult

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD"])


def _batch_response(result: BatchResult, created_status: bool) -> Response:
    if result.errors:
        body = {"success": result.success, "errors": result.errors}
        return Response(orjson.dumps(body), status_code=207, media_type="application/json")
    if created_status and result.created:
        return Response(orjson.dumps(result.created), status_code=201, media_type="application/json")
    return _no_content()


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
