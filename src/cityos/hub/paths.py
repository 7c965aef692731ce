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
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Match

from cityos.core.errors import BadRequestData, ProblemError, ResourceNotFound

PREFIX = "/ngsi-ld/v1"
_EMPTY_ENTITY_ID = {("PUT", PREFIX + "/entities/"), ("PATCH", PREFIX + "/entities/")}
# An empty segment inside the path (`/entities//attrs`) is a missing identifier; `//` after a colon
# belongs to an IRI given as an identifier (`/types/https://example.org/Building`).
_EMPTY_SEGMENT = re.compile(r"(?<!:)//")


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
        await self.app(scope, receive, send)


async def _problem(error: BadRequestData, send: Any) -> None:
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
