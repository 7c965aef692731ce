"""HTTP plumbing shared by the hub's routers: bodies, @context negotiation, paging and responses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from cityos.config import Settings
from cityos.core.errors import (
    BadRequestData,
    InvalidRequest,
    NotAcceptable,
    TooLarge,
    UnsupportedMediaType,
)
from cityos.hub.jsonld import ActiveContext, ContextResolver, ContextStore, digest_of

JSON = "application/json"
JSON_LD = "application/ld+json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')
_TENANT = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")


def tenant_of(request: Request) -> str:
    """The request's tenant. Once the caller is known (the routers' `require` gate ran), a header naming
    another tenant than the token's is refused (403); only sys_admin may name any tenant."""
    principal = getattr(request.state, "principal", ...)
    if principal is not ...:
        from cityos.security.api import request_tenant

        return request_tenant(request, principal)
    raw = request.headers.get("NGSILD-Tenant")
    if raw is None or raw == "":
        return ""
    if not _TENANT.match(raw):
        raise BadRequestData("NGSILD-Tenant must be 1-64 letters, digits, '-', '_' or '.'")
    return raw


def link_context(request: Request) -> str | None:
    header = request.headers.get("Link")
    if not header:
        return None
    for match in _LINK.finditer(header):
        if CONTEXT_REL in match.group(2):
            url = match.group(1).strip()
            if not url:
                raise BadRequestData("the Link header names an empty @context URL")
            return url
    raise BadRequestData("the Link header has no JSON-LD @context relation")


