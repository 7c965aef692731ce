"""好差评: rating completed applications, rectification tasks, satisfaction and NPS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cityos.core import clock
from cityos.security.audit import AuditQuery
from cityos.services.ratings.service import CHINA, add_working_days, deadline_after

RATINGS = "/api/services/ratings"
RECTIFICATIONS = "/api/services/rectifications"


def applicant(auth: Any, user: str = "u1") -> dict[str, str]:
    return auth.headers("citizen", user_id=user)


async def test_applicant_rates_a_completed_application_once(client: Any, auth: Any, complete: Any) -> None:
    application = await complete("u1")
    response = await client.post(RATINGS, json={"applicationId": application["id"], "score": 5, "comment": "很快"},
                                 headers=applicant(auth))
    assert response.status_code == 201
    rating = response.json()
    assert (rating["score"], rating["comment"], rating["rectificationId"]) == (5, "很快", None)
    assert rating["serviceCode"] == "svc-birth" and rating["department"] == "dept-civil"
    again = await client.post(RATINGS, json={"applicationId": application["id"], "score": 4},
                              headers=applicant(auth))
    assert again.status_code == 409
    mine = await client.get(RATINGS, params={"applicationId": application["id"]}, headers=applicant(auth))
    assert mine.status_code == 200 and mine.json()["id"] == rating["id"]


async def test_only_the_applicant_and_only_completed_applications(client: Any, anon_client: Any, auth: Any,
                                                                  complete: Any) -> None:
    application = await complete("u1")
    body = {"applicationId": application["id"], "score": 4}
    assert (await anon_client.post(RATINGS, json=body)).status_code == 401
    assert (await client.post(RATINGS, json=body, headers=applicant(auth, "u2"))).status_code == 403
    assert (await client.post(RATINGS, json=body,
                              headers=auth.headers("official", department="dept-civil"))).status_code == 403
    other_tenant = auth.headers("citizen", user_id="u1", tenant="t2")
    assert (await client.post(RATINGS, json=body, headers=other_tenant)).status_code == 404
    pending = await complete("u1", status="in_review")
    refused = await client.post(RATINGS, json={"applicationId": pending["id"], "score": 4}, headers=applicant(auth))
    assert refused.status_code == 409 and "in_review" in refused.json()["detail"]
    # Every finished outcome is rated (好差评 covers refusals too); the core finishes as approved/rejected.
    for finished in ("rejected", "approved"):
        done = await complete("u1", status=finished)
        assert (await client.post(RATINGS, json={"applicationId": done["id"], "score": 3},
                                  headers=applicant(auth))).status_code == 201
    unknown = await client.post(RATINGS, json={"applicationId": "no-such-app", "score": 4}, headers=applicant(auth))
    assert unknown.status_code == 404
    # A later event completes the pending one: now it may be rated.
    await complete("u1", application_id=pending["id"])
    assert (await client.post(RATINGS, json={"applicationId": pending["id"], "score": 4},
                              headers=applicant(auth))).status_code == 201


async def test_bad_rating_bodies_are_400(client: Any, auth: Any, complete: Any) -> None:
    application = await complete("u1")
    bodies: list[Any] = [
        {"applicationId": application["id"], "score": 0}, {"applicationId": application["id"], "score": 6},
        {"applicationId": application["id"], "score": "5"}, {"applicationId": application["id"], "score": 4.5},
        {"applicationId": application["id"], "score": True}, {"applicationId": application["id"]},
        {"score": 3}, {"applicationId": 42, "score": 3}, {"applicationId": "", "score": 3},
        {"applicationId": application["id"], "score": 3, "comment": 7},
        {"applicationId": application["id"], "score": 3, "comment": "x" * 1001}, [1, 2], "text",
    ]
    for body in bodies:
        response = await client.post(RATINGS, json=body, headers=applicant(auth))
        assert response.status_code == 400, body
        assert response.json()["type"].endswith("BadRequestData")
    malformed = await client.post(RATINGS, content=b'{"applicationId": ', headers={
        **applicant(auth), "Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert (await client.get(RATINGS, params={"applicationId": application["id"]},
                             headers=applicant(auth))).status_code == 404  # nothing was stored


async def test_a_bad_rating_opens_a_rectification_the_department_must_answer(
        app: Any, client: Any, auth: Any, complete: Any) -> None:
    application = await complete("u1", department="dept-civil")
    rating = (await client.post(RATINGS, json={"applicationId": application["id"], "score": 2,
                                               "comment": "排队两小时"}, headers=applicant(auth))).json()
    task_id = rating["rectificationId"]
    assert task_id
    official = auth.headers("official", department="dept-civil", username="officer-wang")
    listed = (await client.get(RECTIFICATIONS, params={"department": "dept-civil", "status": "open"},
                               headers=official)).json()
    assert listed["total"] == 1
    task = listed["items"][0]
    assert (task["id"], task["score"], task["comment"], task["overdue"]) == (task_id, 2, "排队两小时", False)
    deadline = datetime.fromisoformat(task["deadline"].replace("Z", "+00:00"))
    assert deadline > clock.now() + timedelta(days=1)
    # Another department neither sees nor answers it.
    other = auth.headers("official", department="dept-tax")
    assert (await client.get(RECTIFICATIONS, headers=other)).json()["total"] == 0
    assert (await client.get(RECTIFICATIONS, params={"department": "dept-civil"}, headers=other)).status_code == 403
    assert (await client.get(f"{RECTIFICATIONS}/{task_id}", headers=other)).status_code == 403
    assert (await client.post(f"{RECTIFICATIONS}/{task_id}/reply", json={"reply": "x"},
                              headers=other)).status_code == 403
    assert (await client.post(f"{RECTIFICATIONS}/{task_id}/reply", json={"reply": "x"},
                              headers=applicant(auth))).status_code == 403
    for body in ({}, {"reply": ""}, {"reply": "   "}, {"reply": 3}, {"reply": "x" * 4001}):
        assert (await client.post(f"{RECTIFICATIONS}/{task_id}/reply", json=body,
                                  headers=official)).status_code == 400, body
    answered = await client.post(f"{RECTIFICATIONS}/{task_id}/reply",
                                 json={"reply": "已增开两个窗口"}, headers=official)
    assert answered.status_code == 200
    body = answered.json()
    assert (body["status"], body["reply"], body["repliedBy"], body["repliedLate"]) == \
        ("replied", "已增开两个窗口", "officer-wang", False)
    assert (await client.post(f"{RECTIFICATIONS}/{task_id}/reply", json={"reply": "again"},
                              headers=official)).status_code == 409
    assert (await client.get(RECTIFICATIONS, params={"status": "open"}, headers=official)).json()["total"] == 0
    events = await app.state.security.audit.search(AuditQuery(action="rectification.act"))
    assert [e["resource"] for e in events if e["outcome"] == "success"] == [f"rectification:{task_id}"]
    inbox = (await client.get("/api/services/notifications", headers=applicant(auth))).json()
    assert [m["body"] for m in inbox["items"]] == ["已增开两个窗口"]


async def test_good_ratings_open_no_task_and_unknown_tasks_are_404(client: Any, auth: Any, complete: Any) -> None:
    for score in (3, 4, 5):
        application = await complete("u1")
        rating = (await client.post(RATINGS, json={"applicationId": application["id"], "score": score},
                                    headers=applicant(auth))).json()
        assert rating["rectificationId"] is None
    official = auth.headers("official", department="dept-civil")
    assert (await client.get(RECTIFICATIONS, headers=official)).json()["total"] == 0
    assert (await client.get(f"{RECTIFICATIONS}/nope", headers=official)).status_code == 404
    assert (await client.post(f"{RECTIFICATIONS}/nope/reply", json={"reply": "x"}, headers=official)).status_code == 404
    assert (await client.get(RECTIFICATIONS, params={"status": "bogus"}, headers=official)).status_code == 400
    assert (await client.get(RECTIFICATIONS, headers=applicant(auth))).status_code == 403


async def test_overdue_tasks_are_shown_and_late_replies_marked(client: Any, auth: Any, complete: Any,
                                                               frozen_clock: Any) -> None:
    start = datetime(2026, 9, 28, 10, 0, tzinfo=CHINA)  # Monday before the National Day holidays
    frozen_clock(start.astimezone(UTC))
    application = await complete("u1", department="dept-civil")
    task_id = (await client.post(RATINGS, json={"applicationId": application["id"], "score": 1},
                                 headers=applicant(auth))).json()["rectificationId"]
    official = auth.headers("official", department="dept-civil")
    task = (await client.get(f"{RECTIFICATIONS}/{task_id}", headers=official)).json()
    # 5 working days from Mon 28 Sep: 29, 30 Sep, then Oct 1–7 off; Oct 8, 9, then Sat Oct 10 is a make-up workday.
    assert datetime.fromisoformat(task["deadline"].replace("Z", "+00:00")) == \
        datetime(2026, 10, 11, 0, 0, tzinfo=CHINA)
    frozen_clock(datetime(2026, 10, 12, 9, 0, tzinfo=CHINA).astimezone(UTC))
    overdue = (await client.get(RECTIFICATIONS, params={"status": "overdue"}, headers=official)).json()
    assert [(t["id"], t["overdue"]) for t in overdue["items"]] == [(task_id, True)]
    late = (await client.post(f"{RECTIFICATIONS}/{task_id}/reply", json={"reply": "迟到的整改"},
                              headers=official)).json()
    assert (late["status"], late["overdue"], late["repliedLate"]) == ("replied", False, True)


def test_deadline_arithmetic() -> None:
    friday = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)  # 23:00 in China, a Friday
    assert add_working_days(friday, 1) == datetime(2026, 3, 10, 0, 0, tzinfo=CHINA)  # end of Monday
    assert deadline_after(friday, "48h") == friday + timedelta(hours=48)
    assert deadline_after(friday, "2wd") == datetime(2026, 3, 11, 0, 0, tzinfo=CHINA)


async def test_satisfaction_and_nps_per_service_and_department(app: Any, client: Any, auth: Any,
                                                               complete: Any) -> None:
    plan = [("u1", "svc-birth", "dept-civil", 5), ("u2", "svc-birth", "dept-civil", 5),
            ("u3", "svc-birth", "dept-civil", 4), ("u4", "svc-birth", "dept-civil", 2),
            ("u5", "svc-shop", "dept-market", 3), ("u6", "svc-shop", "dept-market", 1)]
    for user, service_code, department, score in plan:
        application = await complete(user, service_code=service_code, department=department)
        response = await client.post(RATINGS, json={"applicationId": application["id"], "score": score},
                                     headers=applicant(auth, user))
        assert response.status_code == 201
    supervisor = auth.headers("auditor")
    by_service = (await client.get(f"{RATINGS}/summary", params={"by": "service"}, headers=supervisor)).json()
    birth = next(i for i in by_service["items"] if i["serviceCode"] == "svc-birth")
    assert (birth["count"], birth["meanScore"], birth["satisfaction"], birth["nps"], birth["badRatings"]) == \
        (4, 4.0, 75.0, 25.0, 1)  # promoters 2 of 4, detractors 1 of 4
    shop = next(i for i in by_service["items"] if i["serviceCode"] == "svc-shop")
    assert (shop["count"], shop["meanScore"], shop["satisfaction"], shop["nps"], shop["badRatings"]) == \
        (2, 2.0, 0.0, -100.0, 1)
    overall = by_service["overall"]
    assert (overall["count"], overall["meanScore"], overall["satisfaction"], overall["badRatings"]) == \
        (6, 3.33, 50.0, 2)
    by_department = (await client.get(f"{RATINGS}/summary", headers=supervisor)).json()
    assert by_department["by"] == "department"
    assert {i["department"]: i["count"] for i in by_department["items"]} == {"dept-civil": 4, "dept-market": 2}
    # A department administrator sees only the department's own figures.
    admin = auth.headers("dept_admin", department="dept-market")
    mine = (await client.get(f"{RATINGS}/summary", headers=admin)).json()
    assert [i["department"] for i in mine["items"]] == ["dept-market"] and mine["overall"]["count"] == 2
    summary = await app.state.ratings.satisfaction("")
    assert {i["department"] for i in summary["byDepartment"]} == {"dept-civil", "dept-market"}
    assert len(summary["byService"]) == 2
    # Refusals and bad input.
    assert (await client.get(f"{RATINGS}/summary", headers=applicant(auth))).status_code == 403
    assert (await client.get(f"{RATINGS}/summary", headers=auth.headers("official",
                                                                        department="dept-civil"))).status_code == 403
    assert (await client.get(f"{RATINGS}/summary", params={"by": "district"}, headers=supervisor)).status_code == 400


async def test_empty_summary_and_malformed_events(app: Any, client: Any, auth: Any) -> None:
    empty = (await client.get(f"{RATINGS}/summary", headers=auth.headers("auditor"))).json()
    assert empty["items"] == [] and empty["overall"]["count"] == 0 and empty["overall"]["nps"] is None
    bus = app.state.bus
    for payload in ({}, {"tenant": "", "application": "x"}, {"tenant": "", "application": {"id": "a"}},
                    {"tenant": 5, "application": {"id": "a", "applicant": "u1", "status": "completed"}}):
        await bus.publish("services.application.changed", payload)
    refused = await client.post(RATINGS, json={"applicationId": "a", "score": 5}, headers=applicant(auth))
    assert refused.status_code == 404
