"""服务找人 → 一网通办 end to end: a one-click confirmation becomes a pre-filled application in the services
domain through the event bus (no re-entered data, no shared tables); the receipt comes back; a lost
answer is asked again without a second application; a service that does not exist is a clear refusal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from lh_support import BASE, record, register
from sqlalchemy import func, select

from cityos.livelihood import models as m
from cityos.services import models as sm


async def _applications(app: Any) -> int:
    async with app.state.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(sm.applications))).scalar_one())


async def test_confirmation_starts_a_prefilled_application_and_its_receipt_comes_back(
        app: Any, client: httpx.AsyncClient, auth: Any, moving_clock: Any) -> None:
    await register(client, "P-DB", {"birth_date": "1980-01-01", "hukou": "local"}, user_id="u-db")
    await client.post(f"{BASE}/records", json=record("P-DB", "civil-affairs", "assistance",
                                                     {"income_per_capita": 600.0, "household_assets": 1000.0}))
    me = auth.headers("citizen", user_id="u-db")
    done = await client.post(f"{BASE}/me/confirm/dibao-screening", headers=me)
    assert done.status_code == 200, done.text
    application = done.json()["application"]
    assert application["receipt"].startswith("YW") and application["status"] == "in_review"
    # The application in 一网通办: the applicant's own, with the form the government already had.
    got = await client.get(f"/api/services/applications/{application['id']}", headers=me)
    assert got.status_code == 200, got.text
    case = got.json()
    assert case["serviceCode"] == "dibao-application" and case["department"] == "civil-affairs"
    assert case["form"] == {"household_assets": 1000.0, "hukou": "local", "income_per_capita": 600.0}
    assert case["receipt"] == application["receipt"] and case["applicant"] == "u-db"
    # Civil affairs has the review task; the resident has the receipt notice.
    tasks = await client.get("/api/services/tasks", headers=auth.headers("official", department="civil-affairs"))
    assert [t["applicationId"] for t in tasks.json()["items"]] == [application["id"]]
    inbox = (await client.get("/api/services/notifications", headers=me)).json()["items"]
    assert any(n["subject"] == "已受理:最低生活保障申请" for n in inbox)
    # "Services for me" shows the receipt.
    mine = (await client.get(f"{BASE}/me/services", headers=me)).json()["items"]
    item = next(i for i in mine if i["policy"]["id"] == "dibao-screening")
    assert item["status"] == "confirmed" and item["application"]["receipt"] == application["receipt"]
    assert await _applications(app) == 1

    # A lost answer: the receipt is missing; the schedule asks again and the services domain starts nothing new.
    async with app.state.engine.begin() as conn:
        await conn.execute(m.decisions.update().where(m.decisions.c.subject_id == "P-DB",
                                                      m.decisions.c.policy_id == "dibao-screening")
                           .values(application={k: v for k, v in application.items() if k not in ("receipt",
                                                                                                  "status")}))
    assert await app.state.livelihood.republish_pending() == 0  # not yet a minute old
    moving_clock.advance(minutes=2)
    assert await app.state.livelihood.republish_pending() == 1
    assert await _applications(app) == 1
    mine = (await client.get(f"{BASE}/me/services", headers=me)).json()["items"]
    again = next(i for i in mine if i["policy"]["id"] == "dibao-screening")["application"]
    assert again["receipt"] == application["receipt"]
    assert await app.state.livelihood.republish_pending() == 0  # answered: nothing left to ask
    # Pages of one: the unanswered confirmation is found after an answered one confirmed before it.
    await register(client, "P-DB2", {"birth_date": "1985-01-01", "hukou": "local"}, user_id="u-db2")
    await client.post(f"{BASE}/records", json=record("P-DB2", "civil-affairs", "assistance",
                                                     {"income_per_capita": 500.0, "household_assets": 0.0}))
    other = await client.post(f"{BASE}/me/confirm/dibao-screening", headers=auth.headers("citizen", user_id="u-db2"))
    assert other.json()["application"]["receipt"]
    moving_clock.advance(minutes=3)
    async with app.state.engine.begin() as conn:
        await conn.execute(m.decisions.update().where(m.decisions.c.subject_id == "P-DB",
                                                      m.decisions.c.policy_id == "dibao-screening")
                           .values(application={k: v for k, v in again.items() if k != "receipt"},
                                   confirmed_at=moving_clock.at - timedelta(minutes=1, seconds=30)))
    assert await app.state.livelihood.republish_pending(batch=1) == 1
    assert await _applications(app) == 2


async def test_a_policy_naming_an_unknown_service_gets_a_clear_refusal(app: Any, client: httpx.AsyncClient,
                                                                       auth: Any, moving_clock: Any) -> None:
    policy = {"name": "测试补贴", "nameEn": "Test subsidy", "legalBasis": "测试", "department": "civil-affairs",
              "audience": "person", "purpose": "social-assistance", "mode": "invite", "period": "year",
              "effectiveFrom": "2020-01-01", "serviceCode": "no-such-service",
              "benefit": {"kind": "subsidy", "amount": 10, "unit": "CNY"},
              "conditions": {"field": "hukou", "op": "==", "value": "local"}}
    assert (await client.put(f"{BASE}/policies/test-subsidy", json=policy)).status_code == 200
    await register(client, "P-T", {"birth_date": "1970-01-01", "hukou": "local"}, user_id="u-t")
    done = await client.post(f"{BASE}/me/confirm/test-subsidy", headers=auth.headers("citizen", user_id="u-t"))
    assert done.status_code == 200, done.text
    assert "no-such-service" in done.json()["application"]["refused"]
    assert await _applications(app) == 0
    moving_clock.advance(minutes=2)
    assert await app.state.livelihood.republish_pending() == 0  # refused: not asked again
