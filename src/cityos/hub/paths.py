"""Path spelling on the NGSI-LD API: a trailing slash names the same resource.

The ETSI conformance suite (and several NGSI-LD clients) call `/entities/`, `/subscriptions/`,
`/temporal/entities/`, ... Starlette would answer 404 (or a redirect that loses the method's body
on some clients), so the path is rewritten before routing. The one exception is an empty
identifier where the operation needs one: `PUT /entities/` and `PATCH /entities/` name no entity,
and the spec (ETSI GS CIM 009 §5.6.17, §5.6.18) wants BadRequestData for a missing entity id, not
the collection's 405.

A plain ASGI middleware, like the app's input guard: Starlette's BaseHTTPMiddleware costs about a
tenth of a small request.
"""

from __future__ import annotations

from typing import Any

import orjson

from cityos.core.errors import BadRequestData

PREFIX = "/ngsi-ld/v1"
_EMPTY_ENTITY_ID = {("PUT", PREFIX + "/entities/"), ("PATCH", PREFIX + "/entities/")}


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
        await self.app(scope, receive, send)


async def _problem(error: BadRequestData, send: Any) -> None:
    body = orjson.dumps(error.to_problem())
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
