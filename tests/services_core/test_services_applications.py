"""Applications end to end through the API: instant approval (秒批), manual review, bad input, access."""

from __future__ import annotations

from typing import Any

import httpx
from services_core_helpers import act, inbox, submit, upload, wallet_licence

FUND = "housing-fund-withdrawal"


def fund_form(**over: Any) -> dict[str, Any]:
    return {"accountNumber": "1234567890", "purpose": "rent", "contributionMonths": 12, "accountBalance": 50000,
            "amount": 12000, **over}


async def test_services_instant_approval_by_dmn(client: httpx.AsyncClient, auth: Any, desk: Any, app: Any) -> None:
    citizen = auth.headers("citizen", user_id="u1")
    licence_id = await wallet_licence(app, "u1", "id-card")
    view = await submit(client, citizen, FUND, fund_form(), [{"name": "id-card", "licenceId": licence_id}])
    assert view["status"] == "approved" and view["instant"] is True
    assert view["receipt"].startswith("YW20260302")
    assert view["materials"][0]["verified"] is True
    steps = [s["step"] for s in view["steps"]]
    assert steps[0] == "submitted" and "instant_check" in steps and "auto_approve" in steps
    decided = next(s for s in view["steps"] if s["step"] == "instant_check")
    assert decided["department"] == "housing-fund" and decided["instant"] is True
    # Nothing lands in an official's inbox.
    assert await inbox(client, auth.headers("official", department="housing-fund")) == []
    got = await client.get(f"/api/services/applications/{view['id']}", headers=citizen)
    assert got.status_code == 200 and got.json()["deadline"]["state"] == "green"


async def test_services_manual_review_then_approve(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="u2")
    doc = await upload(client, citizen)
    # 2 contribution months: the DMN table sends rent withdrawals to a person.
    view = await submit(client, citizen, FUND, fund_form(contributionMonths=2),
                        [{"name": "id-card", "uploadId": doc["uploadId"]}])
    assert view["status"] == "in_review" and view["instant"] is False
    official = auth.headers("official", department="housing-fund")
    items = await inbox(client, official)
    assert len(items) == 1 and items[0]["applicationId"] == view["id"]
    assert items[0]["department"] == "housing-fund" and items[0]["deadline"]["limitDays"] == 3
    detail = await client.get(f"/api/services/tasks/{items[0]['id']}", headers=official)
    assert detail.status_code == 200
    assert detail.json()["form"]["contributionMonths"] == 2 and detail.json()["materials"][0]["sha256"] == doc["sha256"]
    done = await act(client, official, items[0]["id"], "approve", {"comment": "ok"})
    assert done["status"] == "approved" and done["completedAt"]
    review = [s for s in done["steps"] if s["step"] == "fund_review"]
    assert review == [{"step": "fund_review", "title": "提取审核", "at": review[0]["at"],
                       "department": "housing-fund", "outcome": "approve", "comment": "ok"}]
    # Completed tasks are not in the open inbox but are in the completed one.
    assert await inbox(client, official) == []
    assert len(await inbox(client, official, status="completed")) == 1


async def test_services_illegal_task_actions(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any,
                                             desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="u3")
    doc = await upload(client, citizen)
    view = await submit(client, citizen, FUND, fund_form(purpose="medical"),
                        [{"name": "id-card", "uploadId": doc["uploadId"]}])
    official = auth.headers("official", department="housing-fund")
    task_id = (await inbox(client, official))[0]["id"]
    # Another department's official: 403.
    tax = auth.headers("official", department="tax")
    await act(client, tax, task_id, "approve", status=403)
    assert (await client.get(f"/api/services/tasks/{task_id}", headers=tax)).status_code == 403
    # Citizens cannot act on tasks; anonymous callers are told to authenticate.
    await act(client, citizen, task_id, "approve", status=403)
    assert (await anon_client.post(f"/api/services/tasks/{task_id}/approve", json={})).status_code == 401
    # Reject and request-supplement need a reason.
    bad = await act(client, official, task_id, "reject", {}, status=400)
    assert bad["errors"][0]["field"] == "reason"
    await act(client, official, task_id, "request-supplement", {"reason": "  "}, status=400)
    await act(client, official, task_id, "escalate", {}, status=404)
    await act(client, official, "nope", "approve", status=404)
    rejected = await act(client, official, task_id, "reject", {"reason": "余额不足以支付医疗费用以外的提取"})
    assert rejected["status"] == "rejected" and rejected["outcomeReason"].startswith("余额不足")
    # Already completed: 409.
    await act(client, official, task_id, "approve", status=409)
    got = await client.get(f"/api/services/applications/{view['id']}", headers=citizen)
    assert got.json()["status"] == "rejected"


