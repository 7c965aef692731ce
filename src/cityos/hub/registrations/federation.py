"""Distributed operations (§4.3.6): entity query and retrieval forwarded to registered context sources.

A query (GET /entities) or a retrieval (GET /entities/{id}) is sent, in parallel and each within its
own timeout, to every live registration whose information matches it and whose operations include
queryEntity (retrieveEntity); the entities they answer are merged with the local ones by id (a
local attribute wins over a remote one of the same name, and an inclusive or exclusive source over
an auxiliary one). A source that fails makes the answer partial: it is named in an `NGSILD-Warning`
header, never turned into an error of the whole request.

Loops are stopped with `Via` (RFC 9110 §7.6.3): every forwarded request carries this broker's
token, and a request that already carries it (or has passed too many brokers) is answered locally.
`local=true` also keeps a request local. Outbound calls go only through the guarded client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import QueryParams

from cityos.config import env_float
from cityos.core import clock
from cityos.core.errors import ResourceNotFound
from cityos.core.outbound import Outbound, OutboundClient, OutboundError
from cityos.core.outbound import Response as SourceResponse
from cityos.hub.http import GEO_JSON, JSON_LD, Negotiated, render, split_list, tenant_of
from cityos.hub.jsonld import CORE_CONTEXT_URL, ActiveContext, ContextStore
from cityos.hub.registrations.match import Filter, Selector
from cityos.hub.registrations.service import RegistrationService, Stored
from cityos.hub.registrations.spec import expanded_operations
from cityos.hub.store import EntityQuery

log = logging.getLogger("cityos.hub.federation")
PREFIX = "/ngsi-ld/v1"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
MAX_HOPS = 8
WRITABLE_TTL = 2.0
MAX_ANSWER = 16 * 1024 * 1024
# Forwarded as they were asked; paging is per source (each returns at most `limit`).
_DROPPED_PARAMS = {"offset", "after", "local"}
_MODE_RANK = {"exclusive": 0, "redirect": 0, "inclusive": 1, "auxiliary": 2}


@dataclass
class SourceAnswer:
    registration: str
    endpoint: str
    mode: str
    entities: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    count: int | None = None  # the source's NGSILD-Results-Count, when asked for


def _base(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base[: -len(PREFIX)] if base.endswith(PREFIX) else base


def warning_header(failed: list[SourceAnswer]) -> str:
    parts = []
    for answer in failed:
        reason = (answer.error or "failed").replace('"', "'")
        parts.append(f'199 - "context source {answer.registration} ({answer.endpoint[:200]}) failed: {reason}"')
    return ", ".join(parts)


class Federation:
    def __init__(self, registrations: RegistrationService, outbound: Outbound, timeout: float | None = None,
                 broker_id: str | None = None) -> None:
        self.registrations = registrations
        self.outbound = outbound
        self.timeout = timeout if timeout is not None else env_float("CITYOS_CSOURCE_TIMEOUT", 3.0)
        self.broker_id = broker_id or os.environ.get("CITYOS_BROKER_ID") or f"cityos-{uuid.uuid4().hex[:12]}"
        # One pooled client for every source (connections kept alive between queries).
        self.client: OutboundClient | None = None
        # Per tenant: whether any registration takes writes, and until when that is trusted. Changes
        # made through this process clear it at once; another worker's within WRITABLE_TTL seconds.
        # Without it every entity write would read the registrations table.
        self._writable: dict[str, tuple[float, bool]] = {}

    def _client(self) -> OutboundClient:
        if self.client is None:
            self.client = self.outbound.client(timeout=self.timeout * 4, connections=32)
        return self.client

    async def warm_up(self) -> None:
        """Load the TLS trust store off the event loop once: the first forwarded request would pay it."""
        await asyncio.to_thread(self.outbound.tls_context)
        self._client()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    # ------------------------------------------------------------------ whether to forward

    async def registration_changed(self, tenant: str, before: Stored | None, after: Stored | None) -> None:
        self._writable.pop(tenant, None)

    async def has_writable(self, tenant: str) -> bool:
        """Whether some live registration of the tenant may be written to (cached, see __init__)."""
        from cityos.hub.registrations.writes import offers_writes

        now = time.monotonic()
        cached = self._writable.get(tenant)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = any(offers_writes(s) for s in await self.registrations.all(tenant))
        self._writable[tenant] = (now + WRITABLE_TTL, found)
        return found

    def stays_local(self, params: QueryParams, headers: Any) -> bool:
        if (params.get("local") or "").lower() == "true":
            return True
        via = ",".join(headers.getlist("via")) if hasattr(headers, "getlist") else str(headers.get("via") or "")
        hops = [h.strip() for h in via.split(",") if h.strip()]
        return len(hops) >= MAX_HOPS or any(h.split()[-1] == self.broker_id for h in hops if h.split())

    async def sources(self, tenant: str, flt: Filter, operation: str) -> list[Stored]:
        now = clock.now()
        return [s for s in await self.registrations.all(tenant)
                if operation in expanded_operations(s.spec) and flt.matches(s.spec, s.created_at, s.modified_at, now)]

    # ------------------------------------------------------------------ forwarding

    def _headers(self, request_headers: Any, ctx: ActiveContext, spec: dict[str, Any]) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        link = ctx.source if isinstance(ctx.source, str) else None
        if link is None and isinstance(ctx.source, list):
            link = next((item for item in ctx.source if isinstance(item, str)), None)
        headers["Link"] = f'<{link or CORE_CONTEXT_URL}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'
        if spec.get("tenant"):
            headers["NGSILD-Tenant"] = spec["tenant"]
        previous = request_headers.get("via") if request_headers is not None else None
        headers["Via"] = f"{previous}, 1.1 {self.broker_id}" if previous else f"1.1 {self.broker_id}"
        for pair in spec.get("contextSourceInfo") or []:
            key = pair["key"]
            if key.lower() not in ("host", "content-length", "via", "accept", "link"):
                headers[key] = pair["value"]
        return headers

    def _timeout(self, spec: dict[str, Any]) -> float:
        management = spec.get("management") or {}
        timeout = management.get("timeout")
        # management.timeout is in milliseconds (§5.2.9); a source cannot ask for more than 4× the default.
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            return float(min(timeout / 1000.0, self.timeout * 4))
        return self.timeout

    async def call(self, spec: dict[str, Any], method: str, url: str, *, headers: dict[str, str],
                   max_bytes: int, content: bytes | None = None) -> tuple[SourceResponse | None, str | None]:
        """One request to a registered source within its timeout: the answer, or None and why not."""
        timeout = self._timeout(spec)
        try:
            async with asyncio.timeout(timeout):
                response = await self._client().request(method, url, content=content, headers=headers,
                                                        max_bytes=max_bytes)
        except TimeoutError:
            return None, f"no answer within {timeout:g} s"
        except OutboundError as exc:
            log.warning("context source %s: %s", spec["id"][:200], exc.reason)
            return None, "not reachable or no answer in time"
        return response, None

    async def _get(self, stored: Stored, path: str, params: list[tuple[str, str]], headers: dict[str, str],
                   single: bool) -> SourceAnswer:
        spec = stored.spec
        answer = SourceAnswer(spec["id"], spec["endpoint"], spec.get("mode", "inclusive"))
        url = f"{_base(spec['endpoint'])}{PREFIX}{path}"
        if params:
            url = f"{url}?{urlencode(params)}"
        response, answer.error = await self.call(spec, "GET", url, headers=headers, max_bytes=MAX_ANSWER)
        if response is None:
            return answer
        if single and response.status == 404:
            return answer  # the source does not hold it: not a failure
        if response.status != 200:
            answer.error = f"HTTP {response.status}"
            return answer
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer.error = "the answer is not JSON"
            return answer
        items = [body] if single else body
        if not isinstance(items, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str)
                                                  for e in items):
            answer.error = "the answer is not a list of entities"
            return answer
        answer.entities = items
        counted = response.headers.get("ngsild-results-count")
        if counted is not None and counted.isdecimal():
            answer.count = int(counted)
        return answer

    async def query(self, tenant: str, params: QueryParams, request_headers: Any, ctx: ActiveContext,
                    types: list[str] | None, ids: list[str] | None, pattern: str | None,
                    attrs: list[str] | None) -> list[SourceAnswer]:
        flt = Filter(selectors=[Selector(types=frozenset(types) if types else None,
                                         ids=frozenset(ids) if ids else None,
                                         pattern=re.compile(pattern) if pattern else None)],
                     attrs=frozenset(attrs) if attrs else None)
        sources = await self.sources(tenant, flt, "queryEntity")
        forwarded = [(k, v) for k, v in params.multi_items() if k not in _DROPPED_PARAMS]
        return list(await asyncio.gather(*(
            self._get(s, "/entities", forwarded, self._headers(request_headers, ctx, s.spec), single=False)
            for s in sources)))

    async def retrieve(self, tenant: str, entity_id: str, params: QueryParams, request_headers: Any,
                       ctx: ActiveContext, types: list[str] | None) -> list[SourceAnswer]:
        flt = Filter(selectors=[Selector(types=frozenset(types) if types else None, ids=frozenset([entity_id]))])
        sources = await self.sources(tenant, flt, "retrieveEntity")
        forwarded = [(k, v) for k, v in params.multi_items() if k not in _DROPPED_PARAMS]
        from urllib.parse import quote

        path = f"/entities/{quote(entity_id, safe=':')}"
        return list(await asyncio.gather(*(
            self._get(s, path, forwarded, self._headers(request_headers, ctx, s.spec), single=True)
            for s in sources)))


def merge_entities(local: list[dict[str, Any]], answers: list[SourceAnswer], limit: int | None) -> list[dict[str, Any]]:
    """Local entities first, then the sources' by mode (exclusive/redirect, inclusive, auxiliary): an
    entity held in several places is one entity whose members are the union, the first holder winning."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for entity in local:
        merged[entity["id"]] = dict(entity)
        order.append(entity["id"])
    for answer in sorted(answers, key=lambda a: _MODE_RANK.get(a.mode, 1)):
        for entity in answer.entities:
            known = merged.get(entity["id"])
            if known is None:
                merged[entity["id"]] = dict(entity)
                order.append(entity["id"])
                continue
            for key, value in entity.items():
                if key == "type":
                    known["type"] = _union_types(known.get("type"), value)
                elif key not in known:
                    known[key] = value
    items = [merged[i] for i in order]
    return items[:limit] if limit is not None else items


