"""The @context routes (/jsonldContexts): the cached and hosted JSON-LD @context documents, listed,
served, added and dropped."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.hub.access import access_of
from cityos.hub.api.common import PREFIX, READ, WRITE, Hub, _no_content, hub_of
from cityos.hub.http import parse_bool, read_body
from cityos.hub.jsonld import check_shape
from cityos.security.api import require

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD"])


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
