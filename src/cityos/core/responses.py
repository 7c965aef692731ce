"""JSON in and out for the domains' HTTP routers (the hub has its own NGSI-LD rendering)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from cityos.core.errors import BadRequestData, TooLarge

DEFAULT_MAX_BODY = 256 * 1024


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded JSON; values orjson does not know (Decimal, …) are written as text."""
    return Response(orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int = DEFAULT_MAX_BODY) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never read whole first)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int = DEFAULT_MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object: 400 for anything else, 413 past `limit` bytes."""
    try:
        doc = orjson.loads(await read_body(request, limit))
    except orjson.JSONDecodeError as exc:
        raise BadRequestData("the body is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise BadRequestData("the body must be a JSON object")
    return doc