async def test_services_invalid_form_lists_fields(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    citizen = auth.headers("citizen", user_id="u4")
    doc = await upload(client, citizen)
    body = await submit(client, citizen, FUND, {"accountNumber": "12ab", "purpose": "holiday", "amount": -5,
                                                "extra": 1},
                        [{"name": "id-card", "uploadId": doc["uploadId"]}], status=400)
    fields = {e["field"] for e in body["errors"]}
    assert {"form.accountNumber", "form.purpose", "form.amount", "form.contributionMonths",
            "form.accountBalance"} <= fields
    assert any(e["field"] == "form" and "extra" in e["message"] for e in body["errors"])
    # Materials: missing, unknown, someone else's upload, both kinds at once.
    other = await upload(client, auth.headers("citizen", user_id="someone-else"))
    body = await submit(client, citizen, FUND, fund_form(), [
        {"name": "passport", "uploadId": doc["uploadId"]},
        {"name": "rental-contract", "uploadId": other["uploadId"]},
    ], status=400)
    messages = {e["field"]: e["message"] for e in body["errors"]}
    assert "materials[0].name" in messages and "materials[1].uploadId" in messages
    assert any("missing required material 'id-card'" in e["message"] for e in body["errors"])
    body = await submit(client, citizen, FUND, fund_form(), [{"name": "id-card", "uploadId": doc["uploadId"],
                                                              "licenceId": "x"}], status=400)
    assert body["errors"][0]["field"] == "materials[0]"
    # Unknown service: 404. Not JSON: 415/400.
    await submit(client, citizen, "no-such-service", {}, [], status=404)
    raw = await client.post("/api/services/applications", headers={**citizen, "Content-Type": "application/json"},
                            content=b"{nope")
    assert raw.status_code == 400


async def test_services_wallet_licence_checks(client: httpx.AsyncClient, auth: Any, desk: Any, app: Any) -> None:
    citizen = auth.headers("citizen", user_id="u5")
    # Another holder's licence, a licence of the wrong type, an unknown licence: all field errors.
    theirs = await wallet_licence(app, "u6", "id-card")
    wrong_type = await wallet_licence(app, "u5", "household-register")
    for licence_id in (theirs, wrong_type, "urn:nope"):
        body = await submit(client, citizen, FUND, fund_form(), [{"name": "id-card", "licenceId": licence_id}],
                            status=400)
        assert body["errors"][0]["field"] == "materials[0].licenceId", body
    # A revoked licence is refused too.
    mine = await wallet_licence(app, "u5", "id-card")
    await app.state.licences.revoke("", mine, "lost", None)
    body = await submit(client, citizen, FUND, fund_form(), [{"name": "id-card", "licenceId": mine}], status=400)
    assert "e-licence refused" in body["errors"][0]["message"]
    # rental-contract has no e-licence type: it cannot be replaced by one.
    ok = await wallet_licence(app, "u5", "id-card")
    body = await submit(client, citizen, FUND, fund_form(), [{"name": "id-card", "licenceId": ok},
                                                             {"name": "rental-contract", "licenceId": ok}], status=400)
    assert body["errors"][0]["field"] == "materials[1].licenceId"


async def test_services_application_access(client: httpx.AsyncClient, anon_client: httpx.AsyncClient, auth: Any,
                                           desk: Any) -> None:
    owner = auth.headers("citizen", user_id="u7")
    doc = await upload(client, owner)
    view = await submit(client, owner, FUND, fund_form(purpose="purchase", contributionMonths=1),
                        [{"name": "id-card", "uploadId": doc["uploadId"]}])
    path = f"/api/services/applications/{view['id']}"
    assert (await anon_client.get(path)).status_code == 401
    assert (await client.get(path, headers=auth.headers("citizen", user_id="u8"))).status_code == 403
    assert (await client.get(path, headers=auth.headers("official", department="tax"))).status_code == 403
    staff = await client.get(path, headers=auth.headers("official", department="housing-fund"))
    assert staff.status_code == 200 and staff.json()["openTasks"][0]["department"] == "housing-fund"
    assert (await client.get("/api/services/applications/unknown", headers=owner)).status_code == 404
    mine = await client.get("/api/services/applications", headers=owner)
    assert [a["id"] for a in mine.json()["items"]] == [view["id"]]
    assert (await client.get("/api/services/applications", headers=auth.headers("citizen", user_id="u8"))
            ).json()["items"] == []
    dept = await client.get("/api/services/applications", headers=auth.headers("official", department="housing-fund"))
    assert [a["id"] for a in dept.json()["items"]] == [view["id"]]
    # Officials cannot submit; anonymous callers cannot either.
    assert (await anon_client.post("/api/services/applications", json={})).status_code == 401
    assert (await client.post("/api/services/applications", json={},
                              headers=auth.headers("official", department="tax"))).status_code == 403
    # Another tenant's header on a citizen token: refused.
    assert (await client.get(path, headers={**owner, "NGSILD-Tenant": "other"})).status_code == 403
