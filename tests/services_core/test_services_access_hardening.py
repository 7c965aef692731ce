"""Issue 12: uploads follow their application's read check (finding 8); metrics are department-scoped (15)."""

from __future__ import annotations

from typing import Any

import httpx
from services_core_helpers import PDF, submit, upload

from cityos.security.audit import AuditQuery

FUND = "housing-fund-withdrawal"
FUND_FORM = {"accountNumber": "1234567890", "purpose": "purchase", "contributionMonths": 1, "accountBalance": 50000,
             "amount": 12000}


async def _audit(app: Any, action: str, resource: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await app.state.security.audit.search(AuditQuery(action=action, resource=resource))
    return rows


async def test_services_upload_download_follows_the_application(client: httpx.AsyncClient,
                                                                anon_client: httpx.AsyncClient, auth: Any,
                                                                desk: Any, app: Any) -> None:
    owner = auth.headers("citizen", user_id="dl-owner")
    doc = await upload(client, owner)
    loose = await upload(client, owner, filename="not-yet-attached.pdf")
    view = await submit(client, owner, FUND, FUND_FORM, [{"name": "id-card", "uploadId": doc["uploadId"]}])
    path = f"/api/services/uploads/{doc['uploadId']}"
    app_path = f"/api/services/applications/{view['id']}"

    # Whoever may read the application may download its materials ...
    got = await client.get(path, headers=owner)
    assert got.status_code == 200 and got.content == PDF
    handling = auth.headers("official", department="housing-fund")
    assert (await client.get(app_path, headers=handling)).status_code == 200
    got = await client.get(path, headers=handling)
    assert got.status_code == 200 and got.content == PDF
    assert (await client.get(path, headers=auth.headers("auditor"))).status_code == 200  # tenant-wide reader

    # ... and whoever gets 403 on the application gets 403 on its materials (the same check), audited.
    for other in (auth.headers("official", department="tax"), auth.headers("dept_admin", department="tax")):
        assert (await client.get(app_path, headers=other)).status_code == 403
        refused = await client.get(path, headers=other)
        assert refused.status_code == 403, refused.text
        assert refused.json()["title"] and PDF not in refused.content
    denied = await _audit(app, "application.read", f"application:{view['id']}")
    assert sum(1 for r in denied if r["outcome"] == "denied") >= 4
    # Roles without application.read at all, other citizens, anonymous callers: refused too.
    assert (await client.get(path, headers=auth.headers("operator"))).status_code == 403
    assert (await client.get(path, headers=auth.headers("citizen", user_id="dl-other"))).status_code == 403
    assert (await anon_client.get(path)).status_code == 401
    # Another tenant's staff: refused before the upload is even looked up.
    assert (await client.get(path, headers=auth.headers("official", department="housing-fund",
                                                        tenant="elsewhere"))).status_code == 404

    # An upload attached to no application yet is its uploader's alone.
    loose_path = f"/api/services/uploads/{loose['uploadId']}"
    assert (await client.get(loose_path, headers=owner)).status_code == 200
    for staff in (handling, auth.headers("auditor"), auth.headers("sys_admin")):
        response = await client.get(loose_path, headers=staff)
        assert response.status_code == 404 and PDF not in response.content
    assert (await client.get("/api/services/uploads/" + "x" * 500, headers=owner)).status_code == 404

    # Every download is audited; a download by anyone but the uploader names the applications that allowed it.
    downloads = await _audit(app, "upload.download", f"upload:{doc['uploadId']}")
    assert len(downloads) == 3 and {r["outcome"] for r in downloads} == {"success"}
    assert sorted(r["role"] for r in downloads) == ["auditor", "citizen", "official"]
    assert all(r["detail"]["applications"] == [view["id"]] for r in downloads if r["role"] != "citizen")
    assert len(await _audit(app, "upload.download", f"upload:{loose['uploadId']}")) == 1


async def test_services_metrics_are_scoped_to_a_dept_admins_departments(client: httpx.AsyncClient, auth: Any,
                                                                        desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="m-1")
    doc = await upload(client, citizen)
    await submit(client, citizen, FUND, FUND_FORM, [{"name": "id-card", "uploadId": doc["uploadId"]}])
    await submit(client, citizen, "social-security-card",
                 {"applicantName": "王强", "birthDate": "1990-01-01", "phone": "13800000000"},
                 [{"name": "id-card", "uploadId": doc["uploadId"]}])
    everything = {"housing-fund": 1, "human-resources-social-security": 1}

    async def departments(headers: dict[str, str]) -> dict[str, int]:
        response = await client.get("/api/services/metrics", headers=headers, params={"by": "department"})
        assert response.status_code == 200, response.text
        return {i["department"]: i["applications"] for i in response.json()["items"]}

    async def services(headers: dict[str, str]) -> set[str]:
        response = await client.get("/api/services/metrics", headers=headers, params={"by": "service"})
        assert response.status_code == 200, response.text
        return {i["service"] for i in response.json()["items"]}

    fund_admin = auth.headers("dept_admin", department="housing-fund")
    assert await departments(fund_admin) == {"housing-fund": 1}
    assert await services(fund_admin) == {FUND}
    assert await departments(auth.headers("dept_admin", department="tax")) == {}
    both = auth.headers("dept_admin", department="housing-fund",
                        departments=["housing-fund", "human-resources-social-security"])
    assert await departments(both) == everything
    # Tenant-wide supervisors (the auditor) still see the whole tenant.
    assert await departments(auth.headers("auditor")) == everything
    assert (await client.get("/api/services/metrics", headers=auth.headers("official", department="housing-fund"))
            ).status_code == 403
    bad = await client.get("/api/services/metrics", headers=fund_admin, params={"by": "nonsense"})
    assert bad.status_code in (400, 422)
