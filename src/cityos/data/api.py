"""HTTP API of the data domain.

    GET  /catalog                          DCAT-AP 3 of the open catalogue: Turtle (default), JSON-LD or RDF/XML
                                           by Accept or ?format=ttl|jsonld|rdf (public)
    GET  /api/data/datasets                search the whole catalogue: q, provider, category, tag, open_type,
                                           share_type, district, rows, start; facets (data.catalogue.read)
    GET  /api/data/datasets/{code}         GB/T 21063 metadata, fields with classes, versions
    POST /api/data/datasets                a department registers a dataset {code, title, fields, records, …}
                                           (data.register; provider = the caller's department)
    POST /api/data/harvest                 catalogue the hub of the tenant now (data.catalogue.manage)
    POST /api/data/keys                    an API key for conditional open datasets {holder, purpose,
                                           datasets, ratePerMinute} (data.key.manage); the key is shown once
    DELETE /api/data/keys/{id}             revoke it
    POST /opendata/key-applications        an outside developer applies {applicant, contact, purpose, datasets,
                                           ratePerMinute} (data.key.apply, anyone); answers a claim code, once
    POST /opendata/key-applications/{id}/claim  {claim}: the state; the key once, when approved
    GET  /api/data/key-applications        ?status= (data.key.manage)
    POST /api/data/key-applications/{id}/decision  {decision: approve|reject, ratePerMinute?, note?}
    GET  /opendata/download/{code}.{fmt}   csv | json | geojson | parquet, ?as_of=YYYY-MM-DD (open tiers)
    POST /api/data/share                   request {dataset, fields, purpose, days, justification, pledge}
    POST /api/data/share/{id}/decision     {decision: approve|reject, fields?, note?} by the owner (narrowing)
    POST /api/data/share/{id}/activate     after the second person approved sensitive fields
    POST /api/data/share/{id}/revoke
    GET  /api/data/share/{id}/rows         rows under the grant (granted fields only; audited with the grant id)
    GET|POST /api/data/negative-list       负面清单 (data.negative.manage to add)
    DELETE /api/data/negative-list/{id}    take an entry off (data.negative.manage)
    GET  /api/data/usage                   reads and downloads per dataset since start (data.catalogue.read)
    GET  /api/data/sources                 一数一源: declared authoritative sources (data.catalogue.read)
    PUT  /api/data/sources                 declare one {entityType | dataset, field, department, system, policy}
                                           (data.catalogue.manage)
    GET  /api/data/sources/conflicts       catalogue items with several sources, and the refused / flagged
                                           writes from another source (data.catalogue.read)
    /api/3/action/*                        CKAN Action API v3 (see ckan.py)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from cityos.core.db import write_lock_of
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.responses import json_response, read_json_object
from cityos.data import ckan, portal
from cityos.data.catalogue import Catalogue, SearchQuery, search
from cityos.data.datastore import (
    ROWS_MAX,
    DatastoreInvalid,
    parse_row_query,
    to_csv,
    to_geojson,
    to_parquet,
)
from cityos.data.dcat import FORMATS, catalogue_graph, negotiate
from cityos.data.keyapps import KeyApplications
from cityos.data.lineage import Lineage
from cityos.data.models import OPEN_NONE
from cityos.data.opendata import DOWNLOAD_FORMATS, OpenData
from cityos.data.quality import Quality
from cityos.data.scheduled import start_harvest, start_key_call_pruning, start_sources
from cityos.data.searchindex import SearchIndex
from cityos.data.sharing import Refused, Sharing
from cityos.data.sources import Sources
from cityos.security.api import client_ip, current_principal, header_tenant, request_tenant, require
from cityos.security.audit import AuditEvent
from cityos.security.classes import class_registry
from cityos.security.policy import Principal

router = APIRouter(tags=["data"])
routers: list[APIRouter] = [router, ckan.router, ckan.unversioned, portal.router]
MAX_REGISTER_BODY = 8 * 1024 * 1024
DOWNLOAD_MAX_ROWS = 200_000


class DataDomain:
    def __init__(self, catalogue: Catalogue, open_data: OpenData, app: Any) -> None:
        self.catalogue = catalogue
        self.open = open_data
        self.app = app
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.sharing: Sharing
        self.quality: Quality
        self.lineage: Lineage
        self.sources: Sources
        self.applications: KeyApplications

    async def usage(self, tenant: str, codes: list[str], kind: str) -> None:
        for code in codes:
            self.counts[(tenant, code, kind)] += 1


def data_of(request: Request) -> DataDomain:
    domain: DataDomain = request.app.state.data
    return domain


async def _tenant(request: Request) -> str:
    return request_tenant(request, await current_principal(request))


async def _audit(request: Request, principal: Principal | None, action: str, resource: str, **detail: Any) -> None:
    await request.app.state.security.service.record(AuditEvent.of(
        principal, action, resource, ip=client_ip(request), tenant=await _tenant(request), **detail))


@router.get("/catalog")
async def dcat_catalog(request: Request) -> Response:
    try:
        fmt = negotiate(request.headers.get("accept", ""), request.query_params.get("format"))
    except ValueError as exc:
        raise BadRequestData(str(exc)) from exc
    tenant = header_tenant(request) or ""
    found = await data_of(request).catalogue.index.search(tenant, SearchQuery(open_only=True, rows=100_000))
    base = str(request.base_url).rstrip("/")
    graph = catalogue_graph(base, found["results"])
    body = graph.serialize(format=fmt)
    return Response(body.encode() if isinstance(body, str) else body, media_type=FORMATS[fmt],
                    headers={"Vary": "Accept"})


def _search_params(request: Request) -> SearchQuery:
    p = request.query_params
    query = SearchQuery(text=p.get("q", "")[:500], facets=("organization", "groups", "tags", "open_type",
                                                            "share_type", "district"))
    for param, name in (("provider", "provider"), ("category", "category"), ("tag", "tags"),
                        ("open_type", "open_type"), ("share_type", "share_type"), ("district", "district")):
        values = [v[:128] for v in p.getlist(param) if v]
        if values:
            query.terms[name] = values
    for name, default, high in (("rows", 20, 500), ("start", 0, 1_000_000)):
        raw = p.get(name, str(default))
        if not raw.isdecimal() or int(raw) > high:
            raise BadRequestData(f"{name} must be an integer from 0 to {high}")
        setattr(query, name, int(raw))
    query.sort = [("name", False)]
    return query


def _metadata(ds: dict[str, Any]) -> dict[str, Any]:
    from cityos.data.models import OPEN_TYPES, SHARE_TYPES, UPDATE_CYCLES

    return {"code": ds["id"], "name": ds["title"], "nameEn": ds["title_en"], "description": ds["description"],
            "provider": ds["provider"], "category": ds["category"], "tags": ds["tags"], "format": ds["format"],
            "updateCycle": ds["update_cycle"], "updateCycleZh": UPDATE_CYCLES.get(ds["update_cycle"]),
            "shareType": ds["share_type"], "shareTypeZh": SHARE_TYPES.get(ds["share_type"]),
            "openType": ds["open_type"], "openTypeZh": OPEN_TYPES.get(ds["open_type"]),
            "sourceKind": ds["source_kind"], "district": ds["district"], "rows": ds["row_count"],
            "version": ds["version"], "qualityScore": ds["quality_score"],
            "fields": [{"id": f["id"], "type": f["type"], "dataClass": f["class"], "source": f.get("source")}
                       for f in ds["fields"]],
            "modifiedAt": ds["modified_at"].isoformat() if ds["modified_at"] else None}


@router.get("/api/data/datasets", dependencies=[Depends(require("data.catalogue.read"))])
async def list_datasets(request: Request) -> Response:
    found = await search(request.app.state.engine, await _tenant(request), _search_params(request))
    return json_response({"count": found["count"], "datasets": [_metadata(d) for d in found["results"]],
                          "facets": found["facets"]})


@router.get("/api/data/datasets/{code}", dependencies=[Depends(require("data.catalogue.read"))])
async def show_dataset(code: str, request: Request) -> Response:
    tenant = await _tenant(request)
    domain = data_of(request)
    ds = await domain.catalogue.get(tenant, code)
    return json_response({**_metadata(ds), "versions": await domain.catalogue.list_versions(tenant, ds["id"])})


@router.post("/api/data/datasets", status_code=201)
async def register_dataset(request: Request,
                           principal: Principal | None = Depends(require("data.register"))) -> Response:
    body = await read_json_object(request, MAX_REGISTER_BODY)
    if principal is None or not principal.department:
        raise BadRequestData("registering a dataset needs a caller with a department (the provider)")
    records = body.get("records", [])
    result = await data_of(request).catalogue.register(await _tenant(request), principal.department, body, records,
                                                       principal=principal.label)
    await _audit(request, principal, "data.register", f"dataset:{result['code']}", rows=result["rows"])
    return json_response(result, status=201)


@router.post("/api/data/harvest")
async def harvest(request: Request, principal: Principal | None = Depends(require("data.catalogue.manage"))
                  ) -> Response:
    tenant = await _tenant(request)
    result = await data_of(request).catalogue.harvest(tenant)
    await _audit(request, principal, "data.harvest", f"tenant:{tenant}", datasets=result["datasets"])
    return json_response({"tenant": tenant, "datasets": result["datasets"]})


@router.post("/api/data/keys", status_code=201)
async def issue_key(request: Request, principal: Principal | None = Depends(require("data.key.manage"))
                    ) -> Response:
    body = await read_json_object(request, 64 * 1024)
    codes = body.get("datasets")
    rate = body.get("ratePerMinute", 60)
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise BadRequestData("datasets must be a list of dataset codes")
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise BadRequestData("ratePerMinute must be an integer")
    holder, purpose = body.get("holder"), body.get("purpose")
    if not isinstance(holder, str) or not isinstance(purpose, str):
        raise BadRequestData("holder and purpose are required strings")
    made = await data_of(request).open.issue_key(await _tenant(request), holder, purpose, codes, rate,
                                                 principal.label if principal else "")
    await _audit(request, principal, "data.key.issue", f"apikey:{made['id']}", holder=holder, purpose=purpose[:200],
                 datasets=made["datasets"])
    return json_response(made, status=201, headers={"Cache-Control": "no-store"})


@router.delete("/api/data/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, request: Request,
                     principal: Principal | None = Depends(require("data.key.manage"))) -> Response:
    await data_of(request).open.revoke_key(await _tenant(request), key_id)
    await _audit(request, principal, "data.key.revoke", f"apikey:{key_id[:32]}")
    return Response(status_code=204)


@router.post("/opendata/key-applications", status_code=201)
async def apply_for_key(request: Request, principal: Principal | None = Depends(require("data.key.apply"))
                        ) -> Response:
    body = await read_json_object(request, 16 * 1024)
    made = await data_of(request).applications.apply(await _tenant(request), body, client_ip(request))
    await _audit(request, principal, "data.key.apply", f"keyapplication:{made['id']}", applicant=made["applicant"],
                 datasets=made["datasets"], ratePerMinute=made["ratePerMinute"])
    return json_response(made, status=201, headers={"Cache-Control": "no-store"})


@router.post("/opendata/key-applications/{app_id}/claim")
async def claim_key(app_id: str, request: Request, principal: Principal | None = Depends(require("data.key.apply"))
                    ) -> Response:
    body = await read_json_object(request, 4 * 1024)
    found = await data_of(request).applications.claim(await _tenant(request), app_id, body.get("claim"))
    if "key" in found:
        await _audit(request, principal, "data.key.claim", f"apikey:{found['keyId']}", application=found["id"])
    return json_response(found, headers={"Cache-Control": "no-store"})


@router.get("/api/data/key-applications")
async def key_applications(request: Request, principal: Principal | None = Depends(require("data.key.manage"))
                           ) -> Response:
    status = request.query_params.get("status")
    found = await data_of(request).applications.listing(await _tenant(request), principal, status)
    return json_response({"applications": found})


@router.post("/api/data/key-applications/{app_id}/decision")
async def decide_key_application(app_id: str, request: Request,
                                 principal: Principal | None = Depends(require("data.key.manage"))) -> Response:
    body = await read_json_object(request, 16 * 1024)
    result = await data_of(request).applications.decide(await _tenant(request), principal, app_id, body)
    await _audit(request, principal, "data.key.decide", f"keyapplication:{result['id']}", status=result["status"],
                 ratePerMinute=result["ratePerMinute"])
    return json_response(result)


@router.get("/api/data/usage", dependencies=[Depends(require("data.catalogue.read"))])
async def usage(request: Request) -> Response:
    tenant = await _tenant(request)
    out: dict[str, dict[str, int]] = {}
    for (t, code, kind), n in data_of(request).counts.items():
        if t == tenant:
            out.setdefault(code, {})[kind] = n
    return json_response({"usage": out})


@router.get("/opendata/download/{name}")
async def download(name: str, request: Request) -> Response:
    """An open dataset's rows as a file; a conditional one needs its API key (Authorization header)."""
    code, dot, fmt = name.rpartition(".")
    if not dot or fmt not in DOWNLOAD_FORMATS:
        raise ResourceNotFound(f"downloads are <code>.{'|'.join(DOWNLOAD_FORMATS)}")
    domain = data_of(request)
    raw_key = request.headers.get("Authorization", "")
    key = None
    if raw_key and not raw_key.lower().startswith("bearer "):
        key = await domain.open.key_of(raw_key.strip())
        if key is None:
            from cityos.data.opendata import NotAuthorized

            raise NotAuthorized("the API key is not valid or was revoked")
    tenant = key.tenant if key is not None else (header_tenant(request) or "")
    ds = await domain.open.open_dataset(tenant, code)
    if fmt == "geojson" and not ds["geo"]:
        raise ResourceNotFound(f"dataset {code!r} has no geometry")
    params: dict[str, Any] = {"limit": str(ROWS_MAX)}
    if request.query_params.get("as_of"):
        params["as_of"] = request.query_params["as_of"]
    fields = [f["id"] for f in domain.open.visible_fields(ds, key is not None)]
    try:
        query = parse_row_query(params, fields)
    except DatastoreInvalid as exc:
        raise BadRequestData(exc.detail) from exc
    await domain.open.check_access(ds, key)
    query.limit = DOWNLOAD_MAX_ROWS
    found = await domain.open.read(ds, query, key)
    await domain.usage(tenant, [code], "download")
    records, names = found["records"], [f["id"] for f in found["fields"]]
    filename = f"{code}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if fmt == "csv":
        return Response(to_csv(names, records), media_type="text/csv; charset=utf-8", headers=headers)
    if fmt == "json":
        return Response(orjson.dumps({"dataset": code, "fields": found["fields"], "records": records}),
                        media_type="application/json", headers=headers)
    if fmt == "geojson":
        return Response(to_geojson(records), media_type="application/geo+json", headers=headers)
    types = {f["id"]: f["type"] for f in found["fields"]}
    return Response(to_parquet(names, types, records), media_type="application/vnd.apache.parquet", headers=headers)


