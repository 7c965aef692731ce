"""Account administration (`/admin/users`) end to end: real server, headless Chromium, the sys_admin
disabling, enabling and resetting an official through the page, checked through the REST API."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from cockpit_harness import Server, screenshot
from test_web_cockpit_e2e import click, css, sign_in, type_into, wait_for

pytestmark = pytest.mark.slow

OFFICIAL = "acct-official"


def _user(server: Server, username: str) -> dict[str, Any]:
    with server.http(server.admin) as http:
        listed = http.get("/auth/users")
    assert listed.status_code == 200, listed.text
    return next(u for u in listed.json() if u["username"] == username)


def _row(browser: Any, username: str) -> Any:
    rows = css(browser, f".cityos-user-{username}")
    return rows[0] if rows else None


def _wait_notice(browser: Any, text: str) -> Any:
    return wait_for(lambda: [n for n in css(browser, ".q-notification") if text in n.text],
                    what=f"a notification saying {text!r}")


def _retype(browser: Any, selector: str, text: str) -> None:
    """Replace a field's text with keystrokes (Selenium's clear() bypasses Vue's model)."""
    from selenium.webdriver.common.keys import Keys

    field = css(browser, selector)[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def _secret_shown(browser: Any, what: str) -> str:
    """The one-time secret's text once its dialog has opened (Selenium reads no text while it fades in)."""
    return str(wait_for(lambda: [e.text for e in css(browser, ".cityos-once .cityos-secret") if e.text], what=what)[0])


def test_web_admin_disables_enables_and_resets_an_official(server: Server, browser: Any) -> None:
    secret = server.create_user(OFFICIAL, "official", department="water")
    assert secret
    token = server.login(OFFICIAL, secret)
    with server.http(token) as http:
        assert http.get("/auth/me").status_code == 200

    sign_in(browser, server, "admin", server.admin_secret, next_path="/admin/users")
    row = wait_for(lambda: _row(browser, OFFICIAL), what="the official's row")
    assert "部门人员 Official" in row.text and "water" in row.text
    assert "已绑定 Enrolled" in row.text and "正常 Active" in row.text
    # the administrator's own row offers no "disable" (the API refuses it anyway)
    assert not css(browser, ".cityos-user-admin .cityos-disable")

    # disable: a reason is required by the page; the API revokes the official's sessions at once
    click(browser, f".cityos-user-{OFFICIAL} .cityos-disable")
    click(browser, ".cityos-disable-dialog .cityos-confirm")
    _wait_notice(browser, "请填写原因")
    type_into(browser, ".cityos-disable-reason", "离职 Left the department")
    click(browser, ".cityos-disable-dialog .cityos-confirm")
    wait_for(lambda: css(browser, f".cityos-user-{OFFICIAL} .cityos-state-disabled"), what="the disabled badge")
    with server.http(token) as http:
        assert http.get("/auth/me").status_code == 401
    assert _user(server, OFFICIAL)["disabled"] is True
    auditor = server.create_user("acct-auditor", "auditor")  # a sys_admin does not read the audit trail
    with server.http(server.login("acct-auditor", auditor)) as http:
        audit = http.get("/audit", params={"action": "user.disable", "resource": f"user:{OFFICIAL}"})
    assert audit.status_code == 200, audit.text
    assert any("Left the department" in str(r.get("detail")) for r in audit.json()), audit.text

    # enable again: the official can sign in anew
    click(browser, f".cityos-user-{OFFICIAL} .cityos-enable")
    wait_for(lambda: css(browser, f".cityos-user-{OFFICIAL} .cityos-state-active"), what="the active badge")
    assert _user(server, OFFICIAL)["disabled"] is False
    token = server.login(OFFICIAL, secret)
    with server.http(token) as http:
        assert http.get("/auth/me").status_code == 200

    # a tenant-wide role needs a second person: the page says so and nothing changes
    click(browser, f".cityos-user-{OFFICIAL} .cityos-change-role")
    click(browser, ".cityos-role-select")
    wait_for(lambda: [o for o in css(browser, ".q-menu .q-item") if "值班员 Operator" in o.text], what="the roles")[0] \
        .click()
    click(browser, ".cityos-role-dialog .cityos-confirm")
    _wait_notice(browser, "需要第二人审批")
    assert _user(server, OFFICIAL)["role"] == "official"
    click(browser, ".cityos-role-dialog button")  # cancel
    wait_for(lambda: not css(browser, ".cityos-role-dialog"), what="the role dialog to close")

    # reset TOTP: the one-time enrolment code is shown once, the old sessions end
    click(browser, f".cityos-user-{OFFICIAL} .cityos-reset-totp")
    click(browser, ".cityos-reset-dialog .cityos-confirm")
    code = _secret_shown(browser, "the enrolment code")
    assert re.fullmatch(r"[0-9A-F]{6}(-[0-9A-F]{6}){3}", code), code
    assert "仅显示一次" in css(browser, ".cityos-once")[0].text
    time.sleep(0.5)
    screenshot(browser, "admin-users-code")
    with server.http(token) as http:
        assert http.get("/auth/me").status_code == 401
    assert _user(server, OFFICIAL)["totp_enabled"] is False
    click(browser, ".cityos-once-close")
    wait_for(lambda: css(browser, f".cityos-user-{OFFICIAL} .cityos-totp-off"), what="TOTP shown as not enrolled")

    # OAuth clients: a bad id is refused with the API's reason; a good one shows its secret once
    click(browser, ".cityos-add-client")
    type_into(browser, ".cityos-client-id", "bad id!")
    click(browser, ".cityos-client-dialog .cityos-confirm")
    _wait_notice(browser, "(400)")
    _retype(browser, ".cityos-client-id input", "acct-feed")  # the dialog stays open with what was typed
    click(browser, ".cityos-client-dialog .cityos-confirm")
    client_secret = _secret_shown(browser, "the client secret")
    form = {"grant_type": "client_credentials", "client_id": "acct-feed", "client_secret": client_secret}
    with server.http() as http:
        assert http.post("/auth/token", data=form).status_code == 200
    click(browser, ".cityos-once-close")
    click(browser, ".cityos-client-disable")
    wait_for(lambda: any("已停用 Disabled" in r.text for r in css(browser, ".cityos-client-row")),
             what="the client shown disabled")
    with server.http() as http:
        assert http.post("/auth/token", data=form).status_code in (400, 401)
    time.sleep(0.5)
    screenshot(browser, "admin-users")


def test_web_admin_page_refuses_citizens_and_officials(server: Server, browser: Any) -> None:
    server.create_user("acct-citizen", "citizen")
    sign_in(browser, server, "acct-citizen", None, next_path="/portal/services")
    browser.get(f"{server.url}/admin/users")
    wait_for(lambda: css(browser, ".cityos-denied"), what="the citizen's refusal on the start page")
    assert "/admin/users" in css(browser, ".cityos-denied")[0].text
    assert not css(browser, ".cityos-users")

    secret = server.create_user("acct-official-2", "official", department="water")
    sign_in(browser, server, "acct-official-2", secret, next_path="/cockpit")
    browser.get(f"{server.url}/admin/users")
    wait_for(lambda: css(browser, ".cityos-denied"), what="the official's refusal on the start page")
    assert not css(browser, ".cityos-users")
    # and the API refuses the official the list the page would show
    with server.http(server.login("acct-official-2", secret)) as http:
        assert http.get("/auth/users").status_code == 403