def _union_types(first: Any, second: Any) -> Any:
    a = first if isinstance(first, list) else [first] if first else []
    b = second if isinstance(second, list) else [second] if second else []
    union = list(dict.fromkeys([*a, *b]))
    return union[0] if len(union) == 1 else union


# ---------------------------------------------------------------------- glue for the entity routes


def _federation(request: Request) -> Federation | None:
    federation: Federation | None = getattr(request.app.state, "federation", None)
    return federation


def _answer_headers(response: Response | None, failed: list[SourceAnswer]) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")} \
        if response is not None else {}
    if failed:
        headers["NGSILD-Warning"] = warning_header(failed)
    return headers


async def federate_query(request: Request, ctx: ActiveContext, query: EntityQuery, media: str,
                         response: Response) -> Response:
    """The local answer of GET /entities merged with the matching context sources' answers."""
    federation = _federation(request)
    if federation is None or media == GEO_JSON or federation.stays_local(request.query_params, request.headers):
        return response
    answers = await federation.query(tenant_of(request), request.query_params, request.headers, ctx, query.types,
                                     query.ids, query.id_pattern, query.attrs)
    if not answers:
        return response
    local: list[dict[str, Any]] = orjson.loads(response.body)
    if media == JSON_LD:
        for answer in answers:
            answer.entities = [{"@context": ctx.response_context, **e} for e in answer.entities]
    merged = merge_entities(local, answers, query.limit if query.limit else 0)
    headers = _answer_headers(response, [a for a in answers if a.error])
    if "ngsild-results-count" in {k.lower() for k in headers}:
        # Local matches plus each source's own count, less the entities seen in more than one place
        # on this page (an entity held in two places is one entity).
        key = next(k for k in headers if k.lower() == "ngsild-results-count")
        remote = sum(a.count if a.count is not None else len(a.entities) for a in answers if not a.error)
        shared = len(local) + sum(len(a.entities) for a in answers) - len(merge_entities(local, answers, None))
        headers[key] = str(int(headers[key]) + remote - shared)
    return Response(orjson.dumps(merged), status_code=200, media_type=media, headers=headers)


