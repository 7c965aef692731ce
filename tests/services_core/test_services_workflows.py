"""BPMN processes end to end: parallel approval, 补正 pausing the clock, escalation timers, restart."""

from __future__ import annotations

from typing import Any

import httpx
from services_core_helpers import act, inbox, submit, upload, wallet_licence

from cityos.services.service import ServiceDesk

COMPANY_FORM = {"companyName": "海口椰风科技有限公司", "companyType": "llc", "registeredCapital": 100,
                "legalRepresentative": "王五", "address": "海口市龙华区滨海大道1号", "businessScope": "软件开发"}
COMPANY_DEPTS = ["market-regulation", "public-security", "tax", "human-resources-social-security"]


async def company_materials(client: httpx.AsyncClient, app: Any, headers: dict[str, str],
                            holder: str) -> list[dict[str, Any]]:
    articles = await upload(client, headers)
    premises = await upload(client, headers, filename="premises.pdf")
    return [{"name": "id-card", "licenceId": await wallet_licence(app, holder, "id-card")},
            {"name": "articles-of-association", "uploadId": articles["uploadId"]},
            {"name": "premises-proof", "uploadId": premises["uploadId"]}]


async def test_services_company_parallel_approval(client: httpx.AsyncClient, auth: Any, desk: Any, app: Any,
                                                  fake_clock: Any) -> None:
    applicant = auth.headers("enterprise", user_id="e1")
    view = await submit(client, applicant, "company-establishment", COMPANY_FORM,
                        await company_materials(client, app, applicant, "e1"))
    assert view["status"] == "in_review"
    assert sorted(t["department"] for t in (await client.get(
        f"/api/services/applications/{view['id']}", headers=applicant)).json()["openTasks"]) == sorted(COMPANY_DEPTS)
    # 并联审批: each department sees its own task only, and the four run in parallel.
    for dept in COMPANY_DEPTS:
        items = await inbox(client, auth.headers("official", department=dept))
        assert [i["department"] for i in items] == [dept]
    fake_clock.advance(hours=3)
    for dept in COMPANY_DEPTS:
        official = auth.headers("official", department=dept)
        task = (await inbox(client, official))[0]
        done = await act(client, official, task["id"], "approve")
    assert done["status"] == "approved"
    assert {s["department"] for s in done["steps"] if s["outcome"] == "approve"} == set(COMPANY_DEPTS)
    # The business licence is issued into the applicant's wallet and linked to the application.
    assert len(done["licenceIds"]) == 1
    wallet = await app.state.licences.wallet("", "e1")
    assert any(item["id"] == done["licenceIds"][0] for item in wallet)
    assert done["deadline"]["state"] == "green" and done["deadline"]["usedDays"] == 0


async def test_services_reject_in_one_branch_ends_the_case(client: httpx.AsyncClient, auth: Any, desk: Any,
                                                           app: Any) -> None:
    applicant = auth.headers("enterprise", user_id="e2")
    view = await submit(client, applicant, "company-establishment", COMPANY_FORM,
                        await company_materials(client, app, applicant, "e2"))
    tax = auth.headers("official", department="tax")
    task = (await inbox(client, tax))[0]
    done = await act(client, tax, task["id"], "reject", {"reason": "纳税人识别信息不一致"})
    assert done["status"] == "rejected" and done["licenceIds"] == []
    # The other departments' open tasks were cancelled with the case.
    for dept in COMPANY_DEPTS:
        assert await inbox(client, auth.headers("official", department=dept)) == []
    assert len(await inbox(client, auth.headers("official", department="market-regulation"), status="cancelled")) == 1
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=applicant)).json()
    assert got["outcomeReason"] == "纳税人识别信息不一致"


async def test_services_supplement_pauses_the_deadline(client: httpx.AsyncClient, auth: Any, desk: Any,
                                                       fake_clock: Any) -> None:
    citizen = auth.headers("citizen", user_id="c1")
    photo = await upload(client, citizen)
    form = {"applicantName": "李四", "birthDate": "1990-01-01", "phone": "13800000000"}
    view = await submit(client, citizen, "social-security-card", form,
                        [{"name": "id-card", "uploadId": photo["uploadId"]}])
    official = auth.headers("official", department="human-resources-social-security")
    task = (await inbox(client, official))[0]
    fake_clock.advance(days=1)  # Tuesday: 1 of 5 working days used
    asked = await act(client, official, task["id"], "request-supplement", {"reason": "请补充证件照片"})
    assert asked["status"] == "supplement" and asked["deadline"]["paused"] is True
    assert asked["deadline"]["usedDays"] == 1
    # The applicant's task is not an official's: it is answered through /supplement only.
    assert await inbox(client, official) == []
    fake_clock.advance(days=7)  # a week later (5 working days): the clock did not run
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=citizen)).json()
    assert got["deadline"]["usedDays"] == 1 and got["deadline"]["state"] == "green"
    # Bad supplements: a form that breaks the schema, a PDF where only images are accepted.
    bad = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=citizen,
                            json={"form": {"phone": "12"}})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "form.phone"
    wrong = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=citizen,
                              json={"materials": [{"name": "photo", "uploadId": photo["uploadId"]}]})
    assert wrong.status_code == 400 and wrong.json()["errors"][0]["field"] == "materials[0].uploadId"
    other = await client.post(f"/api/services/applications/{view['id']}/supplement",
                              headers=auth.headers("citizen", user_id="c2"), json={})
    assert other.status_code == 403
    from services_core_helpers import PNG
    picture = await upload(client, citizen, PNG, "image/png", "photo.png")
    answered = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=citizen,
                                 json={"materials": [{"name": "photo", "uploadId": picture["uploadId"]}],
                                       "form": {"bank": "icbc"}})
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["status"] == "in_review" and body["deadline"]["paused"] is False
    assert body["form"]["bank"] == "icbc" and {m["name"] for m in body["materials"]} == {"id-card", "photo"}
    # The paused working days were added to the limit: still 1 day used, due date moved on by 5.
    assert body["deadline"]["usedDays"] == 1 and body["deadline"]["leftDays"] == 4
    again = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=citizen, json={})
    assert again.status_code == 409
    task = (await inbox(client, official))[0]
    assert task["deadline"]["usedDays"] == 1
    done = await act(client, official, task["id"], "approve")
    assert done["status"] == "approved" and len(done["licenceIds"]) == 1