# ---------------------------------------------------------------------- sharing between departments


def _sharing(request: Request) -> Sharing:
    return data_of(request).sharing


def _me(principal: Principal | None) -> Principal:
    if principal is None:
        raise BadRequestData("a signed-in caller is needed")
    return principal


@router.post("/api/data/share", status_code=201)
async def share_request(request: Request, principal: Principal | None = Depends(require("data.share.request"))
                        ) -> Response:
    body = await read_json_object(request, 64 * 1024)
    tenant = await _tenant(request)
    try:
        made = await _sharing(request).request(tenant, _me(principal), body, client_ip(request))
    except Refused as exc:
        await _audit(request, principal, "data.share.request", f"dataset:{str(body.get('dataset'))[:128]}",
                     outcome_reason=exc.detail, refused=True)
        raise
    await _audit(request, principal, "data.share.request", f"share:{made['id']}", dataset=made["dataset"],
                 fields=made["fields"], pledge=made["pledge"]["sha256"])
    return json_response(made, status=201)


@router.get("/api/data/share")
async def share_list(request: Request, principal: Principal | None = Depends(require("data.catalogue.read"))
                     ) -> Response:
    return json_response({"requests": await _sharing(request).listing(await _tenant(request), _me(principal))})


@router.get("/api/data/share-stats", dependencies=[Depends(require("data.catalogue.read"))])
async def share_stats(request: Request) -> Response:
    return json_response(await _sharing(request).rate(await _tenant(request)))


