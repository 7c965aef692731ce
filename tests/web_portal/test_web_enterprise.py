"""惠企 pages in headless Chromium against a real server (SQLite): a company's policy calculator (score, why,
what-if), a bank publishing a loan product, the company posting a financing need and asking for contact,
and the bank's desk showing the matched need and the contact."""

from __future__ import annotations

from datetime import date
from typing import Any

from portal_harness import Browser, Portal

LAW = {"basis": "law", "reference": "e2e"}


def _record(subject: str, department: str, fields: dict[str, Any], user_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": {"kind": "company", "id": subject}, "department": department,
                            "dataset": "registration" if department == "market-regulation" else "shared",
                            "purposes": ["enterprise-support"], "consent": LAW,
                            "observedAt": date.today().isoformat(), "fields": fields}
    if user_id:
        body["userId"] = user_id
    return body


def _user_id(portal: Portal, username: str) -> str:
    with portal.http(portal.token(username)) as http:
        return str(http.get("/auth/me").json()["id"])


def test_policy_calculator_and_financing(portal_server: Portal, chromium: Any) -> None:
    portal = portal_server
    portal.add_user("company-wang", "enterprise")
    portal.add_user("bank-ccb", "official", "finance-bank-ccb")
    company = _user_id(portal, "company-wang")
    with portal.http(portal.admin) as http:
        for body in (_record("C-WEB", "market-regulation", {"registered_on": "2023-04-01", "industry": "C",
                                                            "size_class": "small"}, company),
                     _record("C-WEB", "human-resources", {"employees": 35, "social_insurance_paid": True,
                                                          "new_graduate_hires": 0, "layoff_rate": 0.01}),
                     _record("C-WEB", "tax", {"tax_credit": "A", "revenue": 900.0, "rd_ratio": 0.01})):
            made = http.post("/api/livelihood/records", json=body)
            assert made.status_code == 201, made.text
    b = Browser(chromium, portal)

    # The calculator: eligible first with why; what is missing; a what-if makes the graduate subsidy fit.
    b.login("company-wang", "/portal/policy-calculator")
    b.wait_text("惠企政策计算器 Policy calculator")
    count = b.find(".cityos-match-count").text
    assert "符合 2 项政策" in count, count
    refund = b.find(".cityos-match-job-stabilisation-refund").text
    assert "符合 Eligible" in refund and "匹配度 Score 100" in refund
    assert "✓ 足额缴纳社保 social_insurance_paid" in refund
    assert "human-resources" in refund
    graduates = b.find(".cityos-match-small-company-insurance-subsidy").text
    assert "暂不符合 Not yet" in graduates and "Score 67" in graduates
    assert "✗ 新招高校毕业生 new_graduate_hires" in graduates
    b.shot("policy-calculator", keep=True)
    b.type(".cityos-what-if-new_graduate_hires input", "2")
    b.click(".cityos-what-if-try")
    b.wait_text("what-if result")
    b.wait(lambda _d: "符合 Eligible" in b.find(".cityos-match-small-company-insurance-subsidy").text, 30,
           "the what-if eligibility")
    assert "试算输入 what-if" in b.find(".cityos-match-small-company-insurance-subsidy").text
    b.shot("policy-calculator-what-if", keep=True)

    # A bank publishes a product on its desk.
    b.login("bank-ccb", "/livelihood/financing")
    b.wait_text("发布贷款产品 Publish a loan product")
    for css, value in ((".cityos-product-bank input", "建设银行"), (".cityos-product-name input", "善科贷"),
                       (".cityos-product-amin input", "50"), (".cityos-product-amax input", "1000"),
                       (".cityos-product-tmin input", "6"), (".cityos-product-tmax input", "36"),
                       (".cityos-product-rate input", "LPR+0.2%")):
        b.type(css, value)
    b.click(".cityos-product-publish")
    b.wait(lambda _d: "善科贷" in b.find(".cityos-products-table").text, 30, "the published product")

    # The company posts a need, sees the match with its rules and asks for contact.
    b.login("company-wang", "/portal/financing")
    b.wait_text("发布融资需求 Post a financing need")
    b.type(".cityos-need-amount input", "300")
    b.type(".cityos-need-term input", "24")
    b.type(".cityos-need-purpose input", "购置数控机床")
    b.click(".cityos-need-post")
    b.wait_text("匹配产品 1 matching products")
    offer = b.find(".cityos-offer").text
    assert "建设银行 · 善科贷" in offer and "✓ 匹配 Match" in offer and "✓纳税信用 Credit grade" in offer
    b.click(".cityos-contact")
    b.wait_text("已申请对接 Contact requested")
    b.shot("financing-company", keep=True)

    # The bank's desk: the matched need (company id and industry, never its credit grade) and the contact.
    b.login("bank-ccb", "/livelihood/financing")
    b.wait(lambda _d: "C-WEB" in b.find(".cityos-contacts-table").text, 30, "the contact request")
    needs = b.find(".cityos-needs-table").text
    assert "C-WEB" in needs and "购置数控机床" in needs and "建设银行 · 善科贷" in needs
    assert "纳税信用等级" not in b.text() and " A " not in needs
    b.shot("financing-desk", keep=True)
