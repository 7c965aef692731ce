"""The discovery routes (/types, /attributes): the types and attributes of a tenant's entities, as
far as the caller may see them."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cityos.core.errors import ResourceNotFound
from cityos.hub.access import access_of
from cityos.hub.api.common import PREFIX, READ, Hub, hub_of
from cityos.hub.http import Negotiated, accepted, parse_bool, query_context, render
from cityos.hub.jsonld import ActiveContext
from cityos.hub.model import check_name

router = APIRouter(prefix=PREFIX, tags=["NGSI-LD"])


async def _discovery(request: Request, hub: Hub) -> tuple[list[tuple[str, str, str, int]], dict[str, int]]:
    """The tenant's types and attributes, less what the caller never sees (types none of whose
    attributes it may see, attributes hidden from it by data class)."""
    access = await access_of(request)
    pairs, counts = await hub.service.discovery(access.tenant)
    types = {t: n for t, n in counts.items() if access.visible_type(t)}
    return [p for p in pairs if p[0] in types and access.visible_attr(p[0], p[1])], types


def _list_id(kind: str, members: list[str]) -> str:
    digest = hashlib.sha256("\n".join(members).encode()).hexdigest()[:16]
    return f"urn:ngsi-ld:{kind}:{digest}"


@router.get("/types", dependencies=READ)
async def list_types(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    pairs, counts = await _discovery(request, hub)
    names = sorted(ctx.compact(t) for t in counts)
    if parse_bool(request.query_params.get("details"), "details"):
        by_type: dict[str, set[str]] = {t: set() for t in counts}
        for etype, attr, _atype, _n in pairs:
            by_type.setdefault(etype, set()).add(ctx.compact(attr))
        payload: Any = [{"id": t, "type": "EntityType", "typeName": ctx.compact(t),
                         "attributeNames": sorted(attrs)} for t, attrs in sorted(by_type.items())]
    else:
        payload = {"id": _list_id("EntityTypeList", names), "type": "EntityTypeList", "typeList": names}
    return render(request, payload, Negotiated(media, ctx), hub.contexts)


@router.get("/types/{type_name:path}", dependencies=READ)
async def type_info(type_name: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    iri = ctx.expand(check_name(type_name, "entity type"))
    pairs, counts = await _discovery(request, hub)
    if iri not in counts:
        raise ResourceNotFound(f"no entity of type {type_name}")
    details: dict[str, set[str]] = {}
    for etype, attr, atype, _n in pairs:
        if etype == iri:
            details.setdefault(attr, set()).add(atype or "Property")
    payload = {"id": iri, "type": "EntityTypeInfo", "typeName": ctx.compact(iri), "entityCount": counts[iri],
               "attributeDetails": [{"id": a, "type": "Attribute", "attributeName": ctx.compact(a),
                                     "attributeTypes": sorted(t)} for a, t in sorted(details.items())]}
    return render(request, payload, Negotiated(media, ctx), hub.contexts)


def _attributes(pairs: list[tuple[str, str, str, int]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for etype, attr, atype, n in pairs:
        entry = found.setdefault(attr, {"count": 0, "types": set(), "typeNames": set()})
        entry["count"] += n
        entry["types"].add(atype or "Property")
        entry["typeNames"].add(etype)
    return found


def _attribute_out(iri: str, info: dict[str, Any], ctx: ActiveContext) -> dict[str, Any]:
    return {"id": iri, "type": "Attribute", "attributeName": ctx.compact(iri), "attributeCount": info["count"],
            "attributeTypes": sorted(info["types"]), "typeNames": sorted(ctx.compact(t) for t in info["typeNames"])}


@router.get("/attributes", dependencies=READ)
async def list_attributes(request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    pairs, _counts = await _discovery(request, hub)
    found = _attributes(pairs)
    if parse_bool(request.query_params.get("details"), "details"):
        payload: Any = [_attribute_out(iri, info, ctx) for iri, info in sorted(found.items())]
    else:
        names = sorted(ctx.compact(a) for a in found)
        payload = {"id": _list_id("AttributeList", names), "type": "AttributeList", "attributeList": names}
    return render(request, payload, Negotiated(media, ctx), hub.contexts)


@router.get("/attributes/{attr_id:path}", dependencies=READ)
async def attribute_info(attr_id: str, request: Request) -> Response:
    hub = hub_of(request)
    media = accepted(request)
    ctx = await query_context(request, hub.resolver)
    iri = ctx.expand(check_name(attr_id))
    pairs, _counts = await _discovery(request, hub)
    found = _attributes(pairs)
    if iri not in found:
        raise ResourceNotFound(f"no attribute {attr_id}")
    return render(request, _attribute_out(iri, found[iri], ctx), Negotiated(media, ctx), hub.contexts)
