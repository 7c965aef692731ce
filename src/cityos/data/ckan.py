"""A CKAN-compatible Action API v3 at `/api/3/action/{action}` over the open datasets.

Actions: package_list, package_search (q, fq, rows, start, sort, facet.field), package_show,
organization_list, organization_show, group_list, tag_list, resource_show, datastore_search (filters,
q, fields, sort, limit, offset, include_total, total_estimation_threshold; `as_of` = YYYY-MM-DD reads the
snapshot of that day), help_show.

Totals follow CKAN: exact by default (`total_was_estimated: false`); with `total_estimation_threshold` and
neither filters nor q, a planner estimate above the threshold is returned instead (`total_was_estimated:
true`, PostgreSQL only, as CKAN). The package listings answer from the in-memory search index
(`searchindex.py`), near-real-time as CKAN's Solr index is.

GET with query parameters or POST with a JSON object, as CKAN accepts.

Answers have CKAN's envelope `{"help", "success", "result"}`; errors `{"help", "success": false,
"error": {"__type", "message" | field: [messages]}}` with CKAN's statuses: 400 bad request, 403
Authorization Error, 404 Not Found Error, 409 Validation Error / Search Query Error, 429 when a key's
rate is spent. An `Authorization` header that is not a bearer token is taken as an open-data API key
(what ckanapi and CKAN clients send).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core.errors import ProblemError, ResourceNotFound
from cityos.data.catalogue import FACETS, SEARCH_COLUMNS, SORT_COLUMNS, SearchQuery
from cityos.data.datastore import DatastoreInvalid, parse_row_query
from cityos.data.models import OPEN_NONE
from cityos.data.opendata import (
    ApiKey,
    NotAuthorized,
    OpenData,
    RateLimited,
    ckan_organization,
    ckan_package,
    resource_code,
)
from cityos.data.opendata import ckan_resource as resource_shape
from cityos.security.api import header_tenant

router = APIRouter(prefix="/api/3/action", tags=["opendata (CKAN)"])
# CKAN answers on /api/action/ too (the unversioned path ckanapi calls).
unversioned = APIRouter(prefix="/api/action", tags=["opendata (CKAN)"], include_in_schema=False)
MAX_BODY = 256 * 1024
SEARCH_ROWS_MAX = 1000
FQ_TERM = re.compile(r'^\+?([a-z_]+):(?:"([^"\\]{1,200})"|([^\s"()\[\]{}*?:\\]{1,200}))$')


class CkanError(Exception):
    def __init__(self, status: int, kind: str, message: str | None = None, fields: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message or kind)
        self.status, self.kind, self.message, self.fields = status, kind, message, fields or {}
        self.headers = headers or {}


def envelope(request: Request, action: str, result: Any) -> Response:
    return Response(orjson.dumps({"help": _help(request, action), "success": True, "result": result}),
                    media_type="application/json")


def _help(request: Request, action: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/api/3/action/help_show?name={action}"


def error_response(request: Request, action: str, exc: CkanError) -> Response:
    error: dict[str, Any] = {"__type": exc.kind}
    if exc.message is not None:
        error["message"] = exc.message
    error.update(exc.fields)
    return Response(orjson.dumps({"help": _help(request, action), "success": False, "error": error}),
                    status_code=exc.status, media_type="application/json", headers=exc.headers)


def _validation(errors: dict[str, list[str]]) -> CkanError:
    return CkanError(409, "Validation Error", None, errors)


async def _params(request: Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        body = await request.body()
        if len(body) > MAX_BODY:
            raise CkanError(413, "Bad request", f"Bad request - the body is larger than {MAX_BODY} bytes")
        if body.strip():
            kind = request.headers.get("content-type", "")
            if "json" in kind or body.strip()[:1] == b"{":
                try:
                    doc = orjson.loads(body)
                except orjson.JSONDecodeError as exc:
                    raise CkanError(400, "Bad request", f"Bad request - JSON Error: {str(exc)[:120]}") from exc
                if not isinstance(doc, dict):
                    raise CkanError(400, "Bad request", "Bad request - JSON Error: Request data JSON decoded to "
                                                        f"{type(doc).__name__} but it needs to be a dictionary.")
                params.update(doc)
            else:
                form = await request.form()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


async def _key(request: Request, service: OpenData) -> ApiKey | None:
    raw = request.headers.get("X-CKAN-API-Key") or request.headers.get("Authorization") or ""
    if not raw or raw.lower().startswith("bearer "):
        return None
    key = await service.key_of(raw.strip())
    if key is None:
        raise CkanError(403, "Authorization Error", "Access denied: the API key is not valid or was revoked")
    return key


def _tenant(request: Request, key: ApiKey | None) -> str:
    if key is not None:
        return key.tenant
    try:
        return header_tenant(request) or ""
    except ProblemError as exc:
        raise CkanError(400, "Bad request", exc.detail) from exc


def _int(params: dict[str, Any], name: str, default: int, high: int) -> int:
    raw = params.get(name, default)
    # ASCII digits only ("²" is a digit int() refuses), and short (int() refuses 4,300 digits and more).
    digits = isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdecimal() and len(raw.strip()) <= 18
    if isinstance(raw, bool) or not (isinstance(raw, int) or digits):
        raise _validation({name: ["Invalid integer"]})
    value = int(raw)
    if not 0 <= value <= high:
        raise _validation({name: [f"Must be between 0 and {high}"]})
    return value


def _id(params: dict[str, Any], name: str = "id") -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _validation({name: ["Missing value"]})
    if len(value) > 200:
        raise CkanError(404, "Not Found Error", "Not found")
    return value.strip()


def parse_fq(fq: str) -> dict[str, list[str]]:
    """A Solr filter query of `field:value` terms (AND). Anything else is a Search Query Error."""
    terms: dict[str, list[str]] = {}
    text = fq.strip()
    if len(text) > 1000:
        raise CkanError(409, "Search Query Error", "Search error: fq is too long")
    for token in re.findall(r'\+?[a-z_]+:"[^"]*"|\S+', text):
        if token.upper() == "AND":
            continue
        match = FQ_TERM.match(token)
        if match is None or (match.group(1) not in SEARCH_COLUMNS and match.group(1) != "tags"):
            raise CkanError(409, "Search Query Error",
                            f"Search error: unsupported filter {token[:80]!r}; use field:value or field:\"value\" "
                            f"with a field among {', '.join(sorted({*SEARCH_COLUMNS, 'tags'}))}")
        terms.setdefault(match.group(1), []).append(match.group(2) or match.group(3))
    return terms


def parse_search(params: dict[str, Any]) -> SearchQuery:
    query = SearchQuery(open_only=True)
    q = params.get("q", "")
    if not isinstance(q, str) or len(q) > 500:
        raise _validation({"q": ["q is a string of at most 500 characters"]})
    words = []
    for word in q.split():
        field, colon, value = word.partition(":")
        if colon and value and (field in SEARCH_COLUMNS or field == "tags"):
            query.terms.setdefault(field, []).append(value.strip('"'))
        elif word not in ("*:*", "*"):
            words.append(word)
    query.text = " ".join(words)
    fq = params.get("fq", "")
    if not isinstance(fq, str):
        raise _validation({"fq": ["fq is a string"]})
    for name, values in parse_fq(fq).items():
        query.terms.setdefault(name, []).extend(values)
    query.rows = _int(params, "rows", 10, SEARCH_ROWS_MAX)
    query.start = _int(params, "start", 0, 1_000_000)
    sort = params.get("sort") or "score desc, metadata_modified desc"
    if not isinstance(sort, str):
        raise _validation({"sort": ["sort is a string"]})
    for part in sort.split(",")[:4]:
        words = part.split()
        if len(words) != 2 or words[0] not in SORT_COLUMNS or words[1] not in ("asc", "desc"):
            raise CkanError(409, "Search Query Error", f"Search error: cannot sort by {part.strip()[:80]!r}")
        query.sort.append((words[0], words[1] == "desc"))
    facets = params.get("facet.field")
    if isinstance(facets, str) and facets:
        try:
            facets = orjson.loads(facets)
        except orjson.JSONDecodeError as exc:
            raise _validation({"facet.field": ["Cannot parse JSON"]}) from exc
    if facets:
        if not isinstance(facets, list) or not all(isinstance(f, str) and (f in FACETS or f == "tags")
                                                   for f in facets):
            raise _validation({"facet.field": [f"facets among {', '.join(sorted({*FACETS, 'tags'}))}"]})
        query.facets = tuple(dict.fromkeys(facets))
    return query


async def _dispatch(request: Request, action: str, service: OpenData) -> Any:
    params = await _params(request)
    key = await _key(request, service)
    tenant = _tenant(request, key)
    base = str(request.base_url).rstrip("/")
    if action == "package_list":
        limit = _int(params, "limit", 1000, 1000)
        offset = _int(params, "offset", 0, 1_000_000)
        found = await service.catalogue.index.search(tenant, SearchQuery(open_only=True, rows=limit, start=offset,
                                                                 sort=[("name", False)]))
        return [d["id"] for d in found["results"]]
    if action == "package_search":
        query = parse_search(params)
        found = await service.catalogue.index.search(tenant, query)
        search_facets = {name: {"title": name, "items": [{"name": v, "display_name": v, "count": n}
                                                         for v, n in counts.items()]}
                         for name, counts in found["facets"].items()}
        await request.app.state.data.usage(tenant, [d["id"] for d in found["results"]], "search")
        return {"count": found["count"], "results": [ckan_package(d, base) for d in found["results"]],
                "facets": found["facets"], "search_facets": search_facets,
                "sort": ", ".join(f"{c} {'desc' if d else 'asc'}" for c, d in query.sort)}
    if action == "package_show":
        ds = await _open(service, tenant, _id(params))
        return ckan_package(ds, base)
    if action == "resource_show":
        code, fmt = resource_code(_id(params))
        ds = await _open(service, tenant, code)
        formats = {None, "csv", "json", "parquet"} | ({"geojson"} if ds["geo"] else set())
        if fmt not in formats:
            raise CkanError(404, "Not Found Error", "Not found: Resource was not found.")
        return resource_shape(ds, fmt, base, 0)
    if action in ("organization_list", "group_list"):
        column = "provider" if action == "organization_list" else "category"
        all_fields = str(params.get("all_fields", "false")).lower() in ("true", "1")
        counts = (await service.catalogue.index.search(tenant, SearchQuery(open_only=True, rows=0, facets=(
            "organization" if column == "provider" else "groups",))))["facets"]
        pairs = sorted(next(iter(counts.values())).items())
        if not all_fields:
            return [name for name, _n in pairs]
        if column == "provider":
            return [ckan_organization(name, n) for name, n in pairs]
        return [{**ckan_organization(name, n), "type": "group", "is_organization": False} for name, n in pairs]
    if action == "organization_show":
        name = _id(params)
        found = await service.catalogue.index.search(tenant, SearchQuery(open_only=True, rows=1000,
                                                                 terms={"organization": [name]}))
        if not found["count"]:
            raise CkanError(404, "Not Found Error", "Not found: Organization was not found.")
        org = ckan_organization(name, found["count"])
        if str(params.get("include_datasets", "false")).lower() in ("true", "1"):
            org["packages"] = [ckan_package(d, base) for d in found["results"]]
        return org
    if action == "tag_list":
        text = params.get("query", "")
        if not isinstance(text, str) or len(text) > 100:
            raise _validation({"query": ["query is a string of at most 100 characters"]})
        tags = (await service.catalogue.index.search(tenant, SearchQuery(open_only=True, rows=0, facets=("tags",))))
        return sorted(t for t in tags["facets"]["tags"] if text.lower() in t.lower())
    if action == "datastore_search":
        code, _fmt = resource_code(_id(params, "resource_id"))
        # One connection for the catalogue entry and the rows: one BEGIN/ROLLBACK pair, not two.
        async with service.engine.connect() as conn:
            ds = await _open(service, tenant, code, conn)
            fields = [f["id"] for f in service.visible_fields(ds, key is not None)]
            try:
                rq = parse_row_query(params, fields)
            except DatastoreInvalid as exc:
                raise _validation(exc.errors) from exc
            try:
                await service.check_access(ds, key)
            except NotAuthorized as exc:
                raise CkanError(403, "Authorization Error", f"Access denied: {exc.detail}") from exc
            except RateLimited as exc:
                raise CkanError(429, "Rate Limit Error", exc.detail, headers=exc.headers) from exc
            try:
                found = await service.read(ds, rq, key, conn)
            except DatastoreInvalid as exc:
                raise _validation(exc.errors) from exc
        await request.app.state.data.usage(tenant, [code], "api")
        start = f"/api/3/action/datastore_search?resource_id={code}"
        result: dict[str, Any] = {
            "include_total": rq.include_total, "resource_id": code, "fields": found["fields"],
            "records_format": "objects", "records": found["records"], "limit": rq.limit,
            "_links": {"start": start, "next": f"{start}&offset={rq.offset + rq.limit}"}}
        if rq.offset:
            result["offset"] = rq.offset
        if found["total"] is not None:
            result["total"] = found["total"]
            result["total_was_estimated"] = rq.total_was_estimated
        for name in ("filters", "q"):
            if params.get(name):
                result[name] = getattr(rq, name)
        if rq.sort:
            result["sort"] = ", ".join(f"{n} {'desc' if d else 'asc'}" for n, d in rq.sort)
        if rq.as_of:
            result["as_of"] = rq.as_of
        return result
    if action == "help_show":
        asked = params.get("name")
        if asked not in ACTIONS:
            raise CkanError(404, "Not Found Error", "Not found: Action function not found")
        return f"{asked}: see https://docs.ckan.org/en/latest/api/ (CKAN Action API v3)"
    raise CkanError(400, "Bad request", f"Bad request - Action name not known: {action[:64]}")


async def _open(service: OpenData, tenant: str, code: str, conn: AsyncConnection | None = None) -> dict[str, Any]:
    try:
        ds = await service.catalogue.get(tenant, code, conn)
    except ResourceNotFound as exc:
        raise CkanError(404, "Not Found Error", "Not found") from exc
    if ds["open_type"] == OPEN_NONE:
        raise CkanError(404, "Not Found Error", "Not found")
    return ds


ACTIONS = ("package_list", "package_search", "package_show", "resource_show", "organization_list",
           "organization_show", "group_list", "tag_list", "datastore_search", "help_show")


@unversioned.api_route("/{action}", methods=["GET", "POST"])
@router.api_route("/{action}", methods=["GET", "POST"])
async def action(action: str, request: Request) -> Response:
    service: OpenData = request.app.state.data.open
    name = action[:64]
    try:
        return envelope(request, name, await _dispatch(request, name, service))
    except CkanError as exc:
        return error_response(request, name, exc)
