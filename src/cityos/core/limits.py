"""Limits on what a client may make the server wait for or hold: request bodies and slow clients.

- `RequestLimits` (ASGI middleware): a body larger than the caller's limit is refused with 413
  (callers without an Authorization header get `max_anon_body_bytes`, the rest `max_body_bytes`;
  the hub checks again with the verified caller); a body that pauses longer than `body_idle_timeout`
  between chunks, or takes longer than `body_timeout` in all, is answered 408 and the connection closed.
- the request head's timeout lives in `cityos.core.serving` (uvicorn's protocol).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from cityos.core.errors import ProblemError, TooLarge

log = logging.getLogger("cityos.limits")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# The web UI's own routes (NiceGUI, session cookies rather than bearer tokens) bound their uploads themselves.
UNLIMITED_PREFIXES = ("/_nicegui/",)


class RequestTimeout(ProblemError):
    status, error_type, title = 408, "BadRequestData", "Request timeout"


class RequestLimits:
    def __init__(self, app: Any, max_body_bytes: int, max_anon_body_bytes: int, body_idle_timeout: float,
                 body_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_anon_body_bytes = min(max_anon_body_bytes, max_body_bytes)
        self.idle = body_idle_timeout
        self.total = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        anonymous = b"authorization" not in headers
        limit = self.max_body_bytes
        if anonymous and not str(scope.get("path", "")).startswith(UNLIMITED_PREFIXES):
            limit = self.max_anon_body_bytes
        too_large = TooLarge(f"the body is larger than {limit} bytes" +
                             (" (the limit for callers without a token)" if limit < self.max_body_bytes else ""))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _answer(send, too_large)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total
        state: dict[str, Any] = {"size": 0, "done": False, "failed": None, "started": False}

        async def guarded_receive() -> Message:
            if state["failed"] is not None:
                return {"type": "http.disconnect"}
            if state["done"]:
                return await receive()  # after the body: waiting for a disconnect is not a slow client
            wait = max(0.0, min(self.idle, deadline - loop.time()))
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                state["failed"] = RequestTimeout(f"the request body did not arrive in time (a pause over "
                                                 f"{self.idle:g} s, or over {self.total:g} s in all)")
                log.info("slow request body from %s on %s: disconnected", scope.get("client"), scope.get("path"))
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                state["size"] += len(message.get("body", b""))
                if state["size"] > limit:
                    state["failed"] = too_large
                    return {"type": "http.disconnect"}
                state["done"] = not message.get("more_body", False)
            else:
                state["done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if state["failed"] is not None and not state["started"]:
                return  # the app's answer to the cut-off body is replaced by ours
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if state["failed"] is None:
                raise  # the app's own failure: the outer error handler answers and logs it
        if state["failed"] is not None and not state["started"]:
            await _answer(send, state["failed"])


async def _answer(send: Send, error: ProblemError) -> None:
    body = orjson.dumps(error.to_problem())
    # Connection: close makes the server drop the connection after the answer (the rest of the body
    # is never read).
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