async def test_services_restart_resumes_the_process(client: httpx.AsyncClient, auth: Any, desk: Any,
                                                    app: Any) -> None:
    """A new ServiceDesk (another process, or after a restart) on the same database continues exactly."""
    applicant = auth.headers("enterprise", user_id="e3")
    view = await submit(client, applicant, "construction-permit", {
        "projectName": "椰城花园二期", "projectCode": "HK-2026-0001", "builder": "海口建工集团",
        "address": "海口市秀英区长滨路8号", "floorArea": 12000.5, "contractPrice": 3.2e7, "startDate": "2026-04-01"},
        [{"name": "business-licence", "licenceId": await wallet_licence(app, "e3", "business-licence")},
         {"name": "planning-permit", "licenceId": await wallet_licence(app, "e3", "construction-planning-permit")},
         {"name": "construction-drawings", "uploadId": (await upload(client, applicant))["uploadId"]},
         {"name": "construction-contract", "uploadId": (await upload(client, applicant))["uploadId"]}])
    assert view["deadline"]["limitDays"] == 10
    housing = auth.headers("official", department="housing-construction")
    await act(client, housing, (await inbox(client, housing))[0]["id"], "approve")
    # Three parallel reviews are now open; swap the desk for a fresh one on the same database.
    fresh = ServiceDesk(app.state.engine, app.state.bus, app.state, write_lock=desk._write_lock,
                        settings=desk.settings)
    app.state.services = fresh
    try:
        for dept in ("natural-resources", "fire-rescue", "housing-construction"):
            official = auth.headers("official", department=dept)
            items = await inbox(client, official)
            assert [i["step"] for i in items] == [{"natural-resources": "planning_review",
                                                   "fire-rescue": "fire_design_review",
                                                   "housing-construction": "quality_safety_review"}[dept]]
            await act(client, official, items[0]["id"], "approve")
        final = await inbox(client, housing)
        assert [i["step"] for i in final] == ["permit_decision"]
        done = await act(client, housing, final[0]["id"], "approve")
        assert done["status"] == "approved" and len(done["licenceIds"]) == 1
    finally:
        app.state.services = desk


async def test_services_deadline_timer_escalates(client: httpx.AsyncClient, auth: Any, desk: Any,
                                                 fake_clock: Any) -> None:
    citizen = auth.headers("citizen", user_id="c3")
    doc = await upload(client, citizen)
    view = await submit(client, citizen, "newborn-medical-insurance",
                        {"childName": "小明", "birthDate": "2026-02-20", "guardianName": "李四"},
                        [{"name": "id-card", "uploadId": doc["uploadId"]}])
    assert await desk.sweep() == 0  # nothing due yet
    fake_clock.advance(days=2)  # Wednesday: 2 of 3 working days used (67%) → green
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=citizen)).json()
    assert got["deadline"]["state"] == "green" and got["deadline"]["leftDays"] == 1
    fake_clock.advance(days=1)  # Thursday, the last day: 3 of 3 used (≥ 80%) → yellow, not yet overdue
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=citizen)).json()
    assert got["deadline"]["state"] == "yellow" and got["escalated"] is False
    assert await desk.sweep() == 0
    fake_clock.advance(days=1)  # Friday: past the end of Thursday → red, and the BPMN timer fires
    assert await desk.sweep() == 1
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=citizen)).json()
    assert got["deadline"]["state"] == "red" and got["escalated"] is True
    assert [s["department"] for s in got["steps"] if s["outcome"] == "escalated"] == ["medical-insurance"]
    assert await desk.sweep() == 0  # fired once
    # The non-interrupting timer leaves the task open: it can still be decided.
    official = auth.headers("official", department="medical-insurance")
    items = await inbox(client, official)
    assert items[0]["deadline"]["state"] == "red"
    done = await act(client, official, items[0]["id"], "approve")
    assert done["status"] == "approved" and done["deadline"]["state"] == "red"
