"""惠企: a company's policy calculator (score, why, what-if), notices to eligible companies, and financing
matchmaking (products, needs, rule matches, contact requests, audit) with their bad inputs."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from lh_support import BASE, record
from sqlalchemy import select

from cityos.security.models import audit as audit_log

FIN = f"{BASE}/finance"
PRODUCT = {"bank": "城市商业银行", "name": "科创贷", "amountMin": 50, "amountMax": 500, "termMin": 6, "termMax": 36,
           "industries": ["C", "I"], "minCredit": "B", "rate": "LPR+0.3%", "department": "finance-bank-ccb"}


async def company(client: httpx.AsyncClient, subject: str, user: str, fields: dict[str, Any]) -> None:
    registration = {k: fields.pop(k) for k in ("registered_on", "industry", "size_class") if k in fields}
    made = await client.post(f"{BASE}/records", json=record(subject, "market-regulation", "registration",
                                                            registration, kind="company", user_id=user))
    assert made.status_code == 201, made.text
    by_department = {"tax": ("tax_credit", "revenue", "rd_ratio"),
                     "human-resources": ("employees", "layoff_rate", "social_insurance_paid", "new_graduate_hires")}
    for department, names in by_department.items():
        given = {k: fields[k] for k in names if k in fields}
        if given:
            done = await client.post(f"{BASE}/records", json=record(subject, department, "shared", given,
                                                                    kind="company"))
            assert done.status_code == 201, done.text


def _detail(row: Any) -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(row.detail) if isinstance(row.detail, str | bytes) else row.detail
    return found


async def _trail(app: Any, action: str) -> list[Any]:
    async with app.state.engine.connect() as conn:
        return list((await conn.execute(select(audit_log).where(audit_log.c.action == action)
                                        .order_by(audit_log.c.seq))).all())


async def test_the_policy_calculator_scores_explains_and_tries_what_if(app: Any, client: httpx.AsyncClient,
                                                                        auth: Any, moving_clock: Any) -> None:
    await company(client, "C-CALC", "u-calc", {"registered_on": "2024-03-01", "industry": "C", "size_class": "small",
                                               "employees": 40, "tax_credit": "A", "revenue": 800.0,
                                               "rd_ratio": 0.01, "social_insurance_paid": True,
                                               "new_graduate_hires": 0, "layoff_rate": 0.02})
    me = auth.headers("enterprise", user_id="u-calc")
    got = await client.get(f"{BASE}/me/policy-match", headers=me)
    assert got.status_code == 200, got.text
    items = {i["policy"]["id"]: i for i in got.json()["items"]}
    assert items["job-stabilisation-refund"]["eligible"] and items["job-stabilisation-refund"]["score"] == 100
    assert items["small-low-profit-tax"]["eligible"]
    hires = items["small-company-insurance-subsidy"]
    assert not hires["eligible"] and hires["score"] == 67  # 2 of 3 conditions met
    [missing] = hires["missing"]
    assert missing["field"] == "new_graduate_hires" and missing["actual"] == 0
    assert missing["department"] == "human-resources" and missing["observedAt"]
    rd = items["rd-super-deduction"]
    assert not rd["eligible"] and rd["score"] == 0 and rd["why"][0]["actual"] == 0.01
    # Eligible first, then by score.
    order = [(not i["eligible"], -i["score"]) for i in got.json()["items"]]
    assert order == sorted(order)
    # What if: hire one graduate and spend 5% on R&D. Nothing is stored and nobody is notified.
    inbox_before = (await client.get("/api/services/notifications", headers=me)).json()["items"]
    tried = await client.post(f"{BASE}/me/policy-match", headers=me,
                              json={"whatIf": {"new_graduate_hires": 1, "rd_ratio": 0.05}})
    assert tried.status_code == 200, tried.text
    now = {i["policy"]["id"]: i for i in tried.json()["items"]}
    assert now["small-company-insurance-subsidy"]["eligible"] and now["rd-super-deduction"]["eligible"]
    assert next(w for w in now["rd-super-deduction"]["why"] if w["field"] == "rd_ratio")["department"] == "what-if"
    assert (await client.get(f"{BASE}/me/policy-match", headers=me)).json()["eligible"] == got.json()["eligible"]
    assert (await client.get("/api/services/notifications", headers=me)).json()["items"] == inbox_before
    assert [_detail(r)["whatIf"] for r in await _trail(app, "livelihood.policy.match")] == \
        [[], ["new_graduate_hires", "rd_ratio"], []]
    # Bad what-if inputs: unknown fields, wrong types, malformed JSON.
    for bad in ({"whatIf": {"salary": 1}}, {"whatIf": {"employees": "many"}}, {"whatIf": {"size_class": "huge"}},
                {"whatIf": [1]}, [1]):
        assert (await client.post(f"{BASE}/me/policy-match", headers=me, json=bad)).status_code == 400, bad
    assert (await client.post(f"{BASE}/me/policy-match", headers=me, content=b"{oops")).status_code == 400
    # A resident, a stranger, anonymous: no calculator.
    await client.post(f"{BASE}/records", json=record("P-1", "public-security", "household",
                                                     {"birth_date": "1980-01-01"}, user_id="u-p1"))
    assert (await client.get(f"{BASE}/me/policy-match",
                             headers=auth.headers("citizen", user_id="u-p1"))).status_code == 404
    assert (await client.get(f"{BASE}/me/policy-match",
                             headers=auth.headers("enterprise", user_id="u-x"))).status_code == 404
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cityos.test") as anon:
        assert (await anon.get(f"{BASE}/me/policy-match")).status_code == 401


async def test_an_eligible_company_is_notified_and_its_invitation_links_to_the_calculator(
        client: httpx.AsyncClient, auth: Any, moving_clock: Any) -> None:
    await company(client, "C-RD", "u-rd", {"registered_on": "2020-01-01", "industry": "I", "size_class": "medium",
                                           "rd_ratio": 0.06, "tax_credit": "B"})
    inbox = (await client.get("/api/services/notifications",
                              headers=auth.headers("enterprise", user_id="u-rd"))).json()["items"]
    notice = next(n for n in inbox if n["subject"] == "服务找人:研发费用加计扣除提醒")
    assert "/portal/policy-calculator" in str(notice)


async def test_financing_products_needs_matches_and_contacts(app: Any, client: httpx.AsyncClient, auth: Any,
                                                             moving_clock: Any) -> None:
    bank = auth.headers("official", department="finance-bank-ccb", username="ccb-staff")
    office = auth.headers("official", department="finance-office",
                          departments=["finance-office", "finance-bank-ccb", "finance-bank-boc"])
    other_bank = auth.headers("official", department="finance-bank-boc")
    made = await client.post(f"{FIN}/products", json=PRODUCT, headers=bank)
    assert made.status_code == 201, made.text
    product = made.json()
    assert (await client.post(f"{FIN}/products", json=PRODUCT, headers=bank)).status_code == 409  # duplicate
    # A bank publishes only in its own department; companies and residents publish nothing.
    assert (await client.post(f"{FIN}/products", json=PRODUCT, headers=other_bank)).status_code == 403
    assert (await client.post(f"{FIN}/products", json={**PRODUCT, "name": "x"},
                              headers=auth.headers("enterprise", user_id="u-fin"))).status_code == 403
    loose = {**PRODUCT, "name": "普惠贷", "amountMin": 1, "amountMax": 100, "industries": [], "minCredit": "M",
             "department": "finance-bank-boc"}
    assert (await client.post(f"{FIN}/products", json=loose, headers=other_bank)).status_code == 201
    for bad in ({**PRODUCT, "amountMin": -5}, {**PRODUCT, "amountMax": 10}, {**PRODUCT, "termMin": 0},
                {**PRODUCT, "termMax": 3}, {**PRODUCT, "industries": ["Z"]}, {**PRODUCT, "industries": ["C", "C"]},
                {**PRODUCT, "minCredit": "AAA"}, {**PRODUCT, "bank": ""}, {**PRODUCT, "amountMin": "10"},
                {**PRODUCT, "name": "a\x00b"}, [PRODUCT]):
        assert (await client.post(f"{FIN}/products", json=bad, headers=bank)).status_code == 400, bad
    listed = await client.get(f"{FIN}/products")
    assert [p["name"] for p in listed.json()["items"]] == ["普惠贷", "科创贷"]

    await company(client, "C-FIN", "u-fin", {"registered_on": "2021-05-01", "industry": "C", "size_class": "small",
                                             "tax_credit": "A"})
    me = auth.headers("enterprise", user_id="u-fin")
    need = await client.post(f"{FIN}/me/needs", json={"amount": 200, "term": 24, "purpose": "购置生产设备"}, headers=me)
    assert need.status_code == 201, need.text
    need_id = need.json()["id"]
    assert (await client.post(f"{FIN}/me/needs", json={"amount": 200, "term": 24, "purpose": "购置生产设备"},
                              headers=me)).status_code == 409
    for bad in ({"amount": -1, "term": 12, "purpose": "x"}, {"amount": 0, "term": 12, "purpose": "x"},
                {"amount": 10, "term": 0, "purpose": "x"}, {"amount": 10, "term": 1.5, "purpose": "x"},
                {"amount": 10, "term": 12, "purpose": ""}, {"amount": 1e12, "term": 12, "purpose": "x"},
                {"amount": True, "term": 12, "purpose": "x"}, {"amount": 10, "term": 12, "purpose": "x" * 501}):
        assert (await client.post(f"{FIN}/me/needs", json=bad, headers=me)).status_code == 400, bad
    assert (await client.post(f"{FIN}/me/needs", json={"amount": 5, "term": 12, "purpose": "x"},
                              headers=auth.headers("citizen", user_id="u-fin"))).status_code == 403
    assert (await client.post(f"{FIN}/me/needs", json={"amount": 5, "term": 12, "purpose": "x"},
                              headers=auth.headers("enterprise", user_id="u-nobody"))).status_code == 404

    mine = await client.get(f"{FIN}/me/needs", headers=me)
    assert mine.status_code == 200
    [item] = mine.json()["items"]
    offers = {o["product"]["name"]: o for o in item["offers"]}
    assert offers["科创贷"]["matched"] and item["matches"] == 1
    failed = [r["rule"] for r in offers["普惠贷"]["rules"] if not r["held"]]
    assert failed == ["amount"]  # 200 万元 is above its 100
    credit = next(r for r in offers["科创贷"]["rules"] if r["rule"] == "credit")
    assert credit == {"rule": "credit", "held": True, "minimum": "B", "known": True}  # never the grade itself

    cheap = next(p for p in listed.json()["items"] if p["name"] == "普惠贷")
    assert (await client.post(f"{FIN}/me/needs/{need_id}/contact", json={"product": cheap["id"]},
                              headers=me)).status_code == 409  # not a match
    asked = await client.post(f"{FIN}/me/needs/{need_id}/contact", json={"product": product["id"]}, headers=me)
    assert asked.status_code == 201, asked.text
    assert (await client.post(f"{FIN}/me/needs/{need_id}/contact", json={"product": product["id"]},
                              headers=me)).status_code == 409  # duplicate
    assert (await client.post(f"{FIN}/me/needs/{need_id}/contact", json={"product": "nope"},
                              headers=me)).status_code == 404
    assert (await client.post(f"{FIN}/me/needs/nope/contact", json={"product": product["id"]},
                              headers=me)).status_code == 404
    assert (await client.post(f"{FIN}/me/needs/{need_id}/contact", json={"product": 5},
                              headers=me)).status_code == 400
    other = auth.headers("enterprise", user_id="u-other")
    await company(client, "C-OTHER", "u-other", {"registered_on": "2019-01-01", "industry": "F"})
    assert (await client.post(f"{FIN}/me/needs/{need_id}/contact", json={"product": product["id"]},
                              headers=other)).status_code == 404  # not its need

    # The bank sees its product, the matched need and the contact; the other bank not this contact.
    seen = (await client.get(f"{FIN}/desk", headers=bank)).json()
    assert [p["name"] for p in seen["products"]] == ["科创贷"]
    [matched] = seen["needs"]
    assert matched["company"] == "C-FIN" and matched["industry"] == "C" and "tax_credit" not in str(matched)
    assert [c["product"] for c in seen["contacts"]] == [product["id"]]
    assert (await client.get(f"{FIN}/desk", headers=other_bank)).json()["contacts"] == []
    assert len((await client.get(f"{FIN}/desk", headers=office)).json()["products"]) == 2
    assert (await client.get(f"{FIN}/desk", headers=me)).status_code == 403
    # Withdrawn: no longer listed nor contactable; only its bank withdraws it.
    assert (await client.post(f"{FIN}/products/{product['id']}/withdraw", headers=other_bank)).status_code == 403
    assert (await client.post(f"{FIN}/products/nope/withdraw", headers=bank)).status_code == 404
    gone = await client.post(f"{FIN}/products/{product['id']}/withdraw", headers=bank)
    assert gone.status_code == 200 and gone.json()["status"] == "withdrawn"
    assert [p["name"] for p in (await client.get(f"{FIN}/products")).json()["items"]] == ["普惠贷"]
    second = await client.post(f"{FIN}/me/needs", json={"amount": 100, "term": 12, "purpose": "流动资金"}, headers=me)
    assert (await client.post(f"{FIN}/me/needs/{second.json()['id']}/contact", json={"product": product["id"]},
                              headers=me)).status_code == 409  # withdrawn
    # Every match view and contact is in the audit chain.
    views = await _trail(app, "livelihood.finance.match.view")
    assert [v.actor_kind for v in views] and {v.resource for v in views} == {"company:C-FIN", "financing-desk"}
    [contact] = await _trail(app, "livelihood.finance.contact")
    assert _detail(contact)["product"] == product["id"] and _detail(contact)["need"] == need_id
    assert (await app.state.security.audit.verify()).ok


async def test_the_demo_lists_products_and_companies_needs(app: Any, client: httpx.AsyncClient,
                                                           moving_clock: Any) -> None:
    from cityos.livelihood.proactive.bulk import load_population
    from cityos.sim.demo import _seed_financing
    from cityos.sim.population import companies

    firms = await load_population(app.state.livelihood, "", companies(80, moving_clock.at.date()), "C")
    ids = [f"C{i}" for i in range(firms["subjects"])]
    assert await _seed_financing(app, ids) == (5, 60)
    assert await _seed_financing(app, ids) == (0, 0)  # a re-run of the demo adds nothing
    desk = (await client.get(f"{FIN}/desk")).json()
    assert len(desk["products"]) == 5 and len(desk["needs"]) >= 20  # most needs match some product
    assert all(n["products"] for n in desk["needs"])
