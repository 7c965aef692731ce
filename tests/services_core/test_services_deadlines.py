"""Deadlines across departments: a fired timer tells the department's staff and the supervisors once
(in-app and by e-mail through a real local SMTP server); a 补正 on one parallel branch stops the
statutory clock on every branch, and the other branches' timers fire at the shifted time, not before.

Dates: the clock starts on Monday 2 March 2026 09:00 (Shanghai). The pause test runs over the
Qingming holiday: Sat 4 – Mon 6 April 2026 are days off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from services_core_helpers import act, inbox, submit, upload
from sqlalchemy import select
from test_services_workflows import COMPANY_DEPTS, COMPANY_FORM, company_materials

from cityos.services import models as m
from cityos.services.calendar import WorkCalendar
from cityos.services.notify.senders import SmtpEmailSender, SmtpSettings
from cityos.services.service import ServiceDesk
from smtp_mailbox import Mailbox, running_mailbox

NOTICES = "/api/services/notifications"
CONTACTS = "/api/services/notifications/contacts"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as server:
        yield server


@pytest.fixture
async def notifier(app: Any, smtp: tuple[Mailbox, int]) -> AsyncIterator[Any]:
    """The app's notifier with e-mail to the local SMTP server and its loop paused (tests call run_once)."""
    n = app.state.notifier
    saved = dict(n.senders)
    await n.stop()
    n.senders["email"] = SmtpEmailSender(SmtpSettings(host="127.0.0.1", port=smtp[1], from_addr="duban@city.example"))
    yield n
    n.senders.clear()
    n.senders.update(saved)
    n.start()


async def staff(app: Any, username: str, role: str, department: str | None) -> str:
    user = await app.state.security.service.create_user(username, None, role, department=department,
                                                        allow_admin=role == "dept_admin")
    return str(user.id)


async def notices(client: httpx.AsyncClient, auth: Any, user_id: str) -> list[dict[str, Any]]:
    response = await client.get(NOTICES, headers=auth.headers("official", user_id=user_id))
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def timer_events(desk: Any, app_id: str) -> list[dict[str, Any]]:
    async with desk.db.connect() as conn:
        rows = (await conn.execute(select(m.timer_events).where(m.timer_events.c.application_id == app_id)
                                   .order_by(m.timer_events.c.department))).mappings().all()
    return [dict(r) for r in rows]


