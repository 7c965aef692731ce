"""Distributed writes (ETSI GS CIM 009 v1.8.1 §4.3.6, §5.6): entity writes forwarded to context sources.

A write to an entity is sent to every live registration that matches the entity (and, for attribute
writes, the attributes) and whose `operations` include the write, by the registration's mode
(§4.3.6.2, §4.3.6.3):

- `inclusive`: the source is an equal of this broker: the write is applied here and forwarded.
- `exclusive`: the source alone holds the registered attributes: those attributes are forwarded and
  taken out of the local write (what is left is applied here).
- `redirect`: the source holds the registered entities: the whole write is forwarded, and applied here
  only when this broker holds the entity too.
- `auxiliary`: never written to; such a source only completes reads.

The local part runs first, so a write this broker refuses (bad data, no right, conflict) is refused
before anything leaves it. The sources are then written in parallel, each within its timeout, with
the registration's headers (`contextSourceInfo`), the request's @context and a `Via` naming this broker;
a request that already passed this broker (or carries `local=true`) is written locally only.

A source that fails (not reachable, no answer in time, an error status) never fails the request:
the answer is 207 naming the registration and its reason (the attributes it did not update, or the
entity it did not write). A source answering 404 does not hold the entity: not a failure, as long as
someone (this broker or another source) did the write.

A caller's right to write here is checked entity by entity; what is forwarded is written with the
registration's credentials, which know nothing of the caller's department, so forwarding needs a
tenant-wide write right (`Scope.TENANT`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from cityos.core.errors import ProblemError, ResourceNotFound
from cityos.hub.http import JSON, JSON_LD, tenant_of
from cityos.hub.jsonld import ActiveContext
from cityos.hub.registrations.federation import PREFIX, Federation, _base
from cityos.hub.registrations.match import Filter, Selector
from cityos.hub.registrations.service import Stored
from cityos.hub.registrations.spec import expanded_operations
from cityos.hub.service import AccessDenied
from cityos.security.policy import Scope, role_of, scope_for

WRITE_MODES = ("inclusive", "exclusive", "redirect")  # auxiliary sources are never written (§4.3.6.3)
# Members of an entity fragment that are not attributes.
_CORE = {"id", "type", "@context", "scope", "createdAt", "modifiedAt"}
# The writes whose answer is an UpdateResult (§5.2.18) rather than a plain 201/204.
ATTRIBUTE_OPS = {"appendAttrs", "updateAttrs", "replaceAttrs", "deleteAttrs"}
MAX_ERROR_DETAIL = 300


@dataclass
class Target:
    stored: Stored
    mode: str
    held: frozenset[str] | None  # the attribute IRIs the source holds for this entity; None: all of them


@dataclass
class SourceWrite:
    registration: str
    endpoint: str
    sent: list[str]  # the attribute terms sent (empty for entity-level writes without attributes)
    status: int | None = None
    error: str | None = None  # None: written (or not held: status 404)
    not_updated: list[dict[str, Any]] = field(default_factory=list)  # from a source's own 207

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 300

    @property
    def not_held(self) -> bool:
        return self.error is None and self.status == 404


@dataclass
class WriteRequest:
    """One entity write as the route received it."""

    op: str  # the v1.8.1 operation name (§4.20)
    method: str
    path: str  # below /ngsi-ld/v1
    entity_id: str
    body: dict[str, Any] | None
    media: str
    ctx: ActiveContext
    types: list[str] | None = None  # expanded, when the body names them
    attr: str | None = None  # the attribute term of a single-attribute write
    action: str = "entity.write"


LocalRun = Callable[[dict[str, Any] | None], Awaitable[Response]]


def _attr_terms(body: dict[str, Any] | None) -> list[str]:
    return [k for k in (body or {}) if k not in _CORE]


def _held(target: Stored, flt: Filter) -> frozenset[str] | None:
    names: set[str] = set()
    for info in flt.infos(target.spec):
        listed = set(info.get("propertyNames") or []) | set(info.get("relationshipNames") or [])
        if not listed:
            return None
        names |= listed
    return frozenset(names)


async def _targets(federation: Federation, request: Request, write: WriteRequest,
                   local_types: list[str] | None) -> list[Target]:
    types = write.types or local_types
    attrs = [write.ctx.expand(write.attr)] if write.attr else [write.ctx.expand(t) for t in _attr_terms(write.body)]
    flt = Filter(selectors=[Selector(types=frozenset(types) if types else None, ids=frozenset([write.entity_id]))],
                 attrs=frozenset(attrs) if attrs and write.op in ATTRIBUTE_OPS else None)
    found = []
    for stored in await federation.sources(tenant_of(request), flt, write.op):
        mode = stored.spec.get("mode", "inclusive")
        if mode in WRITE_MODES:
            found.append(Target(stored, mode, _held(stored, flt)))
    return found


def _part(body: dict[str, Any] | None, keep: Callable[[str], bool]) -> dict[str, Any] | None:
    if body is None:
        return None
    return {k: v for k, v in body.items() if k in _CORE or keep(k)}


def _headers(federation: Federation, request: Request, write: WriteRequest, spec: dict[str, Any]) -> dict[str, str]:
    headers = federation._headers(request.headers, write.ctx, spec)
    if write.body is not None:
        headers["Content-Type"] = write.media
        if write.media == JSON_LD:
            headers.pop("Link", None)  # the @context travels in the body
    return headers


async def _send(federation: Federation, request: Request, write: WriteRequest, target: Target,
                body: dict[str, Any] | None) -> SourceWrite:
    spec = target.stored.spec
    result = SourceWrite(spec["id"], spec["endpoint"],
                         [write.attr] if write.attr else _attr_terms(body))
    url = f"{_base(spec['endpoint'])}{PREFIX}{write.path}"
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "local"]
    if params:
        url = f"{url}?{urlencode(params)}"
    content = orjson.dumps(body) if body is not None else None
    response, result.error = await federation.call(spec, write.method, url, content=content, max_bytes=1024 * 1024,
                                                   headers=_headers(federation, request, write, spec))
    if response is None:
        return result
    result.status = response.status
    if response.status == 207 and write.op in ATTRIBUTE_OPS:
        try:
            answer = orjson.loads(response.content)
            result.not_updated = [n for n in answer.get("notUpdated", []) if isinstance(n, dict)]
        except (orjson.JSONDecodeError, AttributeError):
            result.error = "HTTP 207 with an answer that is not an UpdateResult"
    elif response.status >= 300 and response.status != 404:
        result.error = f"HTTP {response.status}{_problem_detail(response.content)}"
    return result


def _problem_detail(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return f": {str(detail)[:MAX_ERROR_DETAIL]}" if detail else ""


def _may_forward(request: Request, action: str) -> bool:
    principal = getattr(request.state, "principal", None)
    return scope_for(role_of(principal), action) in (Scope.TENANT, Scope.ALL)


async def federate_write(request: Request, write: WriteRequest, local_types: Callable[[], Awaitable[list[str] | None]],
                         run_local: LocalRun) -> Response:
    """Apply `write` here and at the matching context sources, by mode; one answer for all of them."""
    federation: Federation | None = getattr(request.app.state, "federation", None)
    if federation is None or federation.stays_local(request.query_params, request.headers):
        return await run_local(write.body)
    if not await federation.has_writable(tenant_of(request)):
        return await run_local(write.body)  # no registration offers writes: no look-up of the entity
    held_here = await local_types() if write.op != "createEntity" else None
    targets = await _targets(federation, request, write, held_here)
    if not targets:
        return await run_local(write.body)
    if not _may_forward(request, write.action):
        raise AccessDenied("writing through context sources needs a tenant-wide write right")
    # What the exclusive sources hold leaves the local write (§4.3.6.2).
    exclusive = [t for t in targets if t.mode == "exclusive"]

    def taken(term: str) -> bool:
        iri = write.ctx.expand(term)
        return any(t.held is None or iri in t.held for t in exclusive)

    # A single-attribute write's body is the attribute itself: it goes whole, wherever it goes.
    local_body = write.body if write.attr else _part(write.body, lambda k: not taken(k))
    redirected = any(t.mode == "redirect" for t in targets)
    if write.op == "createEntity":
        runs_local = not redirected
    else:
        runs_local = (held_here is not None or not redirected) and not (write.attr and taken(write.attr))
        if write.op in ATTRIBUTE_OPS and not write.attr and write.body is not None and not _attr_terms(local_body):
            runs_local = False  # every attribute is held by exclusive sources
    local: Response | None = None
    local_error: ProblemError | None = None
    if runs_local:
        try:
            local = await run_local(local_body)
        except ResourceNotFound as exc:
            local_error = exc  # the sources may hold it
    sends = []
    for target in targets:
        if target.mode == "exclusive" and target.held is not None and not write.attr and write.body is not None:
            held = target.held
            part = _part(write.body, lambda k, held=held: write.ctx.expand(k) in held)  # type: ignore[misc]
            if not _attr_terms(part):
                continue  # none of the attributes it holds is written
        else:
            part = write.body
        sends.append(_send(federation, request, write, target, part))
    results = list(await asyncio.gather(*sends))
    return _answer(write, local, local_error, results, local_body)


def _answer(write: WriteRequest, local: Response | None, local_error: ProblemError | None,
            results: list[SourceWrite], local_body: dict[str, Any] | None) -> Response:
    done = [r for r in results if r.ok]
    failed = [r for r in results if r.error is not None]
    if local is None and not done and not failed:
        # Nobody holds the entity: this broker's own answer (or a 404 of its own when it was not asked).
        raise local_error or ResourceNotFound(f"entity {write.entity_id} is held neither here nor by "
                                              f"the context sources registered for it")
    remote_not_updated = [{**n, "registrationId": r.registration} for r in done for n in r.not_updated]
    if not failed and not remote_not_updated:
        if local is not None and local.status_code != 204 and write.op != "createEntity":
            return local  # the local part's own 207 (attributes it did not update)
        if write.op == "createEntity":
            headers = {"Location": f"{PREFIX}/entities/{write.entity_id}"}
            return Response(status_code=201, headers=headers)
        return Response(status_code=204)
    if write.op in ATTRIBUTE_OPS:
        return _update_result(write, local, local_body, done, failed, remote_not_updated)
    success = [write.entity_id] if (local is not None or done) else []
    errors = [{"entityId": write.entity_id, "registrationId": r.registration,
               "error": {"type": "https://uri.etsi.org/ngsi-ld/errors/InternalError" if r.status is None
                         else "https://uri.etsi.org/ngsi-ld/errors/BadRequestData" if r.status < 500
                         else "https://uri.etsi.org/ngsi-ld/errors/InternalError",
                         "title": "Context source failed", "status": r.status or 504,
                         "detail": f"context source {r.registration} ({r.endpoint[:200]}): {r.error}"}}
              for r in failed]
    return Response(orjson.dumps({"success": success, "errors": errors}), status_code=207, media_type=JSON)


def _update_result(write: WriteRequest, local: Response | None, local_body: dict[str, Any] | None,
                   done: list[SourceWrite],
                   failed: list[SourceWrite], remote_not_updated: list[dict[str, Any]]) -> Response:
    updated: list[str] = []
    not_updated: list[dict[str, Any]] = []
    if local is not None:
        if local.status_code == 207:
            body = orjson.loads(local.body)
            updated += body.get("updated", [])
            not_updated += body.get("notUpdated", [])
        else:
            updated += [write.attr] if write.attr else _attr_terms(local_body)
    for r in done:
        skipped = {n.get("attributeName") for n in r.not_updated}
        updated += [n for n in r.sent if n not in skipped]
    not_updated += remote_not_updated
    for r in failed:
        for name in r.sent or [write.attr or ""]:
            not_updated.append({"attributeName": name, "registrationId": r.registration,
                                "reason": f"context source {r.endpoint[:200]}: {r.error}"})
    body = {"updated": list(dict.fromkeys(updated)), "notUpdated": not_updated}
    return Response(orjson.dumps(body), status_code=207, media_type=JSON)


def entity_path(entity_id: str, *rest: str) -> str:
    return "/".join([f"/entities/{quote(entity_id, safe=':')}", *(quote(r, safe=':') for r in rest)])


def offers_writes(stored: Stored) -> bool:
    mode = stored.spec.get("mode", "inclusive")
    return mode in WRITE_MODES and bool(expanded_operations(stored.spec) & _WRITE_OPS)


_WRITE_OPS = frozenset({"createEntity", "replaceEntity", "mergeEntity", "deleteEntity", "appendAttrs", "updateAttrs",
                        "replaceAttrs", "deleteAttrs", "updateEntity"})
