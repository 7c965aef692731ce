"""一网协同 in the demo: the demo citizen and company accounts with real content, life events over time
(re-evaluation, notices, 免申即享 payouts) and a simulated fall walking the escalation chain."""

from __future__ import annotations

from typing import Any

import httpx
from lh_support import BASE
from sqlalchemy import select

from cityos.livelihood import models as m
from cityos.sim import livelihood_demo as demo


async def test_the_demo_accounts_see_services_for_them(app: Any, client: httpx.AsyncClient, auth: Any,
                                                       moving_clock: Any) -> None:
    made = await demo.ensure_accounts(app, district="d-east")
    assert [a.username for a in made] == ["resident", "company"] and all(len(a.password) >= 16 for a in made)
    assert await demo.ensure_accounts(app) == []  # a second start creates nothing and shows no password
    security = app.state.security.service
    resident = await demo._user_id(security, "resident")
    company = await demo._user_id(security, "company")
    assert resident and company
    mine = (await client.get(f"{BASE}/me/services", headers=auth.headers("citizen", user_id=resident))).json()
    assert mine["subject"] == demo.RESIDENT_SUBJECT
    status = {i["policy"]["id"]: i["status"] for i in mine["items"]}
    # 免申即享 granted with a payout record; 服务找人 invitations notified.
    assert status["elderly-allowance-80"] == "granted" and status["one-child-parents-reward"] == "granted"
    assert status["dibao-screening"] == "notified" and status["senior-transit-card"] == "notified"
    paid = {i["policy"]["id"] for i in mine["items"] if i["payout"]}
    assert "elderly-allowance-80" in paid
    notices = (await client.get("/api/services/notifications",
                                headers=auth.headers("citizen", user_id=resident))).json()["items"]
    assert len(notices) >= 2
    firm = (await client.get(f"{BASE}/me/services", headers=auth.headers("enterprise", user_id=company))).json()
    assert firm["subject"] == demo.COMPANY_SUBJECT
    assert {"high-tech-reward", "startup-loan-interest"} <= {i["policy"]["id"] for i in firm["items"]}


async def test_a_simulated_fall_walks_the_escalation_chain(app: Any, client: httpx.AsyncClient,
                                                           moving_clock: Any) -> None:
    await demo.ensure_accounts(app)
    [alert_id] = await demo.simulated_fall(app)
    care = app.state.livelihood_care
    assert (await care.alert("", alert_id)).steps[0]["role"] == "family"
    for role in ("doctor", "worker", "emergency"):
        moving_clock.advance(minutes=1.1)  # the step's one-minute deadline passes unacknowledged
        await care.sweep()
        assert (await care.alert("", alert_id)).steps[-1]["role"] == role
    moving_clock.advance(minutes=1)
    assert len(await demo.simulated_fall(app)) == 1  # a later fall is a new alert


async def test_life_events_reevaluate_notify_and_pay_while_the_demo_runs(app: Any, moving_clock: Any) -> None:
    from cityos.livelihood.proactive.bulk import load_population
    from cityos.sim.population import residents

    population = residents(2000, moving_clock.at.date())
    await load_population(app.state.livelihood, "", population, "R")
    async with app.state.livelihood.engine.connect() as conn:
        before = len((await conn.execute(select(m.decisions.c.subject_id))).all())
    events = demo.LifeEvents(app, population, per_step=5)
    for _ in range(20):
        assert (await events.step())["events"] == 5
        moving_clock.advance(minutes=10)
    assert events.published == 100
    async with app.state.livelihood.engine.connect() as conn:
        after = len((await conn.execute(select(m.decisions.c.subject_id))).all())
        payouts = len((await conn.execute(select(m.payouts.c.id))).all())
    assert after > before and payouts > 0
    assert events.payouts > 0  # disability certifications: 免申即享 subsidies
