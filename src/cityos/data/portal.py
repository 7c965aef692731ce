"""Public figures of one open dataset for the open-data portal (数据开放门户).

    GET /api/data/open/{code}/stats   usage (views, searches, API reads, downloads), the snapshot
                                      versions of the last 30 days, rows and quality score (public)

Only open datasets (无条件开放 / 有条件开放) answer; a dataset that is not open is a 404, as in the CKAN
API, so nothing about it leaks. Each call counts one page view of the dataset.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cityos.core.responses import json_response
from cityos.security.api import header_tenant

router = APIRouter(tags=["opendata"])
USAGE_KINDS = ("view", "search", "api", "download")


@router.get("/api/data/open/{code}/stats")
async def open_stats(code: str, request: Request) -> Response:
    domain = request.app.state.data
    tenant = header_tenant(request) or ""
    ds = await domain.open.open_dataset(tenant, code[:128])
    await domain.usage(tenant, [ds["id"]], "view")
    usage = dict.fromkeys(USAGE_KINDS, 0)
    for (owner, dataset, kind), count in domain.counts.items():
        if owner == tenant and dataset == ds["id"]:
            usage[kind] = usage.get(kind, 0) + count
    versions = await domain.catalogue.list_versions(tenant, ds["id"])
    return json_response({"dataset": ds["id"], "usage": usage, "versions": versions, "rows": ds["row_count"],
                          "geo": bool(ds["geo"]), "history": ds["source_kind"] == "readings",
                          "qualityScore": ds["quality_score"]})
