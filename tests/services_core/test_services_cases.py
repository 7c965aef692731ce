""""My applications" by case: a one-thing bundle (一件事) is listed once, with its overall status, its
progress and its member applications, next to the citizen's single applications."""

from __future__ import annotations

from typing import Any

import httpx
from services_core_helpers import act, inbox, submit, upload, wallet_licence
from test_services_bundles_supervision import BIRTH, BIRTH_DEPTS

MINE = "/api/services/applications"


async def birth_case(client: httpx.AsyncClient, app: Any, headers: dict[str, str], holder: str) -> dict[str, Any]:
    materials = [{"name": "id-card", "licenceId": await wallet_licence(app, holder, "id-card")},
                 {"name": "household-register", "licenceId": await wallet_licence(app, holder, "household-register")}]
    created = await client.post("/api/services/bundles", headers=headers, json={
        "bundleCode": "newborn-birth", "form": BIRTH, "materials": materials})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def cases(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await client.get(MINE, headers=headers, params={"group": "case", **params})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_services_my_applications_list_a_bundle_as_one_case(client: httpx.AsyncClient, auth: Any, desk: Any,
                                                                  app: Any, fake_clock: Any) -> None:
    parent = auth.headers("citizen", user_id="case-1")
    case = await birth_case(client, app, parent, "case-1")
    await birth_case(client, app, auth.headers("citizen", user_id="case-2"), "case-2")  # someone else's
    fake_clock.advance(hours=1)
    photo = await upload(client, parent)
    single = await submit(client, parent, "social-security-card",
                          {"applicantName": "王强", "birthDate": "1990-01-01", "phone": "13800000000"},
                          [{"name": "id-card", "uploadId": photo["uploadId"]}])

    items = await cases(client, parent)
    assert [i["kind"] for i in items] == ["application", "bundle"]  # newest first, the bundle once
    assert items[0]["id"] == single["id"] and items[0]["bundleId"] is None
    bundle = items[1]
    assert bundle["caseId"] == case["caseId"] and bundle["bundleCode"] == "newborn-birth"
    assert bundle["name"] == "新生儿出生一件事" and bundle["status"] == "in_review"
    assert bundle["link"] == f"/portal/bundles/{case['caseId']}"
    assert bundle["progress"] == {"completed": 0, "total": 4}
    assert {a["serviceCode"]: a["department"] for a in bundle["applications"]} == BIRTH_DEPTS
    assert [a["id"] for a in bundle["applications"]] == [a["id"] for a in case["applications"]]
    assert all(a["serviceName"] and a["deadline"]["limitDays"] > 0 for a in bundle["applications"])
    # Without grouping the list stays as it was: every application, the bundle's members included.
    flat = (await client.get(MINE, headers=parent)).json()["items"]
    assert len(flat) == 5 and sum(1 for a in flat if a["bundleId"] == case["caseId"]) == 4
    # Paging counts cases.
    assert [i["kind"] for i in await cases(client, parent, limit=1)] == ["application"]
    assert [i["kind"] for i in await cases(client, parent, limit=1, offset=1)] == ["bundle"]
    assert await cases(client, parent, offset=2) == []

    # The overall status follows the members: one approved, one rejected → partially rejected.
    ours = {a["id"] for a in case["applications"]}

    async def our_task(headers: dict[str, str]) -> str:
        return next(t["id"] for t in await inbox(client, headers) if t["applicationId"] in ours)

    health = auth.headers("official", department="health")
    await act(client, health, await our_task(health), "approve")
    [bundle] = [i for i in await cases(client, parent) if i["kind"] == "bundle"]
    assert bundle["status"] == "in_review" and bundle["progress"] == {"completed": 1, "total": 4}
    police = auth.headers("official", department="public-security")
    await act(client, police, await our_task(police), "reject", {"reason": "户籍地址不符"})
    [bundle] = [i for i in await cases(client, parent) if i["kind"] == "bundle"]
    assert bundle["status"] == "partially_rejected" and bundle["progress"] == {"completed": 2, "total": 4}
    # A status filter picks cases by their members, and still shows every member of a picked case.
    approved = await cases(client, parent, status="approved")
    assert [i["kind"] for i in approved] == ["bundle"] and len(approved[0]["applications"]) == 4

    # An official sees the case with the members of their own department only.
    staff = [i for i in await cases(client, health) if i.get("caseId") == case["caseId"]]
    assert [(i["kind"], [a["serviceCode"] for a in i["applications"]]) for i in staff] == [
        ("bundle", ["birth-certificate"])]
    # Bad input and other people.
    bad = await client.get(MINE, headers=parent, params={"group": "flat"})
    assert bad.status_code == 400
    others = await cases(client, auth.headers("citizen", user_id="case-3"))
    assert others == []
    theirs = await cases(client, auth.headers("citizen", user_id="case-2"))
    assert [i["kind"] for i in theirs] == ["bundle"] and theirs[0]["caseId"] != case["caseId"]
