"""Path spelling on the NGSI-LD API: a trailing slash names the same resource.

The ETSI conformance suite (and several NGSI-LD clients) call `/entities/`, `/subscriptions/`,
`/temporal/entities/`, ... Starlette would answer 404 (or a redirect that loses the method's body
on some clients), so the path is rewritten before routing. The one exception is an empty
identifier where the operation needs one: `PUT /entities/` and `PATCH /entities/` name no entity,
and the spec (ETSI GS CIM 009 §5.6.17, §5.6.18) wants BadRequestData for a missing entity id, not
the collection's 405; so does an empty segment inside the path (`/entities//attrs`).

A plain ASGI middleware, like the app's input guard: Starlette's BaseHTTPMiddleware costs about a
tenth of a small request.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Match

from cityos.core.errors import BadRequestData, InvalidRequest, ProblemError, ResourceNotFound

PREFIX = "/ngsi-ld/v1"
_EMPTY_ENTITY_ID = {("PUT", PREFIX + "/entities/"), ("PATCH", PREFIX + "/entities/")}
# An empty segment inside the path (`/entities//attrs`) is a missing identifier; `//` after a colon
# belongs to an IRI given as an identifier (`/types/https://example.org/Building`).
_EMPTY_SEGMENT = re.compile(r"(?<!:)//")


# Query parameters each operation defines (v1.8.1 §6.3.x); anything else is InvalidRequest (§6.3.20).
# `after` (keyset paging) is CityOS's own, in the Link headers it hands out.
_PAGING = frozenset({"limit", "offset", "count", "after"})
_GEO = frozenset({"georel", "geometry", "coordinates", "geoproperty"})
_SELECT = frozenset({"type", "id", "idPattern", "q", "scopeQ", "csf", "local", "via"}) | _GEO
_SHOW = frozenset({"attrs", "pick", "omit", "options", "format", "lang", "geometryProperty", "datasetId", "join",
                   "joinLevel", "containedBy", "entityMap", "expandValues", "jsonKeys", "local", "via"})
_TEMPORAL = frozenset({"timerel", "timeAt", "endTimeAt", "timeproperty", "timeProperty", "lastN", "aggrMethods",
                       "aggrPeriodDuration"})
_QUERY = _SELECT | _SHOW | _PAGING | {"orderBy", "collation"}
_WRITE = frozenset({"options", "local", "via"})
_ALLOWED: list[tuple[re.Pattern[str], dict[str, frozenset[str]]]] = [
    (re.compile(r"/entities"), {"GET": _QUERY, "POST": _WRITE,
                                "DELETE": _SELECT | {"drop", "keep", "attrs"}}),
    (re.compile(r"/entities/[^/]+"), {"GET": _SHOW, "PUT": _WRITE, "PATCH": _WRITE, "DELETE": _WRITE}),
    (re.compile(r"/temporal/entities"), {"GET": _QUERY | _TEMPORAL, "POST": _WRITE}),
    (re.compile(r"/temporal/entities/[^/]+"), {"GET": _SHOW | _TEMPORAL, "DELETE": _WRITE}),
    (re.compile(r"/(types|attributes)(/.+)?"), {"GET": frozenset({"details", "local", "via"})}),
    (re.compile(r"/subscriptions"), {"GET": _PAGING | {"local", "via", "options"}, "POST": frozenset()}),
    (re.compile(r"/subscriptions/[^/]+"), {"GET": frozenset({"options"})}),
    (re.compile(r"/entityOperations/query"), {"POST": _QUERY}),
    (re.compile(r"/temporal/entityOperations/query"), {"POST": _QUERY | _TEMPORAL}),
]


def unknown_parameters(method: str, path: str, query_string: bytes) -> list[str]:
    """The query parameters the NGSI-LD operation at (method, path) does not define."""
    if not query_string:
        return []
    tail = path[len(PREFIX):]
    for pattern, by_method in _ALLOWED:
        if pattern.fullmatch(tail):
            allowed = by_method.get(method)
            if allowed is None:
                return []
            names = [part.split(b"=", 1)[0] for part in query_string.split(b"&") if part]
            decoded = [urllib.parse.unquote_plus(n.decode("latin-1")) for n in names]
            return [name for name in decoded if name not in allowed]
    return []


class NgsiLdPaths:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope.get("path", "")
            if path.endswith("/") and path.startswith(PREFIX + "/") and len(path) > len(PREFIX) + 1:
                if (scope.get("method"), path) in _EMPTY_ENTITY_ID:
                    await _problem(BadRequestData("the entity id is missing from the path"), send)
                    return
                stripped = path.rstrip("/")
                scope = dict(scope, path=stripped, raw_path=stripped.encode())
            if path.startswith(PREFIX + "/") and _EMPTY_SEGMENT.search(scope["path"]):
                await _problem(BadRequestData("an identifier in the path is empty"), send)
                return
            if path.startswith(PREFIX + "/"):
                unknown = unknown_parameters(scope.get("method", ""), scope["path"], scope.get("query_string", b""))
                if unknown:
                    await _problem(InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)[:200]}"), send)
                    return
        await self.app(scope, receive, send)


async def _problem(error: ProblemError, send: Any) -> None:
    body = orjson.dumps(error.to_problem())
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# Included after every NGSI-LD router: an unknown path under /ngsi-ld/v1 answers the hub's own
# ProblemDetails (404, or 405 when another method would be served), and never reaches the UI mounted
# at "/", which would answer its own 404 for any method.
fallback_router = APIRouter(prefix=PREFIX, include_in_schema=False)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class MethodNotAllowed(ProblemError):
    status, error_type, title = 405, "OperationNotSupported", "Method not allowed"


def _leaf_routes(routes: Any) -> Any:
    """The app's routes with included routers opened up (newer FastAPI wraps each included router)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


@fallback_router.api_route("/{rest:path}", methods=_METHODS)
async def unknown_path(rest: str, request: Request) -> Response:
    allowed: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        if getattr(route, "endpoint", None) is unknown_path or not hasattr(route, "path_regex"):
            continue
        match, _child = route.matches({**request.scope, "method": ""})
        if match is Match.PARTIAL:  # the path is served, by other methods
            allowed |= set(getattr(route, "methods", None) or ())
    if allowed:
        raise MethodNotAllowed(f"{request.method} is not offered on {request.url.path}",
                               headers={"Allow": ", ".join(sorted(allowed))})
    raise ResourceNotFound(f"no NGSI-LD resource at {request.url.path}")
