"""The cockpit end to end: a real `cityos serve`, headless Chromium, an operator with TOTP.

Screenshots go to /tmp/cityos-screens (CITYOS_SCREENSHOTS overrides).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cockpit_harness import PASSWORD, Server, fresh_code, screenshot
from cockpit_seed import Seeded

pytestmark = pytest.mark.slow


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def type_into(driver: Any, selector: str, text: str) -> None:
    """Type into the input of a NiceGUI field (retried while a dialog is still opening)."""

    def attempt() -> bool:
        field = css(driver, f"{selector} input, {selector} textarea")[0]
        field.clear()
        field.send_keys(text)
        return True

    wait_for(attempt, what=f"typing into {selector}")


def click(driver: Any, selector: str) -> None:
    def attempt() -> bool:
        css(driver, selector)[0].click()
        return True

    wait_for(attempt, what=f"clicking {selector}")


def map_stats(driver: Any) -> dict[str, Any]:
    """What the cockpit's MapLibre map holds and shows (`cityosMap.stats`); {} before it exists."""
    return driver.execute_script(
        "const m = window.cityosMap; const ids = m ? Object.keys(m.maps) : [];"
        "return ids.length ? m.stats(ids[ids.length - 1]) : {};") or {}


def sign_in(driver: Any, server: Server, username: str, secret: str | None, next_path: str = "/cockpit") -> None:
    driver.get(f"{server.url}/login?next={next_path}")
    type_into(driver, ".login-username", username)
    type_into(driver, ".login-password", PASSWORD)
    if secret:
        type_into(driver, ".login-totp", fresh_code(secret, server.used_codes))
    click(driver, ".login-submit")
    wait_for(lambda: driver.current_url.split("?")[0].endswith(next_path), what=f"landing on {next_path}")


@pytest.fixture(scope="module")
def operator(server: Server) -> str:
    secret = server.create_user("op-wang", "operator")
    assert secret
    return secret


