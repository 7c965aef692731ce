"""The check every domain's bad-input tests share: a refusal with its status and a ProblemDetails body."""

from __future__ import annotations

from typing import Any

import httpx


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The ProblemDetails body (type, title, detail) of a response that must have `status`."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert {"type", "title", "detail"} <= set(body)
    return body