@router.get("/api/data/share/{request_id}", dependencies=[Depends(require("data.catalogue.read"))])
async def share_show(request_id: str, request: Request) -> Response:
    return json_response(await _sharing(request).get(await _tenant(request), request_id))


@router.post("/api/data/share/{request_id}/{verb}")
async def share_decide(request_id: str, verb: str, request: Request,
                       principal: Principal | None = Depends(require("data.share.decide"))) -> Response:
    tenant = await _tenant(request)
    sharing = _sharing(request)
    if verb == "decision":
        body = await read_json_object(request, 16 * 1024)
        result = await sharing.decide(tenant, _me(principal), request_id, body)
    elif verb == "activate":
        result = await sharing.activate(tenant, _me(principal), request_id)
    elif verb == "revoke":
        result = await sharing.revoke(tenant, _me(principal), request_id)
    else:
        raise ResourceNotFound("verbs: decision, activate, revoke")
    await _audit(request, principal, f"data.share.{verb}", f"share:{request_id[:32]}", status=result["status"],
                 grantedFields=result["grantedFields"])
    return json_response(result)


@router.get("/api/data/share/{request_id}/rows")
async def share_rows(request_id: str, request: Request,
                     principal: Principal | None = Depends(require("data.share.read"))) -> Response:
    """Rows under a grant: only the granted fields; every read (or refusal) audited with the grant id."""
    tenant = await _tenant(request)
    sharing = _sharing(request)
    item = await sharing.get(tenant, request_id)
    params = dict(request.query_params)
    try:
        query = parse_row_query(params, item["grantedFields"] or [])
    except DatastoreInvalid as exc:
        await _audit(request, principal, "data.share.read", f"grant:{item['id']}", grant=item["id"],
                     outcome_reason="invalid query", refused=True)
        raise BadRequestData(exc.detail) from exc
    try:
        result = await sharing.read(tenant, _me(principal), request_id, query)
    except Exception as exc:
        await _audit(request, principal, "data.share.read", f"grant:{item['id']}", grant=item["id"],
                     outcome_reason=str(getattr(exc, "detail", exc))[:200], refused=True)
        raise
    await _audit(request, principal, "data.share.read", f"grant:{item['id']}", grant=item["id"],
                 dataset=item["dataset"], rows=len(result["records"]), fields=result["fields"])
    return json_response(result)