async def federate_retrieve(request: Request, ctx: ActiveContext, entity_id: str, media: str,
                            response: Response | None, missing: ResourceNotFound | None,
                            contexts: ContextStore) -> Response:
    """The local answer of GET /entities/{id} (or its absence) merged with the context sources' answers."""
    federation = _federation(request)
    if federation is None or media == GEO_JSON or federation.stays_local(request.query_params, request.headers):
        if response is None:
            assert missing is not None
            raise missing
        return response
    types = [ctx.expand(t) for t in split_list(request.query_params.get("type"))]
    answers = await federation.retrieve(tenant_of(request), entity_id, request.query_params, request.headers, ctx,
                                        types or None)
    if not answers:  # no source registered for this entity: the local answer as it is
        if response is None:
            assert missing is not None
            raise missing
        return response
    failed = [a for a in answers if a.error]
    body = orjson.loads(response.body) if response is not None else None
    if response is not None and not isinstance(body, dict):
        return response  # join=flat answers a list (the entity and what it links to): not merged with sources
    local = [body] if body is not None else []
    merged = merge_entities(local, answers, None)
    if not merged:
        assert missing is not None
        if failed:
            raise ResourceNotFound(f"{missing.detail}; {len(failed)} context source(s) could not be asked",
                                   headers={"NGSILD-Warning": warning_header(failed)})
        raise missing
    entity = merged[0]
    if response is None:
        entity.pop("@context", None)
        rendered = render(request, entity, Negotiated(media, ctx), contexts)
        return Response(rendered.body, status_code=200, media_type=media, headers=_answer_headers(rendered, failed))
    if media == JSON_LD:
        entity = {"@context": ctx.response_context, **{k: v for k, v in entity.items() if k != "@context"}}
    return Response(orjson.dumps(entity), status_code=200, media_type=media, headers=_answer_headers(response, failed))
