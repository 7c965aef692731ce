"""一件事 bundles (newborn birth), supervision of overdue work, metrics per service and department."""

from __future__ import annotations

from typing import Any

import httpx
from services_core_helpers import act, inbox, submit, upload, wallet_licence

BIRTH = {"childName": "王小椰", "childGender": "female", "birthDate": "2026-02-27", "birthPlace": "海南省人民医院",
         "motherName": "陈芳", "fatherName": "王强", "guardianName": "王强",
         "householdAddress": "海口市美兰区海甸岛1号",
         "phone": "13900000000"}
BIRTH_DEPTS = {"birth-certificate": "health", "newborn-household-registration": "public-security",
               "newborn-medical-insurance": "medical-insurance",
               "social-security-card": "human-resources-social-security"}


async def test_services_birth_bundle(client: httpx.AsyncClient, auth: Any, desk: Any, app: Any) -> None:
    parent = auth.headers("citizen", user_id="b1")
    materials = [{"name": "id-card", "licenceId": await wallet_licence(app, "b1", "id-card")},
                 {"name": "household-register", "licenceId": await wallet_licence(app, "b1", "household-register")}]
    bad = await client.post("/api/services/bundles", headers=parent, json={
        "bundleCode": "newborn-birth", "form": {**BIRTH, "phone": "x"}, "materials": materials[:1]})
    assert bad.status_code == 400
    fields = {e["field"] for e in bad.json()["errors"]}
    assert "form.phone" in fields and "newborn-household-registration.materials" in fields
    created = await client.post("/api/services/bundles", headers=parent, json={
        "bundleCode": "newborn-birth", "form": BIRTH, "materials": materials})
    assert created.status_code == 201, created.text
    case = created.json()
    assert case["status"] == "in_review" and len(case["applications"]) == 4
    assert {a["serviceCode"]: a["department"] for a in case["applications"]} == BIRTH_DEPTS
    # One form, four departments working in parallel; the social security card got the child's name.
    for code, dept in BIRTH_DEPTS.items():
        official = auth.headers("official", department=dept)
        items = await inbox(client, official)
        assert [i["serviceCode"] for i in items] == [code]
        detail = (await client.get(f"/api/services/tasks/{items[0]['id']}", headers=official)).json()
        if code == "social-security-card":
            assert detail["form"]["applicantName"] == "王小椰"
        assert detail["verifiedLicences"][0]["verified"] is True
        await act(client, official, items[0]["id"], "approve")
    tracked = await client.get(f"/api/services/bundles/{case['caseId']}", headers=parent)
    assert tracked.status_code == 200 and tracked.json()["status"] == "approved"
    # Licences came out of the certificate and the card.
    assert sum(len(a["licenceIds"]) for a in tracked.json()["applications"]) == 2
    assert (await client.get(f"/api/services/bundles/{case['caseId']}",
                             headers=auth.headers("citizen", user_id="b2"))).status_code == 403
    assert (await client.get("/api/services/bundles/nope", headers=parent)).status_code == 404
    unknown = await client.post("/api/services/bundles", headers=parent, json={"bundleCode": "x", "form": {}})
    assert unknown.status_code == 404


async def test_services_supervision_and_metrics(client: httpx.AsyncClient, auth: Any, desk: Any, app: Any,
                                                fake_clock: Any) -> None:
    citizen = auth.headers("citizen", user_id="s1")
    doc = await upload(client, citizen)
    ids = {"id-card": doc["uploadId"]}
    fund = {"accountNumber": "1234567890", "purpose": "rent", "contributionMonths": 12, "accountBalance": 50000,
            "amount": 1000}
    await submit(client, citizen, "housing-fund-withdrawal", fund, [{"name": "id-card", "uploadId": ids["id-card"]}])
    slow = await submit(client, citizen, "housing-fund-withdrawal", {**fund, "purpose": "medical"},
                        [{"name": "id-card", "uploadId": ids["id-card"]}])
    card = await submit(client, citizen, "newborn-medical-insurance",
                        {"childName": "小明", "birthDate": "2026-02-20", "guardianName": "李四"},
                        [{"name": "id-card", "uploadId": ids["id-card"]}])
    fake_clock.advance(days=7)  # the following Monday: both open cases are past 3 working days
    supervisor = auth.headers("dept_admin", department="housing-fund")
    overdue = await client.get("/api/services/supervision/overdue", headers=supervisor)
    assert overdue.status_code == 200
    assert [i["id"] for i in overdue.json()["items"]] == [slow["id"]]  # only their department's
    assert overdue.json()["byDepartment"] == {"housing-fund": 1}
    assert overdue.json()["items"][0]["waitingOn"] == ["housing-fund"]
    assert overdue.json()["items"][0]["overdueDays"] == 2
    auditor = auth.headers("auditor")
    everything = (await client.get("/api/services/supervision/overdue", headers=auditor)).json()
    assert everything["byDepartment"] == {"housing-fund": 1, "medical-insurance": 1}
    filtered = (await client.get("/api/services/supervision/overdue", headers=auditor,
                                 params={"department": "medical-insurance"})).json()
    assert [i["id"] for i in filtered["items"]] == [card["id"]]
    assert (await client.get("/api/services/supervision/overdue", headers=supervisor,
                             params={"department": "tax"})).status_code == 403
    assert (await client.get("/api/services/supervision/overdue", headers=citizen)).status_code == 403
    # Decide the slow one late.
    official = auth.headers("official", department="housing-fund")
    await act(client, official, (await inbox(client, official))[0]["id"], "approve")
    by_service = (await client.get("/api/services/metrics", headers=auditor, params={"by": "service"})).json()
    fund_row = next(i for i in by_service["items"] if i["service"] == "housing-fund-withdrawal")
    assert fund_row["applications"] == 2 and fund_row["completed"] == 2
    assert fund_row["onlineRate"] == 1.0 and fund_row["instantShare"] == 0.5 and fund_row["overdueRate"] == 0.5
    assert fund_row["tripsSaved"] == 2 and fund_row["averageHandlingMinutes"] == 5040.0  # (0 + 7 days) / 2
    by_dept = (await client.get("/api/services/metrics", headers=auditor, params={"by": "department"})).json()
    assert {i["department"]: i["applications"] for i in by_dept["items"]} == {"housing-fund": 2,
                                                                            "medical-insurance": 1}
    assert next(i for i in by_dept["items"] if i["department"] == "medical-insurance")["overdueRate"] == 1.0
    assert (await client.get("/api/services/metrics", headers=citizen)).status_code == 403
    assert (await client.get("/api/services/metrics", headers=auditor, params={"by": "x"})).status_code == 400