@router.get("/api/data/negative-list", dependencies=[Depends(require("data.catalogue.read"))])
async def negatives(request: Request) -> Response:
    return json_response({"entries": await _sharing(request).negatives(await _tenant(request))})


@router.post("/api/data/negative-list", status_code=201)
async def add_negative(request: Request, principal: Principal | None = Depends(require("data.negative.manage"))
                       ) -> Response:
    body = await read_json_object(request, 16 * 1024)
    dataset, field, reason = body.get("dataset"), body.get("field"), body.get("reason")
    if not isinstance(dataset, str) or not dataset or (field is not None and not isinstance(field, str)) \
            or not isinstance(reason, str):
        raise BadRequestData("dataset (a code or '*'), field (optional) and reason are strings")
    made = await _sharing(request).add_negative(await _tenant(request), _me(principal), dataset[:128],
                                                field[:256] if field else None, reason)
    await _audit(request, principal, "data.negative.add", f"dataset:{dataset[:128]}", field=field)
    return json_response(made, status=201)


@router.delete("/api/data/negative-list/{entry_id}", status_code=204)
async def remove_negative(entry_id: str, request: Request,
                          principal: Principal | None = Depends(require("data.negative.manage"))) -> Response:
    removed = await _sharing(request).remove_negative(await _tenant(request), _me(principal), entry_id)
    await _audit(request, principal, "data.negative.remove", f"dataset:{removed['dataset']}", field=removed["field"],
                 reason=removed["reason"][:200])
    return Response(status_code=204)