async def test_services_contacts_bad_input_and_access(client: httpx.AsyncClient, auth: Any, desk: Any) -> None:
    head = auth.headers("dept_admin", department="medical-insurance")
    ok = await client.put(f"{CONTACTS}/medical-insurance", headers=head,
                          json={"contacts": [{"userId": "duty-1", "role": "staff", "email": "duty@city.example",
                                              "phone": "+8613800000000"}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["contacts"] == [{"userId": "duty-1", "role": "staff", "email": "duty@city.example",
                                      "phone": "+8613800000000"}]
    bad = await client.put(f"{CONTACTS}/medical-insurance", headers=head, json={"contacts": [
        {"userId": "a", "role": "boss", "email": "not-an-address"}, {"userId": "a"}, {"role": "staff"}, "x"]})
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"contacts[0].role", "contacts[0].email",
                                                          "contacts[1].userId", "contacts[2].userId", "contacts[3]"}
    assert (await client.put(f"{CONTACTS}/medical-insurance", headers=head, json={"contacts": "x"})).status_code == 400
    # Another department's roster, the tenant-wide supervisors, and officials are out of reach.
    assert (await client.put(f"{CONTACTS}/tax", headers=head, json={"contacts": []})).status_code == 403
    assert (await client.put(f"{CONTACTS}/*", headers=head, json={"contacts": []})).status_code == 403
    official = auth.headers("official", department="medical-insurance")
    assert (await client.get(f"{CONTACTS}/medical-insurance", headers=official)).status_code == 403
    # The failed writes changed nothing.
    kept = await client.get(f"{CONTACTS}/medical-insurance", headers=head)
    assert [c["userId"] for c in kept.json()["contacts"]] == ["duty-1"]
    # Contact addresses are stored encrypted.
    from cityos.services.notify.models import contacts
    async with desk.db.connect() as conn:
        stored = (await conn.execute(select(contacts.c.email))).scalars().all()
    assert stored and all(v.startswith("enc:v1:") for v in stored)


async def test_services_escalation_notifies_department_and_supervisors_once(
        client: httpx.AsyncClient, auth: Any, desk: Any, app: Any, fake_clock: Any, notifier: Any,
        smtp: tuple[Mailbox, int]) -> None:
    mailbox, _port = smtp
    official = await staff(app, "mi-official", "official", "medical-insurance")
    head = await staff(app, "mi-head", "dept_admin", "medical-insurance")
    elsewhere = await staff(app, "tax-official", "official", "tax")
    roster = await client.put(f"{CONTACTS}/medical-insurance", json={"contacts": [
        {"userId": official, "role": "staff", "email": "mi-duty@city.example"}]})
    assert roster.status_code == 200, roster.text
    assert (await client.put(f"{CONTACTS}/*", json={"contacts": [
        {"userId": "supervision-office", "role": "supervisor", "email": "xiaoneng@city.example"}]})).status_code == 200

    citizen = auth.headers("citizen", user_id="c-late")
    doc = await upload(client, citizen)
    view = await submit(client, citizen, "newborn-medical-insurance",
                        {"childName": "小明", "birthDate": "2026-02-20", "guardianName": "李四"},
                        [{"name": "id-card", "uploadId": doc["uploadId"]}])
    fake_clock.advance(days=3, hours=14)  # Thursday 23:00: the last day, nothing due yet
    assert await desk.sweep() == 0
    assert await notices(client, auth, official) == []
    fake_clock.advance(hours=2)  # Friday 01:00: the 3-working-day limit has passed, the timer fires
    assert await desk.sweep() == 1

    mine = await notices(client, auth, official)
    assert [n["subject"] for n in mine] == ["超时督办:新生儿医保参保登记"]
    assert view["receipt"] in mine[0]["body"] and "2026-03-06 00:00" in mine[0]["body"]
    assert mine[0]["link"] == "/workbench"
    for supervisor in (head, "supervision-office"):
        [notice] = await notices(client, auth, supervisor)
        assert notice["subject"] == "督办提醒·超时督办:新生儿医保参保登记" and notice["link"] == "/supervision"
        assert "medical-insurance" in notice["body"]
    assert await notices(client, auth, elsewhere) == []  # another department hears nothing
    applicant = (await client.get(NOTICES, headers=citizen)).json()["items"]
    assert all("督办" not in n["subject"] for n in applicant)
    # E-mail to the addresses on the roster, through a real SMTP server.
    assert await notifier.run_once() == 2
    assert sorted(r[0] for r in mailbox.recipients) == ["mi-duty@city.example", "xiaoneng@city.example"]
    assert {msg["Subject"] for msg in mailbox.messages} == {"超时督办:新生儿医保参保登记",
                                                            "督办提醒·超时督办:新生儿医保参保登记"}
    assert "请尽快办理" in mailbox.messages[0].get_content()
    [event] = await timer_events(desk, view["id"])
    assert event["kind"] == "escalation" and event["department"] == "medical-insurance"
    assert sorted(event["notified"]) == sorted([official, head, "supervision-office"])

    # Once per event: the sweep ticking again, a restarted desk, and the task's decision tell nobody again.
    fake_clock.advance(days=1)
    assert await desk.sweep() == 0
    fresh = ServiceDesk(app.state.engine, app.state.bus, app.state, write_lock=desk._write_lock,
                        settings=desk.settings)
    assert await fresh.sweep() == 0
    items = await inbox(client, auth.headers("official", department="medical-insurance"))
    await act(client, auth.headers("official", department="medical-insurance"), items[0]["id"], "approve")
    assert len(await notices(client, auth, official)) == 1
    assert len(await notices(client, auth, "supervision-office")) == 1
    assert await notifier.run_once() == 0 and len(mailbox.messages) == 2
    assert len(await timer_events(desk, view["id"])) == 1


async def test_services_timers_fired_inside_a_decision_are_told_once(
        client: httpx.AsyncClient, auth: Any, desk: Any, app: Any, fake_clock: Any, notifier: Any) -> None:
    """The timers of the other branches may fire inside an official's step (not the sweep): told once too."""
    applicant = auth.headers("enterprise", user_id="e-late")
    users = {dept: await staff(app, f"{dept}-staff", "official", dept) for dept in COMPANY_DEPTS}
    view = await submit(client, applicant, "company-establishment", COMPANY_FORM,
                        await company_materials(client, app, applicant, "e-late"))
    fake_clock.advance(days=2)  # Wednesday 09:00: past the end of Tuesday, the 1-working-day limit
    tax = auth.headers("official", department="tax")
    done = await act(client, tax, (await inbox(client, tax))[0]["id"], "approve")
    # The tax task was decided; the three other departments' timers fired in that same step.
    assert sorted(s["department"] for s in done["steps"] if s["outcome"] == "escalated") == sorted(
        d for d in COMPANY_DEPTS if d != "tax")
    events = await timer_events(desk, view["id"])
    assert sorted(e["department"] for e in events) == sorted(d for d in COMPANY_DEPTS if d != "tax")
    assert await desk.sweep() == 0
    for dept, user_id in users.items():
        got = [n["subject"] for n in await notices(client, auth, user_id)]
        assert got == ([] if dept == "tax" else ["超时督办:企业开办"]), (dept, got)
    seal = auth.headers("official", department="public-security")
    await act(client, seal, (await inbox(client, seal))[0]["id"], "approve")
    assert len(await notices(client, auth, users["public-security"])) == 1
    assert len(await timer_events(desk, view["id"])) == 3


def test_services_calendar_shift_over_weekend_and_holiday() -> None:
    cal = WorkCalendar.from_env()
    submitted = datetime(2026, 4, 2, 1, tzinfo=UTC)  # Thursday 2 April, 09:00 Shanghai
    due = cal.due_at(submitted, 1)
    assert due.isoformat() == "2026-04-04T00:00:00+08:00"  # the end of Friday 3 April
    # Two working days paused (Fri 3 and Tue 7 April; the weekend and Qingming Monday do not count).
    assert cal.shift(due, 2) == cal.due_at(submitted, 1, 2)
    assert cal.shift(due, 2).isoformat() == "2026-04-09T00:00:00+08:00"
    assert cal.shift(due, 0) == due
    noon = datetime(2026, 4, 3, 4, tzinfo=UTC)  # Friday 12:00 → the next working day is Tuesday 7 April
    assert cal.shift(noon, 1).isoformat() == "2026-04-07T12:00:00+08:00"


async def test_services_supplement_on_one_branch_pauses_every_branch(
        client: httpx.AsyncClient, auth: Any, desk: Any, app: Any, fake_clock: Any) -> None:
    fake_clock.set(datetime(2026, 4, 2, 1, tzinfo=UTC))  # Thursday 2 April 09:00
    applicant = auth.headers("enterprise", user_id="e-pause")
    view = await submit(client, applicant, "company-establishment", COMPANY_FORM,
                        await company_materials(client, app, applicant, "e-pause"))
    assert view["deadline"]["dueAt"] == "2026-04-04T00:00:00+08:00"
    assert (view["deadline"]["usedDays"], view["deadline"]["leftDays"]) == (0, 1)
    fake_clock.advance(hours=1)
    tax = auth.headers("official", department="tax")
    asked = await act(client, tax, (await inbox(client, tax))[0]["id"], "request-supplement",
                      {"reason": "请补充财务负责人信息"})
    assert asked["status"] == "supplement" and asked["deadline"]["paused"] is True
    assert (asked["deadline"]["usedDays"], asked["deadline"]["leftDays"]) == (0, 1)

    # Through Friday, the weekend and Qingming Monday: the old due time (Sat 00:00) passes, nothing fires.
    for moment in (datetime(2026, 4, 3, 17, tzinfo=UTC), datetime(2026, 4, 6, 8, tzinfo=UTC)):
        fake_clock.set(moment)
        assert await desk.sweep() == 0
        got = (await client.get(f"/api/services/applications/{view['id']}", headers=applicant)).json()
        assert got["escalated"] is False and got["deadline"]["state"] == "green"
        assert (got["deadline"]["usedDays"], got["deadline"]["leftDays"]) == (0, 1)
    # Meanwhile another department decides its branch: still no timer fires, the clock still stands.
    seal = auth.headers("official", department="public-security")
    during = await act(client, seal, (await inbox(client, seal))[0]["id"], "approve")
    assert during["status"] == "supplement" and during["escalated"] is False
    assert await timer_events(desk, view["id"]) == []

    # Bad answers: someone else's application; then the applicant answers (Tue 7 April 10:00).
    other = await client.post(f"/api/services/applications/{view['id']}/supplement",
                              headers=auth.headers("enterprise", user_id="e-other"), json={})
    assert other.status_code == 403
    fake_clock.set(datetime(2026, 4, 7, 2, tzinfo=UTC))
    answered = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=applicant,
                                 json={"form": {"employees": 3}})
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["status"] == "in_review" and body["deadline"]["paused"] is False
    # Paused: Fri 3 and Tue 7 April (2 working days); due moves from the end of Fri 3 to the end of Wed 8.
    assert body["deadline"]["dueAt"] == "2026-04-09T00:00:00+08:00"
    assert (body["deadline"]["usedDays"], body["deadline"]["leftDays"]) == (0, 1)
    twice = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=applicant, json={})
    assert twice.status_code == 409
    async with desk.db.connect() as conn:
        next_timer = (await conn.execute(select(m.applications.c.next_timer_at).where(
            m.applications.c.id == view["id"]))).scalar_one()
    assert next_timer is not None and next_timer.replace(tzinfo=next_timer.tzinfo or UTC) == datetime(
        2026, 4, 8, 16, tzinfo=UTC)

    # Wednesday 8 April: one of one working day used, not yet overdue; the timers wait.
    fake_clock.set(datetime(2026, 4, 8, 15, 59, tzinfo=UTC))  # Wed 23:59
    assert await desk.sweep() == 0
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=applicant)).json()
    assert (got["deadline"]["usedDays"], got["deadline"]["leftDays"], got["deadline"]["state"]) == (1, 0, "yellow")
    assert got["escalated"] is False
    # Thursday 00:01: the shifted deadline passed; every still-open branch escalates at once, not before.
    fake_clock.set(datetime(2026, 4, 8, 16, 1, tzinfo=UTC))
    assert await desk.sweep() == 1
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=applicant)).json()
    assert got["escalated"] is True and got["deadline"]["state"] == "red"
    escalated = sorted(s["department"] for s in got["steps"] if s["outcome"] == "escalated")
    assert escalated == ["human-resources-social-security", "market-regulation", "tax"]
    assert {e["department"] for e in await timer_events(desk, view["id"])} == set(escalated)


async def test_services_pause_and_answer_on_the_same_day_costs_nothing(
        client: httpx.AsyncClient, auth: Any, desk: Any, app: Any, fake_clock: Any) -> None:
    applicant = auth.headers("enterprise", user_id="e-quick")
    view = await submit(client, applicant, "company-establishment", COMPANY_FORM,
                        await company_materials(client, app, applicant, "e-quick"))
    due = view["deadline"]["dueAt"]
    hr = auth.headers("official", department="human-resources-social-security")
    fake_clock.advance(hours=1)
    await act(client, hr, (await inbox(client, hr))[0]["id"], "request-supplement", {"reason": "参保人数"})
    fake_clock.advance(hours=3)
    answered = await client.post(f"/api/services/applications/{view['id']}/supplement", headers=applicant,
                                 json={"form": {"employees": 5}})
    assert answered.status_code == 200, answered.text
    assert answered.json()["deadline"]["dueAt"] == due
    fake_clock.set(datetime.fromisoformat(due).astimezone(UTC).replace(minute=1))
    assert await desk.sweep() == 1
    got = (await client.get(f"/api/services/applications/{view['id']}", headers=applicant)).json()
    assert len([s for s in got["steps"] if s["outcome"] == "escalated"]) == 4
