"""服务找人 and 免申即享 end to end: a record or a birthday makes someone eligible; notices reach the inbox
(not after an opt-out); payouts are created once per person, policy and period however often the
evaluation runs; objection window, supervisor approval, one-click pre-filled application, uptake."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from lh_support import BASE, born_years_ago, record, register
from sqlalchemy import func, select

from cityos.core.events import Event
from cityos.livelihood import models as m
from cityos.security.models import audit as audit_log


async def _inbox(client: httpx.AsyncClient, auth: Any, user: str) -> list[dict[str, Any]]:
    got = await client.get("/api/services/notifications", headers=auth.headers("citizen", user_id=user))
    assert got.status_code == 200, got.text
    items: list[dict[str, Any]] = got.json()["items"]
    return items


async def _payouts(app: Any, subject: str) -> list[Any]:
    async with app.state.engine.connect() as conn:
        return list((await conn.execute(select(m.payouts).where(m.payouts.c.subject_id == subject))).all())


async def test_eightieth_birthday_pays_without_application_and_tells_the_person(
        app: Any, client: httpx.AsyncClient, auth: Any, moving_clock: Any) -> None:
    made = await register(client, "P-80", {"birth_date": born_years_ago(80, -1), "hukou": "local"}, user_id="u-80")
    assert made["payouts"] == 0  # 79 until tomorrow
    moving_clock.advance(days=1)
    event = await client.post(f"{BASE}/subjects/P-80/life-event")
    assert event.status_code == 200 and "elderly-allowance-80" in event.json()["newlyEligible"]
    [payout] = await _payouts(app, "P-80")
    assert payout.amount == 100 and payout.status == "objection-window" and not payout.needs_approval
    inbox = await _inbox(client, auth, "u-80")
    assert any(n["subject"] == "免申即享:高龄津贴(80-89周岁)" for n in inbox)
    mine = (await client.get(f"{BASE}/me/services", headers=auth.headers("citizen", user_id="u-80"))).json()
    item = next(i for i in mine["items"] if i["policy"]["id"] == "elderly-allowance-80")
    assert item["status"] == "granted" and item["payout"]["amount"] == 100
    age = next(w for w in item["why"] if w.get("field") == "age")
    assert age["held"] and age["actual"] == 80 and age["department"] == "public-security" and age["observedAt"]
    # Paid once the objection window (1 day) has passed.
    assert await app.state.livelihood.settle() == 0
    moving_clock.advance(days=1, minutes=1)
    assert await app.state.livelihood.settle() == 1
    [paid] = await _payouts(app, "P-80")
    waited = paid.paid_at.replace(tzinfo=None) - paid.eligible_at.replace(tzinfo=None)
    assert paid.status == "paid" and waited.days <= 3


async def test_retries_and_concurrent_runs_never_pay_twice(app: Any, client: httpx.AsyncClient,
                                                           moving_clock: Any) -> None:
    await register(client, "P-90", {"birth_date": born_years_ago(91), "hukou": "local"}, user_id="u-90")
    await client.post(f"{BASE}/records", json=record("P-90", "disabled-persons", "certificate",
                                                     {"disability_level": 1}))
    service = app.state.livelihood
    results = await asyncio.gather(*(service.life_event("", "P-90") for _ in range(6)))
    assert all(r["payouts"] == 0 for r in results)  # everything was granted by the records already
    await service.sweep("")
    # A lapsed decision turned back on by several runs at once is granted by exactly one of them.
    async with app.state.engine.begin() as conn:
        await conn.execute(m.decisions.update().where(m.decisions.c.subject_id == "P-90").values(eligible=False))
        await conn.execute(m.payouts.delete().where(m.payouts.c.subject_id == "P-90",
                                                    m.payouts.c.policy_id == "disability-care-subsidy"))
    again = await asyncio.gather(*(service.life_event("", "P-90") for _ in range(6)))
    assert sum(r["payouts"] for r in again) == 1
    payouts = await _payouts(app, "P-90")
    assert sorted(p.policy_id for p in payouts) == ["disability-care-subsidy", "elderly-allowance-90"]
    async with app.state.engine.connect() as conn:
        audited = (await conn.execute(select(func.count()).select_from(m.payouts))).scalar_one()
    assert audited == 2


async def test_opt_out_silences_invitations(client: httpx.AsyncClient, auth: Any, moving_clock: Any) -> None:
    await register(client, "P-66", {"birth_date": born_years_ago(64), "hukou": "local"}, user_id="u-66")
    me = auth.headers("citizen", user_id="u-66")
    assert (await client.put(f"{BASE}/me/opt-out", json={"optOut": "yes"}, headers=me)).status_code == 400
    assert (await client.put(f"{BASE}/me/opt-out", json={"optOut": True}, headers=me)).status_code == 200
    await client.post(f"{BASE}/records", json=record("P-66", "public-security", "household",
                                                     {"birth_date": born_years_ago(66)}))
    assert not any("敬老卡" in n["subject"] for n in await _inbox(client, auth, "u-66"))
    items = (await client.get(f"{BASE}/me/services", headers=me)).json()["items"]
    assert next(i for i in items if i["policy"]["id"] == "senior-transit-card")["status"] == "opted-out"
    uptake = (await client.get(f"{BASE}/uptake")).json()["items"]
    row = next(u for u in uptake if u["policy"] == "senior-transit-card")
    assert row["optedOut"] == 1 and row["reach"] == 0.0
    assert "P-66" not in str(uptake) and "u-66" not in str(uptake)  # aggregates only


async def test_one_click_confirmation_becomes_a_prefilled_application(app: Any, client: httpx.AsyncClient,
                                                                       auth: Any, moving_clock: Any) -> None:
    seen: list[Event] = []

    async def listen(event: Event) -> None:
        seen.append(event)

    unsubscribe = app.state.bus.subscribe("livelihood.application.requested", listen)
    try:
        await register(client, "P-DB", {"birth_date": "1980-01-01", "hukou": "local"}, user_id="u-db")
        await client.post(f"{BASE}/records", json=record("P-DB", "civil-affairs", "assistance",
                                                         {"income_per_capita": 600.0, "household_assets": 1000.0}))
        me = auth.headers("citizen", user_id="u-db")
        assert any(n["subject"].startswith("服务找人:最低生活保障") for n in await _inbox(client, auth, "u-db"))
        done = await client.post(f"{BASE}/me/confirm/dibao-screening", headers=me)
        assert done.status_code == 200, done.text
        application = done.json()["application"]
        assert application["serviceCode"] == "dibao-application"
        assert application["form"] == {"household_assets": 1000.0, "hukou": "local", "income_per_capita": 600.0}
        assert application["prefilledFrom"] == ["civil-affairs", "public-security"]
        again = await client.post(f"{BASE}/me/confirm/dibao-screening", headers=me)
        assert again.json()["repeated"] is True and again.json()["application"]["id"] == application["id"]
        assert len(seen) == 1 and seen[0].payload["applicant"] == "u-db"
        assert (await client.post(f"{BASE}/me/confirm/elderly-allowance-80", headers=me)).status_code == 409
        assert (await client.post(f"{BASE}/me/confirm/veteran-preferential-card", headers=me)).status_code == 404
        stranger = auth.headers("citizen", user_id="u-none")
        assert (await client.post(f"{BASE}/me/confirm/dibao-screening", headers=stranger)).status_code == 404
    finally:
        unsubscribe()


async def test_objection_and_supervisor_approval_above_the_threshold(app: Any, client: httpx.AsyncClient,
                                                                     auth: Any, moving_clock: Any) -> None:
    reg = record("C-1", "market-regulation", "registration",
                 {"registered_on": "2020-01-01", "industry": "C", "size_class": "small"}, kind="company",
                 user_id="u-c1")
    assert (await client.post(f"{BASE}/records", json=reg)).status_code == 201
    made = await client.post(f"{BASE}/records", json=record(
        "C-1", "science-technology", "high-tech", {"high_tech_certified": True}, kind="company"))
    assert made.json()["payouts"] == 0  # tax credit unknown: not granted
    made = await client.post(f"{BASE}/records", json=record("C-1", "tax", "credit", {"tax_credit": "A"},
                                                            kind="company"))
    assert made.json()["payouts"] == 1
    [payout] = await _payouts(app, "C-1")
    assert payout.amount == 200000 and payout.needs_approval
    moving_clock.advance(days=2)
    await app.state.livelihood.settle()
    assert (await _payouts(app, "C-1"))[0].status == "awaiting-approval"
    outsider = auth.headers("dept_admin", department="health")
    assert (await client.post(f"{BASE}/payouts/{payout.id}/approve", headers=outsider)).status_code == 403
    admin = auth.headers("dept_admin", department="science-technology")
    approved = await client.post(f"{BASE}/payouts/{payout.id}/approve", headers=admin)
    assert approved.status_code == 200 and approved.json()["status"] == "paid"
    assert (await client.post(f"{BASE}/payouts/{payout.id}/approve", headers=admin)).status_code == 409
    async with app.state.engine.connect() as conn:
        trail = [(r.action, r.outcome) for r in (await conn.execute(select(audit_log.c.action, audit_log.c.outcome)
                 .where(audit_log.c.resource == f"payout:{payout.id}").order_by(audit_log.c.seq))).all()]
    assert trail == [("livelihood.payout.create", "success"), ("livelihood.payout.approve", "denied"),
                     ("livelihood.payout.approve", "success"), ("livelihood.payout.pay", "success")]
    assert (await app.state.security.audit.verify()).ok
    assert (await client.post(f"{BASE}/payouts/{payout.id}/maybe", headers=admin)).status_code == 400
    assert (await client.post(f"{BASE}/payouts/nope/approve", headers=admin)).status_code == 404
    # An objection inside the window stops a payout; outside it, nothing to object to.
    await register(client, "P-85", {"birth_date": born_years_ago(85), "hukou": "local"}, user_id="u-85")
    [mine] = await _payouts(app, "P-85")
    me = auth.headers("citizen", user_id="u-85")
    assert (await client.post(f"{BASE}/me/payouts/{mine.id}/objection", json={"reason": ""},
                              headers=me)).status_code == 400
    assert (await client.post(f"{BASE}/me/payouts/{mine.id}/objection", json={"reason": "户籍已迁出"},
                              headers=auth.headers("citizen", user_id="u-80"))).status_code == 404
    objected = await client.post(f"{BASE}/me/payouts/{mine.id}/objection", json={"reason": "户籍已迁出"}, headers=me)
    assert objected.status_code == 200
    moving_clock.advance(days=2)
    await app.state.livelihood.settle()
    assert (await _payouts(app, "P-85"))[0].status == "objected"


async def test_a_new_policy_finds_the_people_it_covers(client: httpx.AsyncClient, auth: Any,
                                                       moving_clock: Any) -> None:
    await register(client, "P-75", {"birth_date": born_years_ago(75), "hukou": "local"}, user_id="u-75")
    await register(client, "P-40", {"birth_date": born_years_ago(40), "hukou": "local"}, user_id="u-40")
    doc = {"name": "七十五岁以上老人体检", "nameEn": "Health check 75+", "legalBasis": "《基本公共卫生服务规范》",
           "department": "health", "audience": "person", "purpose": "elderly", "mode": "invite", "period": "year",
           "effectiveFrom": "2026-01-01", "benefit": {"kind": "service", "unit": "免费体检"},
           "conditions": {"field": "age", "op": ">=", "value": 75}}
    made = await client.put(f"{BASE}/policies/health-check-75", json=doc)
    assert made.status_code == 200, made.text
    assert made.json()["sweep"]["notified"] == 1
    assert any("体检" in n["subject"] for n in await _inbox(client, auth, "u-75"))
    assert not any("体检" in n["subject"] for n in await _inbox(client, auth, "u-40"))
    assert (await client.get(f"{BASE}/me/services", headers=auth.headers("citizen"))).status_code == 404


async def test_staff_lists_are_scoped_and_personal_pages_need_a_token(client: httpx.AsyncClient, auth: Any,
                                                                       anon_client: httpx.AsyncClient,
                                                                       moving_clock: Any) -> None:
    await register(client, "P-81", {"birth_date": born_years_ago(81), "hukou": "local"}, user_id="u-81")
    assert (await anon_client.get(f"{BASE}/me/services")).status_code == 401
    assert (await anon_client.get(f"{BASE}/uptake")).status_code == 401
    health = (await client.get(f"{BASE}/uptake", headers=auth.headers("official", department="health"))).json()
    assert {i["department"] for i in health["items"]} == {"health"}
    civil = await client.get(f"{BASE}/payouts", headers=auth.headers("official", department="civil-affairs"))
    assert civil.status_code == 200 and len(civil.json()["items"]) == 1
    assert "subject" not in civil.json()["items"][0]
    other = await client.get(f"{BASE}/payouts?department=civil-affairs",
                             headers=auth.headers("official", department="health"))
    assert other.status_code == 403
    assert (await client.get(f"{BASE}/payouts", headers=auth.headers("citizen"))).status_code == 403
    assert (await client.post(f"{BASE}/subjects/nobody/life-event")).status_code == 404


async def test_indicators_measure_reach_and_payout_days(app: Any, client: httpx.AsyncClient,
                                                        moving_clock: Any) -> None:
    from datetime import timedelta

    from cityos.core.indicators import Period
    from cityos.livelihood.indicators import SOURCES

    # The record is shared the day it is observed: the eligibility event is now.
    made = await client.post(f"{BASE}/records", json=record(
        "P-82", "public-security", "household", {"birth_date": born_years_ago(82), "hukou": "local"},
        user_id="u-82", observed=moving_clock.at.isoformat()))
    assert made.status_code == 201
    moving_clock.advance(days=2)
    assert await app.state.livelihood.settle() == 1
    period = Period(moving_clock.at - timedelta(days=7), moving_clock.at + timedelta(seconds=1))
    async with app.state.engine.connect() as conn:
        reach = await SOURCES["livelihood.proactive_reach"](conn, period)
        days = await SOURCES["livelihood.payout_days"](conn, period)
    assert reach is not None and reach.value == 100.0 and reach.samples >= 2  # allowance and transit card
    assert days is not None and days.value == 2.0 and days.by_department == {"civil-affairs": 2.0}


async def test_bulk_population_load_and_vectorised_first_sweep(app: Any, client: httpx.AsyncClient, auth: Any,
                                                               moving_clock: Any) -> None:
    from cityos.livelihood.policies.engine import Population, evaluate
    from cityos.livelihood.proactive.bulk import load_population, sweep_population
    from cityos.sim.population import residents

    service = app.state.livelihood
    people = residents(1500, moving_clock.at.date(), seed=4)
    loaded = await load_population(service, "", people, "B", ["d1", "d2"])
    expected = evaluate(await service.catalogue(""), Population("person", people.size, moving_clock.at.date(),
                                                                people.columns, people.known))
    assert loaded["subjects"] == 1500 and loaded["decisions"] == sum(int(v.sum()) for v in expected.values())
    assert loaded["payouts"] > 0
    again = await sweep_population(service, "", people, "B", moving_clock.at)
    assert again == {"decisions": 0, "payouts": 0}  # a re-run grants nothing twice
    someone = int(expected["elderly-allowance-80"].nonzero()[0][0])
    profile = (await client.get(f"{BASE}/profiles/B{someone}")).json()
    assert profile["fields"]["hukou"]["value"] == "local" and profile["fields"]["hukou"]["department"] == \
        "public-security"
    async with app.state.engine.connect() as conn:
        row = (await conn.execute(select(m.decisions).where(m.decisions.c.subject_id == f"B{someone}",
                                                            m.decisions.c.policy_id == "elderly-allowance-80"))).one()
    age = next(w for w in row.explanation if w.get("field") == "age")
    assert age["held"] and 80 <= age["actual"] <= 89 and age["department"] == "public-security"
    # A later life event of a bulk-loaded person goes through the ordinary path.
    event = await client.post(f"{BASE}/subjects/B{someone}/life-event")
    assert event.status_code == 200 and event.json()["payouts"] == 0


async def test_a_resident_declines_one_invitation(client: httpx.AsyncClient, auth: Any, moving_clock: Any) -> None:
    await register(client, "P-DEC", {"birth_date": born_years_ago(70), "hukou": "local", "income_per_capita": 800,
                                     "household_assets": 1000}, user_id="u-dec")
    me = auth.headers("citizen", user_id="u-dec")
    declined = await client.post(f"{BASE}/me/decline/senior-transit-card", headers=me)
    assert declined.status_code == 200 and declined.json()["repeated"] is False
    again = await client.post(f"{BASE}/me/decline/senior-transit-card", headers=me)
    assert again.json()["repeated"] is True  # a double click is one refusal
    # Only invitations are declined; unknown or not-current policies and other people's are refused.
    assert (await client.post(f"{BASE}/me/decline/elderly-allowance-80", headers=me)).status_code == 409
    assert (await client.post(f"{BASE}/me/decline/no-such-policy", headers=me)).status_code == 404
    assert (await client.post(f"{BASE}/me/decline/unemployment-benefit", headers=me)).status_code == 404
    stranger = auth.headers("citizen", user_id="u-nobody")
    assert (await client.post(f"{BASE}/me/decline/senior-transit-card", headers=stranger)).status_code == 404
    # A confirmed invitation stays confirmed.
    assert (await client.post(f"{BASE}/me/confirm/dibao-screening", headers=me)).status_code == 200
    assert (await client.post(f"{BASE}/me/decline/dibao-screening", headers=me)).status_code == 409
    # A later record re-evaluates the person: the refusal stands, no new invitation.
    await client.post(f"{BASE}/records", json=record("P-DEC", "public-security", "household", {"household_size": 2}))
    items = {i["policy"]["id"]: i["status"] for i in
             (await client.get(f"{BASE}/me/services", headers=me)).json()["items"]}
    assert items["senior-transit-card"] == "declined" and items["dibao-screening"] == "confirmed"
    assert sum("敬老卡" in n["subject"] for n in await _inbox(client, auth, "u-dec")) == 1
    row = next(u for u in (await client.get(f"{BASE}/uptake")).json()["items"] if u["policy"] == "senior-transit-card")
    assert row["declined"] == 1 and row["notified"] == 1