# ---------------------------------------------------------------------- quality


@router.post("/api/data/quality/{code}/check")
async def quality_check(code: str, request: Request,
                        principal: Principal | None = Depends(require("data.quality.manage"))) -> Response:
    body = await read_json_object(request, 64 * 1024) if await request.body() else {}
    result = await data_of(request).quality.check(await _tenant(request), code, body.get("rules"))
    await _audit(request, principal, "data.quality.check", f"dataset:{code[:128]}", score=result["score"],
                 failed=result["failed"])
    return json_response(result)


@router.get("/api/data/quality/{code}", dependencies=[Depends(require("data.catalogue.read"))])
async def quality_report(code: str, request: Request) -> Response:
    return json_response(await data_of(request).quality.report(await _tenant(request), code))


@router.post("/api/data/quarantine/{item_id}/release")
async def quarantine_release(item_id: str, request: Request,
                             principal: Principal | None = Depends(require("data.quality.manage"))) -> Response:
    if not item_id.isdecimal() or len(item_id) > 18:
        raise ResourceNotFound(f"no quarantined record {item_id[:20]!r}")
    result = await data_of(request).quality.release(await _tenant(request), int(item_id),
                                                    principal.label if principal else "")
    await _audit(request, principal, "data.quarantine.release", f"quarantine:{item_id}")
    return json_response(result)


