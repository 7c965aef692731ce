"""What the parts of the NGSI-LD API share: the Hub the app builds, the path prefix, the
permission dependencies and the OpenAPI descriptions of parameters and bodies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import Response

from cityos.config import Settings
from cityos.hub.jsonld import ContextResolver, ContextStore
from cityos.hub.service import HubService
from cityos.security.api import require

PREFIX = "/ngsi-ld/v1"


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


def _no_content(headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=204, headers=headers)


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