def _media_type(request: Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


def authenticated(request: Request) -> bool:
    """Whether the routers' `require` gate found a valid token (anonymous callers get tighter limits)."""
    return getattr(request.state, "principal", None) is not None


def body_limit(request: Request, settings: Settings) -> int:
    return settings.max_body_bytes if authenticated(request) else min(settings.max_anon_body_bytes,
                                                                       settings.max_body_bytes)


async def read_body(request: Request, settings: Settings, allow_merge_patch: bool = False) -> tuple[Any, str]:
    media = _media_type(request)
    allowed = {JSON, JSON_LD} | ({MERGE_PATCH} if allow_merge_patch else set())
    unsupported = UnsupportedMediaType(f"Content-Type must be one of {', '.join(sorted(allowed))}, not {media!r}")
    # A body without any Content-Type is examined (RFC 9110 §8.3 lets the recipient do so): one that
    # is not JSON is refused as such (400 InvalidRequest, §6.3.4's invalid JSON), one that is JSON with
    # 415, since its JSON or JSON-LD reading is not declared. A declared other type is 415 at once.
    undeclared = media == ""
    if media not in allowed and not undeclared:
        raise unsupported
    limit = body_limit(request, settings)
    too_large = TooLarge(f"the body is larger than {limit} bytes" +
                         ("" if authenticated(request) else " (the limit for callers without a token)"))
    declared = request.headers.get("Content-Length")
    if declared and declared.isdecimal() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise unsupported if undeclared else InvalidRequest("the request body is empty")
    if b"\\u0000" in raw or b"\x00" in raw:
        # PostgreSQL's jsonb and text types cannot hold NUL; refuse it before it reaches the store.
        raise BadRequestData("NUL characters are not allowed in the body")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if undeclared:
        raise unsupported
    return parsed, media


async def body_context(request: Request, resolver: ContextResolver, body: Any, media: str) -> ActiveContext:
    """The @context of a write: in the body for JSON-LD, in the Link header for plain JSON."""
    linked = link_context(request)
    first = body[0] if isinstance(body, list) and body else body
    in_body = first.get("@context") if isinstance(first, dict) else None
    if media == JSON_LD:
        if linked is not None:
            raise BadRequestData("application/ld+json carries its @context in the body, not in a Link header")
        if in_body is None and isinstance(first, dict):
            raise BadRequestData("an application/ld+json body must contain an @context")
        return await resolver.resolve(in_body, authenticated(request))
    if in_body is not None:
        raise BadRequestData("an application/json body must not contain @context; use the Link header")
    return await resolver.resolve(linked, authenticated(request))


async def query_context(request: Request, resolver: ContextResolver) -> ActiveContext:
    return await resolver.resolve(link_context(request), authenticated(request))


def accepted(request: Request, allow_geo: bool = False) -> str:
    header = request.headers.get("Accept", "")
    if not header:
        return JSON
    best: tuple[float, str] | None = None
    offers = [JSON, JSON_LD] + ([GEO_JSON] if allow_geo else [])
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        quality = 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        candidates = offers if media in ("*/*", "application/*") else [media] if media in offers else []
        for candidate in candidates[:1]:
            if quality > 0 and (best is None or quality > best[0]):
                best = (quality, candidate)
    if best is None:
        raise NotAcceptable(f"cannot produce any of {header!r}; offer: {', '.join(offers)}")
    return best[1]


@dataclass
class Negotiated:
    media: str
    ctx: ActiveContext


def context_link(request: Request, ctx: ActiveContext, contexts: ContextStore) -> str:
    source = ctx.response_context
    if isinstance(source, str):
        url = source
    else:
        # A Link header can only carry a URL, so an inline @context is hosted here (spec §5.13.4).
        digest = ctx.digest or digest_of(source)
        url = str(request.base_url).rstrip("/") + f"/ngsi-ld/v1/jsonldContexts/{digest}"
        if contexts.get(url) is None:
            contexts.put(url, {"@context": source}, "ImplicitlyCreated", ctx.size or None)
    return f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'


def render(request: Request, payload: Any, neg: Negotiated, contexts: ContextStore, status: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if neg.media == JSON_LD:
        ctx_value = neg.ctx.response_context
        if isinstance(payload, list):
            payload = [{"@context": ctx_value, **item} if isinstance(item, dict) else item for item in payload]
        elif isinstance(payload, dict):
            payload = {"@context": ctx_value, **payload}
    elif neg.media == GEO_JSON and isinstance(payload, dict):
        # GeoJSON carries its @context in the Feature or FeatureCollection (v1.8.1 §6.3.15, §4.5.16).
        payload = {**payload, "@context": neg.ctx.response_context}
    else:
        headers["Link"] = context_link(request, neg.ctx, contexts)
    return Response(orjson.dumps(payload), status_code=status, media_type=neg.media, headers=headers)


def page_links(request: Request, offset: int, limit: int, returned: int, last_id: str | None,
               total: int | None, keyset: bool = True) -> str | None:
    """Link headers for the next and previous pages. With `keyset`, the next link carries `after`."""
    params = dict(request.query_params)
    links = []
    more = returned == limit and limit > 0 and (total is None or offset + limit < total)
    if more and (last_id is not None or not keyset):
        # `after` lets the next page start from the last id seen: deep pages cost the same as the first.
        nxt = {**params, "offset": str(offset + limit), "limit": str(limit)}
        if keyset and last_id is not None:
            nxt["after"] = last_id
        links.append(f'<{request.url.path}?{urlencode(nxt)}>;rel="next";type="application/ld+json"')
    if offset > 0:
        prev = {k: v for k, v in params.items() if k != "after"}
        prev.update(offset=str(max(0, offset - limit)), limit=str(limit))
        links.append(f'<{request.url.path}?{urlencode(prev)}>;rel="prev";type="application/ld+json"')
    # No whitespace around ";" (RFC 8288 allows it, and allows none): the form NGSI-LD's examples and the
    # conformance suite use, which compares a lone link as text.
    return ", ".join(links) or None


def split_list(raw: str | None) -> list[str]:
    if raw is None:
        return []
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_int(raw: str | None, name: str, default: int, minimum: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"\d{1,9}", raw):
        raise BadRequestData(f"{name} must be a non-negative integer")
    value = int(raw)
    if value < minimum or value > maximum:
        raise BadRequestData(f"{name} must be between {minimum} and {maximum}")
    return value


def parse_bool(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise BadRequestData(f"{name} must be true or false")