@router.get("/api/data/sources/conflicts", dependencies=[Depends(require("data.catalogue.read"))])
async def source_conflicts(request: Request) -> Response:
    """一数一源 for the data office: `conflicts`, data items claimed by more than one source department in
    the catalogue; `writes`, the writes from a source other than the declared one (refused or flagged),
    newest first (?outcome=refused|flagged, ?limit=1-1000)."""
    tenant = await _tenant(request)
    outcome = request.query_params.get("outcome")
    if outcome not in (None, "refused", "flagged"):
        raise BadRequestData("outcome is refused or flagged")
    raw = request.query_params.get("limit", "200")
    if not (raw.isascii() and raw.isdecimal() and len(raw) <= 4) or not 1 <= int(raw) <= 1000:
        raise BadRequestData("limit is 1-1000")
    domain = data_of(request)
    return json_response({"conflicts": await domain.catalogue.source_conflicts(tenant),
                          "writes": await domain.sources.conflicts(tenant, outcome, int(raw))})


@router.get("/api/data/sources", dependencies=[Depends(require("data.catalogue.read"))])
async def source_rules(request: Request) -> Response:
    """The declared authoritative sources (一数一源) of entity types' attributes and datasets' fields."""
    return json_response({"sources": await data_of(request).sources.rules(await _tenant(request))})


@router.put("/api/data/sources")
async def declare_source(request: Request, principal: Principal | None = Depends(require("data.catalogue.manage"))
                         ) -> Response:
    """Declare a field's authoritative source {entityType | dataset, field ("*" for all), department,
    system ("*" for any), policy: refuse | flag}; it replaces the previous declaration of that field."""
    body = await read_json_object(request, 16 * 1024)
    declared = await data_of(request).sources.declare(await _tenant(request), body,
                                                      principal.label if principal else "system")
    await _audit(request, principal, "data.source.declare", f"source:{declared['subject']}", **declared)
    return json_response(declared)


@router.get("/api/data/lineage/{code}", dependencies=[Depends(require("data.catalogue.read"))])
async def lineage_graph(code: str, request: Request) -> Response:
    """The dataset's upstream and downstream (OpenLineage runs), and each field's authoritative source."""
    tenant = await _tenant(request)
    ds = await data_of(request).catalogue.get(tenant, code)
    graph = await data_of(request).lineage.graph(tenant, f"catalogue:{ds['id']}")
    graph["fields"] = [{"id": f["id"], "dataClass": f["class"], "source": f.get("source")} for f in ds["fields"]]
    return json_response(graph)


async def start(app: FastAPI) -> Callable[[], Awaitable[None]]:
    hub = app.state.hub
    registry = class_registry(app)
    catalogue = Catalogue(app.state.engine, hub.service, registry,
                          write_lock_of(app), compact=hub.resolver.core.compact)
    app.state.data = DataDomain(catalogue, OpenData(app.state.engine, catalogue), app)
    app.state.data.sharing = Sharing(app.state.engine, catalogue, app.state.security.approvals)
    app.state.data.quality = Quality(app.state.engine, catalogue)
    app.state.data.applications = KeyApplications(app.state.engine, app.state.data.open)
    app.state.data.lineage = catalogue.lineage = Lineage(app.state.engine, catalogue.lock)
    sources = Sources(app.state.engine, catalogue.lock, hub.service.sources,
                      lambda name: name if ":" in name else registry.expand(name))
    app.state.data.sources = catalogue.sources = sources
    catalogue.index = SearchIndex(app.state.engine)
    await sources.load()
    hub.service.listeners.append(sources.on_commit)
    stops = [start_harvest(catalogue), start_sources(sources), start_key_call_pruning(app.state.data.open)]

    async def stop() -> None:
        for stop_one in stops:
            await stop_one()
        await sources.flush()

    return stop


__all__ = ["OPEN_NONE", "routers", "start"]
