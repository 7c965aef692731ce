"""One id per HTTP request, carried through logs, the audit trail and error answers.

A caller (or the proxy in front) may send `X-Request-ID`; a well-formed one is kept so a request can be
followed across systems, anything else is replaced by a fresh id. The id is answered in `X-Request-ID`,
put in every ProblemDetails body (`requestId`), every audit record's detail and every log line, so a
citizen's complaint quoting it leads an operator to all three.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("cityos_request_id", default=None)
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{8,128}")


def current_request_id() -> str | None:
    return REQUEST_ID.get()


def accept_or_new(supplied: str | None) -> str:
    if supplied and _WELL_FORMED.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Plain ASGI: sets the id for the request's context and answers it in `X-Request-ID`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        request_id = accept_or_new(supplied)
        token = REQUEST_ID.set(request_id)

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            REQUEST_ID.reset(token)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (CITYOS_LOG_FORMAT=json), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        request_id = current_request_id()
        if request_id:
            entry["requestId"] = request_id
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to text log records (for format strings that name it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        return True


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
