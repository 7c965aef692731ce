"""Entity queries: the EntityQuery that a request's parameters (or a Query body) stand for, and the
answer to it as the caller may see it, paged and counted. The temporal API builds on these too."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from cityos.config import Settings
from cityos.core.errors import BadRequestData
from cityos.hub import geoquery
from cityos.hub.access import access_of
from cityos.hub.api.common import Hub
from cityos.hub.api.views import View, entity_out, geojson_feature, joined
from cityos.hub.http import GEO_JSON, Negotiated, page_links, parse_bool, parse_int, render, split_list
from cityos.hub.jsonld import ActiveContext
from cityos.hub.model import check_entity_id, check_name
from cityos.hub.ordering import parse_order_by
from cityos.hub.qlang import parse_q, python_pattern
from cityos.hub.scopeq import parse_scopeq
from cityos.hub.store import EntityQuery, EntityRecord
from cityos.hub.typesel import all_types, is_conjunctive, parse_type_selection, selection_sql


def build_query(request: Request, ctx: ActiveContext, settings: Settings, params: dict[str, Any]) -> EntityQuery:
    types: list[str] = []
    type_filter: list[Any] = []
    if (params.get("type") or "").strip():
        selection = parse_type_selection(params["type"], ctx.expand)
        types = all_types(selection)  # every type named: the access plan and the index narrow on these
        if is_conjunctive(selection):
            type_filter.append(selection_sql(selection))
    ids = [check_entity_id(i) for i in split_list(params.get("id"))]
    pattern = params.get("idPattern")
    if pattern is not None:
        if len(pattern) > 256:
            raise BadRequestData("idPattern is longer than 256 characters")
        try:
            python_pattern(pattern)
        except ValueError as exc:
            raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc
    attrs = [ctx.expand(check_name(a)) for a in split_list(params.get("attrs"))]
    if any(iri.startswith("@") for iri in attrs):
        # `id` and `type` are the entity's members (@id, @type), not attribute names (§5.7.2: BadRequestData).
        raise BadRequestData("attrs names entity members (id, type), not attributes; pick selects those")
    q_text = params.get("q")
    geo = geoquery.parse_geoquery(params.get("georel"), params.get("geometry"), params.get("coordinates"),
                                  params.get("geoproperty"), ctx.expand)
    count = parse_bool(params.get("count"), "count")
    limit = parse_int(params.get("limit"), "limit", settings.default_page_size, 0, settings.max_page_size)
    if limit == 0 and not count:
        raise BadRequestData("limit=0 is only allowed together with count=true")
    after = params.get("after")
    if after is not None:
        check_entity_id(after)
    scope_text = params.get("scopeQ")
    return EntityQuery(
        scope_q=parse_scopeq(scope_text) if scope_text is not None else None,
        types=types or None, ids=ids or None, id_pattern=pattern, attrs=attrs or None,
        q=parse_q(q_text) if q_text else None, geo=geo, expand=ctx.expand, limit=limit,
        offset=parse_int(params.get("offset"), "offset", 0, 0, 1_000_000_000), after=after, count=count,
        order_by=parse_order_by(params.get("orderBy"), ctx.expand), extra=type_filter,
    )


async def respond_entities(request: Request, hub: Hub, ctx: ActiveContext, query: EntityQuery, view: View,
                           media: str) -> Response:
    access = await access_of(request)
    tenant = access.tenant
    # Filters on attributes the caller may not see are refused (403); types it never sees are left
    # out in SQL so that the count and the pages hold only what it is shown.
    plan = await access.plan_query(query)
    query = plan.query
    records: list[EntityRecord]
    total: int | None
    if plan.empty:
        records, total = [], (0 if query.count else None)
    else:
        records, total = await hub.service.query(tenant, query) if query.limit or query.count else ([], None)
    if query.limit == 0:
        records = []
    last_id, returned = (records[-1].id if records else None), len(records)
    if plan.checks:
        records = [r for r in records if access.matches(plan, r)]
    records = access.view_all(records)
    payload: Any
    if view.join and media != GEO_JSON:
        # An entity that projection leaves without any member is not returned (§4.21).
        shown = [(r, out) for r, out in ((r, entity_out(r, ctx, view)) for r in records) if out]
        payload = await joined(access, hub, ctx, view, [r for r, _ in shown], [out for _, out in shown])
    await access.finish()
    if not plan.exact:
        total = None  # some matches may be withheld from this caller: a count would tell of them
    headers: dict[str, str] = {}
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    links = page_links(request, query.offset, query.limit, returned, last_id, total,
                       keyset=not query.order_by)
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    neg = Negotiated(media, ctx)
    if media == GEO_JSON:
        geo_attr = ctx.expand(request.query_params.get("geometryProperty") or "location")
        payload = {"type": "FeatureCollection", "features": [geojson_feature(r, ctx, view, geo_attr) for r in records]}
    elif not view.join:
        # An entity that projection leaves without any member is not returned (§4.21).
        payload = [out for out in (entity_out(r, ctx, view) for r in records) if out]
    response = render(request, payload, neg, hub.contexts, headers=headers)
    if links:
        existing = response.headers.get("Link")
        response.headers["Link"] = f"{existing}, {links}" if existing else links
    return response


QUERY_SELECTORS = ("type", "attrs", "q", "georel", "geometry", "coordinates")


def require_selector(params: dict[str, Any]) -> None:
    """v1.8.1 §5.7.2.4 / §5.7.4.4 (bindings §6.4.3.2, §6.18.3.2): a query naming no entity type, no
    attribute, no NGSI-LD query and no geo-query is refused with BadRequestData unless it asks for
    the whole local store with `local=true`; a list of ids alone does not make it a query.

    Only the NGSI-LD query routes check this: CityOS's own pages and workers query through the
    service layer (and name a type where they use these routes)."""
    if any((params.get(name) or "").strip() for name in QUERY_SELECTORS):
        return
    if parse_bool(params.get("local"), "local"):
        return
    raise BadRequestData("A query needs type, attrs, q or a geo-query (or local=true for every local entity)")


def _selectors_params(selectors: list[dict[str, Any]]) -> dict[str, str]:
    """Several EntitySelectors are served when their union is one filter: all name ids (ids and
    types are joined), or all name only types."""
    if len(selectors) == 1:
        return {key: ",".join(value) if isinstance(value, list) else str(value)
                for key, value in selectors[0].items() if key in ("type", "id", "idPattern")}
    def joined(key: str) -> str:
        items: list[str] = []
        for selector in selectors:
            value = selector.get(key)
            items += value if isinstance(value, list) else [str(value)] if value is not None else []
        return ",".join(dict.fromkeys(items))
    if all("id" in s and "idPattern" not in s for s in selectors):
        return {k: v for k, v in (("id", joined("id")), ("type", joined("type"))) if v}
    if all(set(s) <= {"type"} for s in selectors):
        return {"type": joined("type")}
    raise BadRequestData("several EntitySelectors are supported when all give ids or all give only types")


def query_body_params(body: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The query parameters a Query body (§5.2.23) stands for, over those of the URL."""
    selectors = body.get("entities") or []
    if not isinstance(selectors, list) or not all(isinstance(s, dict) for s in selectors):
        raise BadRequestData("Query.entities must be an array of EntitySelector objects")
    if selectors:
        params.update(_selectors_params(selectors))
    if "attrs" in body:
        params["attrs"] = ",".join(body["attrs"]) if isinstance(body["attrs"], list) else str(body["attrs"])
    if "q" in body:
        params["q"] = str(body["q"])
    geo_q = body.get("geoQ")
    if isinstance(geo_q, dict):
        params["georel"] = geo_q.get("georel")
        params["geometry"] = geo_q.get("geometry")
        params["coordinates"] = orjson.dumps(geo_q.get("coordinates")).decode()
        if geo_q.get("geoproperty"):
            params["geoproperty"] = geo_q["geoproperty"]
    for key in ("join", "joinLevel"):  # linked entities (§4.5.23), members of the Query
        if body.get(key) is not None:
            params[key] = str(body[key])
    temporal_q = body.get("temporalQ")
    if isinstance(temporal_q, dict):
        for key in ("timerel", "timeAt", "endTimeAt", "timeproperty", "lastN"):
            if temporal_q.get(key) is not None:
                params[key] = str(temporal_q[key])
    return params
