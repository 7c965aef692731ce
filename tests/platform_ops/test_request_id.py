"""One request id through the answer header, ProblemDetails, the audit trail and JSON logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from sqlalchemy import select

from cityos.core.requestid import REQUEST_ID, JsonLogFormatter
from cityos.security.models import audit


async def test_an_id_is_made_or_kept_and_answered(client: httpx.AsyncClient) -> None:
    made = await client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    kept = await client.get("/health", headers={"X-Request-ID": "proxy-7f3a-0001"})
    assert kept.headers["x-request-id"] == "proxy-7f3a-0001"
    # an id that could forge log lines or headers is replaced, not echoed
    forged = await client.get("/health", headers={"X-Request-ID": "x\" injected=1"})
    assert forged.headers["x-request-id"] != "x\" injected=1" and len(forged.headers["x-request-id"]) == 32


async def test_problem_details_and_audit_carry_the_id(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                      auth: Any, app: Any) -> None:
    missing = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:none", headers={"X-Request-ID": "trace-404-abc"})
    assert missing.status_code == 404
    assert missing.json()["requestId"] == "trace-404-abc"
    denied = await anon_client.post("/ngsi-ld/v1/entities", headers={**auth.headers("citizen", username="rid"),
                                                                      "X-Request-ID": "trace-403-def"},
                                    json={"id": "urn:ngsi-ld:Thing:x", "type": "Thing",
                                          "owningDepartment": {"type": "Property", "value": "water"}})
    assert denied.status_code in (401, 403)
    assert denied.json()["requestId"] == "trace-403-def"
    async with app.state.engine.connect() as conn:
        details = [row.detail for row in await conn.execute(select(audit.c.detail))]
    assert any("trace-403-def" in (d if isinstance(d, str) else json.dumps(d)) for d in details)


def test_json_log_lines_name_the_request() -> None:
    record = logging.LogRecord("cityos.test", logging.WARNING, __file__, 1, "disk %s full", ("/data",), None)
    token = REQUEST_ID.set("log-line-123456")
    try:
        line = json.loads(JsonLogFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["requestId"] == "log-line-123456"
    assert line["message"] == "disk /data full" and line["level"] == "WARNING"
