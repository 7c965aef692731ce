"""POST /temporal/entityOperations/query (ETSI GS CIM 009 v1.8.1 §5.7.4, §6.24): the temporal query
with its parameters in a Query body (entities, attrs, q, geoQ, temporalQ) instead of the URL.

The body is turned into the query string of GET /temporal/entities and served by that endpoint, so
both answer the same way (paging, access checks, representations)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData
from cityos.hub.api import PREFIX, hub_of, query_body_params
from cityos.hub.http import CONTEXT_REL, JSON_LD, read_body
from cityos.hub.temporal.api import query_temporal
from cityos.security.api import require

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD temporal"])


def _link_of(context: Any) -> str | None:
    """A body @context that is one URL travels on as a Link header; the core context needs none."""
    if isinstance(context, list) and len(context) == 1:
        context = context[0]
    if isinstance(context, str):
        return f'<{context}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
    if context is None:
        return None
    raise BadRequestData("the temporal query body supports an @context given as one URL")


@router.post("/temporal/entityOperations/query", dependencies=[Depends(require("entity.read"))])
async def temporal_batch_query(request: Request) -> Response:
    hub = hub_of(request)
    body, media = await read_body(request, hub.settings)
    if not isinstance(body, dict) or body.get("type") != "Query":
        raise BadRequestData('the body must be a Query object with "type": "Query"')
    params = {k: v for k, v in query_body_params(body, dict(request.query_params)).items() if v is not None}
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
    if media == JSON_LD:
        link = _link_of(body.get("@context"))
        headers = [(k, v) for k, v in headers if k.lower() != b"link"]
        if link is not None:
            headers.append((b"link", link.encode()))
    scope = {**request.scope, "method": "GET", "query_string": urlencode(params).encode(), "headers": headers}
    return await query_temporal(Request(scope, request.receive))
