"""一网协同 pages end to end (real server, headless Chromium, SQLite): a resident sees the services found
for them with why and confirms an invitation in one click; staff see uptake; a community worker
acknowledges a fall."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from cockpit_harness import Server, screenshot
from selenium.webdriver.common.by import By
from test_web_cockpit_e2e import css, sign_in, wait_for

pytestmark = pytest.mark.slow

LAW = {"basis": "law", "reference": "e2e"}


def _record(subject: str, department: str, dataset: str, fields: dict[str, Any], user_id: str | None = None) -> Any:
    body = {"subject": {"kind": "person", "id": subject}, "department": department, "dataset": dataset,
            "purposes": ["elderly", "social-assistance", "care"], "consent": LAW,
            "observedAt": date.today().isoformat(), "fields": fields}
    if user_id:
        body["userId"] = user_id
    return body


def _user_id(server: Server, username: str, secret: str | None) -> str:
    with server.http(server.login(username, secret)) as http:
        return str(http.get("/auth/me").json()["id"])


def test_web_services_for_me_uptake_and_care(server: Server, browser: Any) -> None:
    assert server.create_user("resident-li", "citizen") is None
    resident = _user_id(server, "resident-li", None)
    eighty_one = date.today().replace(year=date.today().year - 81).isoformat()
    with server.http(server.admin) as http:
        for body in (_record("P-WEB", "public-security", "household", {"birth_date": eighty_one, "hukou": "local"},
                             resident),
                     _record("P-WEB", "civil-affairs", "assistance",
                             {"income_per_capita": 700.0, "household_assets": 2000.0})):
            made = http.post("/api/livelihood/records", json=body)
            assert made.status_code == 201, made.text
    sign_in(browser, server, "resident-li", None, next_path="/portal/services-for-me")
    card = wait_for(lambda: css(browser, ".cityos-service-elderly-allowance-80"), what="the old-age allowance")[0]
    assert "免申即享" in card.text and "100 元" in card.text and "✓ age" in card.text
    assert "public-security" in card.text and "公示期" in card.text
    dibao = css(browser, ".cityos-service-dibao-screening")[0]
    assert "服务找人" in dibao.text and "income_per_capita" in dibao.text
    css(browser, ".cityos-confirm-dibao-screening")[0].click()
    prefilled = wait_for(lambda: css(browser, ".cityos-prefilled"), what="the pre-filled application")[0]
    assert "dibao-application" in prefilled.text and "civil-affairs" in prefilled.text
    # "Not for me": the free transit card invitation is declined (a refusal on the uptake page).
    css(browser, ".cityos-decline-senior-transit-card")[0].click()
    wait_for(lambda: "已谢绝" in css(browser, ".cityos-service-senior-transit-card")[0].text, what="the refusal")
    assert not css(browser, ".cityos-decline-senior-transit-card")
    screenshot(browser, "livelihood-services-for-me")

    secret = server.create_user("op-care", "operator")
    worker = _user_id(server, "op-care", secret)
    with server.http(server.admin) as http:
        enrolled = http.put("/api/livelihood/care/people", json={
            "subject": "P-WEB", "devices": ["wb-web"], "workerId": worker,
            "chain": [{"role": "family", "userId": resident, "ackMinutes": 5},
                      {"role": "worker", "userId": worker, "ackMinutes": 10}, {"role": "emergency"}]})
        assert enrolled.status_code == 200, enrolled.text
        fall = http.post("/api/livelihood/care/readings", json={"device": "wb-web", "values": {"fallDetected": True}})
        assert fall.status_code == 200 and len(fall.json()["alerts"]) == 1
    browser.get(f"{server.url}/logout")
    sign_in(browser, server, "op-care", secret, next_path="/livelihood/uptake")
    table = wait_for(lambda: css(browser, ".cityos-uptake-table tbody tr"), what="the uptake table")
    assert len(table) >= 20
    row = next(r.text for r in table if "高龄津贴(80-89周岁)" in r.text)
    assert "免申即享" in row and "100" in row  # one eligible, reach 100 %
    transit = next(r for r in table if "敬老卡" in r.text)
    cells = [c.text for c in transit.find_elements(By.CSS_SELECTOR, "td")]
    headers = [h.text for h in css(browser, ".cityos-uptake-table thead th")]
    assert cells[headers.index("谢绝 Declined")] == "1"
    assert "P-WEB" not in browser.page_source
    screenshot(browser, "livelihood-uptake")
    browser.get(f"{server.url}/livelihood/care")
    wait_for(lambda: css(browser, ".cityos-care-person-P-WEB .cityos-care-alert-open"), what="the open fall")
    css(browser, ".cityos-care-ack")[0].click()
    wait_for(lambda: css(browser, ".cityos-care-alert-acknowledged"), what="the acknowledged fall")
    screenshot(browser, "livelihood-care")