def test_web_cockpit_api_routes_not_shadowed(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/openapi.json").status_code == 200
        unknown = http.get("/api/no-such-thing")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("application/json")
        assert http.get("/ngsi-ld/v1/nothing-here").status_code == 404
        # Pages answer outside the API prefixes; the cockpit wants a login first.
        page = http.get("/cockpit", follow_redirects=False)
        assert page.status_code in (303, 307) and page.headers["location"].startswith("/login?next=/cockpit")
        assert "CityOS" in http.get("/login").text


def test_web_cockpit_login_refusals(server: Server, browser: Any, operator: str) -> None:
    browser.get(f"{server.url}/login")
    type_into(browser, ".login-username", "op-wang")
    type_into(browser, ".login-password", PASSWORD)
    click(browser, ".login-submit")  # no TOTP code
    error = wait_for(lambda: [e for e in css(browser, ".login-error") if e.is_displayed() and e.text], what="error")
    assert "TOTP" in error[0].text
    type_into(browser, ".login-password", "wrong-password-1")
    type_into(browser, ".login-totp", "123456")
    click(browser, ".login-submit")
    wait_for(lambda: "refused" in css(browser, ".login-error")[0].text, what="refusal")
    screenshot(browser, "01-login-refused")


def test_web_cockpit_map_and_tiles(server: Server, browser: Any, seeded: Seeded, operator: str) -> None:
    # Waste sorting (垃圾分类): two household cards, one of them sorting, one of its two checked deposits correct.
    with server.http(server.admin) as http:
        for card in ("QR-C1", "QR-C2"):
            made = http.post("/api/waste/cards", json={"card": card, "community": "tianlin", "person": f"p-{card}"})
            assert made.status_code == 201, made.text
        for scan, correct in (("c1", True), ("c2", False)):
            done = http.post("/api/waste/deposits", json={"point": "bin-1", "scan": scan, "card": "QR-C1",
                                                          "category": "kitchen", "weightKg": 1.0, "correct": correct})
            assert done.status_code in (200, 201), done.text
    sign_in(browser, server, "op-wang", operator)
    wait_for(lambda: css(browser, ".cityos-kpi-waste .cityos-kpi-value")[0].text == "50.0%",
             what="the waste sorting tile")
    assert css(browser, ".cityos-kpi-waste .text-xs")[0].text.startswith("准确率 accuracy 50.0% · 2 户 cards")
    wait_for(lambda: map_stats(browser).get("counts", {}).get("districts") == len(seeded.districts),
             what="district polygons")
    wait_for(lambda: map_stats(browser)["counts"].get("devices") == len(seeded.devices), what="device points")
    assert {"normal", "inactive"} <= set(map_stats(browser)["deviceStates"])
    wait_for(lambda: css(browser, ".cityos-device-cluster"), what="device clusters")
    online = wait_for(lambda: css(browser, ".cityos-kpi-online .cityos-kpi-value")[0].text.strip("—"),
                      what="devices online tile")
    assert online.endswith("%")
    # The tile counts what the IoT health round says: the same figures as /api/iot/health and the
    # demo console (PlatformClient.stats, online of devices).
    import asyncio

    from cityos.sim.platform import PlatformClient

    async def console_figures() -> Any:
        client = PlatformClient(server.url, token=server.admin)
        try:
            return await client.stats()
        finally:
            await client.close()

    stats = asyncio.run(console_figures())
    with server.http(server.admin) as http:
        health = http.get("/api/iot/health").json()
    assert stats.ok and (stats.online, stats.devices) == (health["byStatus"].get("active", 0), health["devices"])
    assert 0 < stats.online < stats.devices  # some never reported: a 100 % tile would be wrong
    note = css(browser, ".cityos-kpi-online .text-xs")[0].text
    assert note.startswith(f"{stats.online:,}/{stats.devices:,} 在线 online"), note
    assert online == f"{100.0 * stats.online / stats.devices:.1f}%"
    labels = " ".join(e.text for e in css(browser, ".cityos-district-label"))
    assert "秀英区 Xiuying" in labels  # Chinese name first, from the catalogue
    # The clock is the city's (CITYOS_TIMEZONE, Asia/Shanghai here) with the zone shown, not the server's UTC.
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    shown = wait_for(lambda: css(browser, ".cityos-clock")[0].text, what="the clock")
    city_now = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    assert shown.endswith(" CST") and shown[:16] in {
        (city_now - timedelta(minutes=m)).strftime("%Y-%m-%d %H:%M") for m in (0, 1)}, shown
    time.sleep(1.0)
    screenshot(browser, "02-cockpit-map")


RULE = {"id": "e2e-pm25-heavy", "name": "PM2.5 重度污染 PM2.5 above 150", "entityTypes": ["AirQualityObserved"],
        "condition": {"threshold": {"attr": "pm25", "op": ">", "value": 150}}, "severity": "major",
        "category": "environment", "incident": {"category": "environment.air", "level": "general"},
        "department": "environment"}


def api_incidents(server: Server, **params: Any) -> list[dict[str, Any]]:
    with server.http(server.admin) as http:
        response = http.get("/api/ops/incidents", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_web_cockpit_reading_to_incident_dispatch_resolve(server: Server, browser: Any, seeded: Seeded,
                                                           operator: str) -> None:
    with server.http(server.admin) as http:
        made = http.post("/api/ops/rules", json=RULE)
        assert made.status_code == 201, made.text
    sign_in(browser, server, "op-wang", operator) if "/cockpit" not in browser.current_url else None
    browser.get(f"{server.url}/cockpit")
    wait_for(lambda: map_stats(browser).get("counts", {}).get("districts"), what="the map")
    before = {i["id"] for i in api_incidents(server, open="true")}
    assert not before, api_incidents(server, open="true")

    # A smog reading through the IoT HTTP API: rule → alarm → incident, pushed to the open cockpit.
    with server.http() as http:
        response = http.post(f"/api/v1/{seeded.devices[seeded.sensor]}/telemetry",
                             json={"pm25": 260.0, "pm10": 320.0, "no2": 80.0})
        assert response.status_code == 200, response.text
    # The rule's alarm and the AQI check both report the episode; whichever lands first is the
    # incident and the other merges into it, so wait until the one open incident holds both reports.
    incident = wait_for(lambda: [i for i in api_incidents(server, open="true")
                                 if i["category"] == "environment.air" and i["reportCount"] == 2],
                        timeout=30, what="the episode's incident with both reports")[0]
    assert len([i for i in api_incidents(server, open="true") if i["category"] == "environment.air"]) == 1
    assert incident["department"] == "environment"
    wait_for(lambda: css(browser, f".cityos-incident[data-id='{incident['id']}']"), timeout=20,
             what="the incident pin on the map")
    wait_for(lambda: map_stats(browser)["counts"].get("alarms"), what="the alarm ring on the map")
    wait_for(lambda: "alarm" in map_stats(browser)["deviceStates"], what="the sensor drawn in alarm")
    wait_for(lambda: css(browser, ".cityos-alarm-row"), what="the alarm in the list")
    wait_for(lambda: css(browser, ".cityos-incident-row"), what="the incident in the list")
    opened = len(api_incidents(server, open="true"))
    wait_for(lambda: css(browser, ".cityos-kpi-open .cityos-kpi-value")[0].text == str(opened), what="open tile")
    time.sleep(1.5)
    screenshot(browser, "03-cockpit-incident")
    # Chinese first, English beside, from the catalogue; times in the city's zone with the zone shown.
    from cityos.core.messages import local_time

    row = css(browser, ".cityos-incident-row")[0].text
    assert "空气污染 Air pollution" in row and local_time(incident["reportedAt"]) in row, row
    assert local_time(incident["reportedAt"]).endswith(" CST")
    assert "environment.air" not in browser.find_element("tag name", "body").text

    # Acknowledge the alarm from the list.
    click(browser, ".cityos-ack")
    wait_for(lambda: not css(browser, ".cityos-ack"), what="the alarm acknowledged")

    # Open the incident from its pin on the map; walk it to resolved through the UI.
    click(browser, f".cityos-incident[data-id='{incident['id']}']")
    wait_for(lambda: f"/cockpit/incidents/{incident['id']}" in browser.current_url, what="the detail page")
    for action, status, note in (("dispatch", "dispatched", "环保执法一队 team 1"), ("accept", "accepted", ""),
                                 ("arrive", "on_site", ""), ("resolve", "resolved", "已责令停工 site stopped")):
        click(browser, f".cityos-action-{action}")
        if note:
            type_into(browser, ".cityos-action-dialog .cityos-note", note)
        if action == "resolve":
            screenshot(browser, "04-incident-resolve-dialog")
        click(browser, ".cityos-action-dialog .cityos-confirm")
        wait_for(lambda status=status: css(browser, f".cityos-status[data-status={status}]"), what=status)
        # The closed dialog is deleted: the next step must not find (and click) this one's buttons.
        wait_for(lambda: not css(browser, ".cityos-action-dialog"), what=f"the {action} dialog gone")
    steps = wait_for(lambda: [e.text for e in css(browser, ".cityos-timeline .q-timeline__title")
                              if len(css(browser, ".cityos-timeline .q-timeline__title")) >= 5], what="timeline")
    assert "处置完成 Resolved" in steps[-1] or any("Resolved" in s for s in steps), steps
    # The merge of the episode's second report: one entry saying what merged.
    assert [s for s in steps if s.startswith("合并")] == ["合并 1 条告警 Merged 1 alarm"], steps
    subtitles = [e.text for e in css(browser, ".cityos-timeline .q-timeline__subtitle")]
    assert subtitles and all(" CST" in s for s in subtitles), subtitles
    grid = css(browser, ".cityos-title")[0].find_element("xpath", "../..").text
    assert "生态环境局 Ecology & Environment" in grid and "一般 General" in grid, grid
    assert not css(browser, ".cityos-action-dispatch")
    assert css(browser, ".cityos-action-close")
    time.sleep(1.0)
    screenshot(browser, "05-incident-detail-timeline")
    with server.http(server.admin) as http:
        final = http.get(f"/api/ops/incidents/{incident['id']}").json()
    assert final["status"] == "resolved"
    assert [s["action"] for s in final["timeline"]][-4:] == ["dispatch", "accept", "arrive", "resolve"]
    assert any(s.get("actor") and "op-wang" in str(s.get("actor")) for s in final["timeline"])

    # The incident list with filters.
    # (The smog reading's AQI incident merged into the rule's one: nothing else is open now.)
    browser.get(f"{server.url}/cockpit/incidents")
    wait_for(lambda: css(browser, ".cityos-f-status"), what="the incident filters")
    click(browser, ".cityos-f-status")
    wait_for(lambda: next(e for e in css(browser, ".q-menu .q-item") if "Resolved" in e.text).click() or True,
             what="choosing resolved")
    rows = wait_for(lambda: [r.text for r in css(browser, ".cityos-incident-table tbody tr")
                             if "Resolved" in r.text], what="the resolved incident listed")
    assert len(rows) == 1 and rows[0].startswith(str(incident["id"]))
    assert len(css(browser, ".cityos-incident-table tbody tr")) == 1
    screenshot(browser, "06-incident-list")


def test_web_cockpit_rule_editor(server: Server, browser: Any, operator: str) -> None:
    """List, a refused edit with the API's reason shown, a good edit (new version), disable."""
    browser.get(f"{server.url}/cockpit/rules?rule={RULE['id']}")
    if "/login" in browser.current_url:
        sign_in(browser, server, "op-wang", operator, next_path=f"/cockpit/rules?rule={RULE['id']}")
    wait_for(lambda: css(browser, ".cityos-rule-row"), what="the rule list")
    wait_for(lambda: "版本 version 1" in css(browser, ".cityos-rule-editor .text-slate-400")[0].text, what="v1")

    def set_text(text: str) -> None:
        browser.execute_script(
            "const v = document.querySelector('.cityos-rule-text .cm-content').cmView.view;"
            "v.dispatch({changes: {from: 0, to: v.state.doc.length, insert: arguments[0]}});", text)

    set_text("name: broken\nentityTypes: [AirQualityObserved]\ncondition:\n  threshold: {attr: pm25, op: '>>', "
             "value: 150}\nseverity: major\n")
    time.sleep(0.5)
    click(browser, ".cityos-save-rule")
    error = wait_for(lambda: [e.text for e in css(browser, ".cityos-rule-error") if e.is_displayed() and e.text],
                     what="the validation error")[0]
    assert "Rejected" in error and "op" in error
    screenshot(browser, "07-rule-editor-error")
    with server.http(server.admin) as http:
        assert http.get(f"/api/ops/rules/{RULE['id']}").json()["version"] == 1

    import yaml

    good = {k: v for k, v in RULE.items() if k != "id"}
    good["condition"] = {"threshold": {"attr": "pm25", "op": ">", "value": 115}}
    set_text(yaml.safe_dump(good, allow_unicode=True))
    time.sleep(0.5)
    click(browser, ".cityos-save-rule")
    wait_for(lambda: "版本 version 2" in css(browser, ".cityos-rule-editor .text-slate-400")[0].text, what="v2")
    click(browser, ".cityos-toggle-rule")
    wait_for(lambda: "停用 disabled" in css(browser, ".cityos-rule-editor .text-slate-400")[0].text, what="off")
    with server.http(server.admin) as http:
        rule = http.get(f"/api/ops/rules/{RULE['id']}").json()
    assert rule["version"] == 3 and rule["enabled"] is False
    assert rule["condition"]["threshold"]["value"] == 115
    click(browser, ".cityos-versions")
    wait_for(lambda: len([e for e in css(browser, ".cityos-version-row") if e.is_displayed()]) == 3,
             what="three versions")
    time.sleep(0.8)
    screenshot(browser, "08-rule-editor-versions")


def test_web_cockpit_department_scope(server: Server, browser: Any, seeded: Seeded) -> None:
    """An official of another department: no environment incidents, no action buttons, no rule editing."""
    secret = server.create_user("off-li", "official", department="transport")
    assert secret
    browser.delete_all_cookies()
    sign_in(browser, server, "off-li", secret, next_path="/cockpit/incidents")
    wait_for(lambda: "共 0 件" in browser.page_source, what="an empty list for transport")
    with server.http(server.admin) as http:
        env_incident = http.get("/api/ops/incidents", params={"department": "environment"}).json()["items"][0]
    browser.get(f"{server.url}/cockpit/incidents/{env_incident['id']}")
    wait_for(lambda: css(browser, ".cityos-not-found"), what="not yours to see")
    browser.get(f"{server.url}/cockpit/rules?rule={RULE['id']}")
    wait_for(lambda: css(browser, ".cityos-rule-row"), what="rules are readable")
    assert not [e for e in css(browser, ".cityos-save-rule") if e.is_displayed()]
    assert not css(browser, ".cityos-new-rule")
    screenshot(browser, "09-official-scope")


def test_web_cockpit_storm_banner(server: Server, browser: Any, operator: str) -> None:
    """Above CITYOS_INCIDENT_STORM_PER_MINUTE (3 here) new incidents a minute of one category are grouped;
    the cockpit says so in a banner, and every member stays listed in the group."""
    with server.http(server.admin) as http:
        for n in range(5):
            made = http.post("/api/ops/incidents", json={
                "category": "graffiti", "title": f"涂鸦 Graffiti {n}",
                "location": {"type": "Point", "coordinates": [110.22 + 0.04 * n, 19.97 + 0.02 * n]}})
            assert made.status_code == 201, made.text
        listed = http.get("/api/ops/incidents", params={"open": "true", "category": "graffiti"}).json()["items"]
    storms = [i for i in listed if i["kind"] == "storm"]
    assert len(storms) == 1 and storms[0]["reportCount"] == 2 and len(listed) == 4
    browser.delete_all_cookies()
    sign_in(browser, server, "op-wang", operator)
    banner = wait_for(lambda: [e.text for e in css(browser, ".cityos-storm-banner") if e.is_displayed() and e.text],
                      what="the storm banner")[0]
    assert "告警风暴 Alarm storm" in banner and "乱涂乱画 Graffiti" in banner and f"#{storms[0]['id']}" in banner
    time.sleep(1.0)
    screenshot(browser, "10-cockpit-storm-banner")
