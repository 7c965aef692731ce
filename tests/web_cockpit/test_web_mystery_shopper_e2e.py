"""The mystery-shopper form (神秘人暗访) end to end: real server, headless Chromium, the visit recorded
through the evaluation API and seen again in the month's indicator."""

from __future__ import annotations

from typing import Any

import pytest
from cockpit_harness import Server, screenshot
from test_web_cockpit_e2e import css, sign_in, type_into, wait_for

pytestmark = pytest.mark.slow

FAILED = ("wait_under_10", "window_open", "after_hours")
INDICATOR = "evaluation.mystery_shopper_score"


def _month_score(server: Server) -> Any:
    with server.http(server.admin) as http:
        computed = http.post("/api/evaluation/compute", json={"period": "month"})
        assert computed.status_code == 200, computed.text
        shown = http.get("/api/evaluation/indicators", params={"period": "month"})
        assert shown.status_code == 200, shown.text
        return {i["id"]: i for i in shown.json()["indicators"]}[INDICATOR]["value"]


def _notes(browser: Any) -> str:
    return " ".join(n.text for n in css(browser, ".q-notification"))


def _press(browser: Any, element: Any) -> None:
    """Clicked in the middle of the window: the sticky header would take a click at its top edge."""
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _verdict(browser: Any, item: str, passed: bool) -> None:
    buttons = css(browser, f".cityos-mystery-item-{item} button")
    assert len(buttons) == 2, f"{item}: pass/fail toggle not found"
    _press(browser, buttons[0 if passed else 1])


def test_web_mystery_shopper_form(server: Server, browser: Any) -> None:
    secret = server.create_user("op-mystery", "operator")
    assert secret
    sign_in(browser, server, "op-mystery", secret, next_path="/decision")
    wait_for(lambda: css(browser, ".cityos-mystery-link"), what="the link on the decision cockpit")[0].click()
    wait_for(lambda: browser.current_url.split("?")[0].endswith("/decision/mystery-shopper"),
             what="the mystery-shopper page")
    rows = wait_for(lambda: css(browser, ".cityos-mystery-item"), what="the items")
    assert len(rows) == 28
    assert all(len(r.text.splitlines()) >= 3 for r in rows)  # number, Chinese, English (and the toggle)
    assert css(browser, ".cityos-mystery-date input")[0].get_attribute("value")  # defaults to now
    assert css(browser, ".cityos-mystery-time input")[0].get_attribute("value")

    _press(browser, css(browser, ".cityos-mystery-date .q-icon")[0])
    wait_for(lambda: css(browser, ".q-menu .q-date"), what="the date picker")
    browser.find_element("tag name", "body").send_keys("\ue00c")  # Escape closes the picker

    # nothing answered yet: refused in the form, nothing sent
    _press(browser, css(browser, ".cityos-mystery-submit")[0])
    wait_for(lambda: "28 items are not answered" in _notes(browser), what="the unanswered warning")

    # every item set but no site: the API's refusal is shown and nothing is stored
    for item in FAILED:
        _verdict(browser, item, passed=False)
    _press(browser, css(browser, ".cityos-mystery-all-pass")[0])
    wait_for(lambda: "28/28 answered · 不合格 3 failed" in css(browser, ".cityos-mystery-progress")[0].text,
             what="every item answered, three failed")
    _press(browser, css(browser, ".cityos-mystery-submit")[0])
    wait_for(lambda: "Refused (400)" in _notes(browser) and "site" in _notes(browser),
             what="the API's refusal of a visit without a site")
    assert not css(browser, ".cityos-mystery-score")
    assert _month_score(server) is None

    type_into(browser, ".cityos-mystery-site", "龙华区政务服务中心")
    type_into(browser, ".cityos-mystery-note", "三号窗口午间无人 Window 3 unattended at noon")
    _press(browser, css(browser, ".cityos-mystery-submit")[0])
    score = wait_for(lambda: css(browser, ".cityos-mystery-score"), what="the score")
    assert score[0].text == "89.3"
    assert "25/28" in css(browser, ".cityos-mystery-passed")[0].text
    failed = [f.text for f in css(browser, ".cityos-mystery-failed")]
    assert len(failed) == 3
    texts = {r.get_attribute("class"): r.text for r in rows}
    for item in FAILED:
        row = next(text for cls, text in texts.items() if f"cityos-mystery-item-{item}" in cls)
        zh = row.splitlines()[1]
        assert any(zh in f for f in failed), f"{item} ({zh}) not among the failed items shown: {failed}"
    screenshot(browser, "mystery-shopper")
    assert _month_score(server) == 89.3


def test_web_mystery_shopper_is_for_assessors(server: Server, browser: Any) -> None:
    secret = server.create_user("auditor-mystery", "auditor")
    sign_in(browser, server, "auditor-mystery", secret, next_path="/decision")
    wait_for(lambda: css(browser, ".cityos-reports"), what="the decision cockpit")
    assert not css(browser, ".cityos-mystery-link")  # the cockpit offers no form it cannot use
    browser.get(f"{server.url}/decision/mystery-shopper")
    wait_for(lambda: css(browser, ".cityos-denied"), what="the refusal on the start page")


def test_visit_time_is_sent_with_the_city_offset() -> None:
    from cityos.web.mystery import visited_at

    assert visited_at("2026-03-02", "09:30") == "2026-03-02T09:30+08:00"
    for day, clock in (("2026-13-02", "09:30"), ("2026-03-02", "25:00"), ("", ""), ("2026-03-02", "09:30+00:00")):
        with pytest.raises(ValueError):
            visited_at(day, clock)
