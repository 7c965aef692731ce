"""Logins: brute force (IP and account) with an injected clock, rate limits, TOTP, tenant tampering, start-up checks."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sec_harness import PASSWORD, Harness, swap_settings

from cityos.security.service import weak_password_reason


async def _login(client: httpx.AsyncClient, username: str, password: str, totp: str | None = None) -> httpx.Response:
    form = {"grant_type": "password", "username": username, "password": password}
    if totp:
        form["totp"] = totp
    return await client.post("/auth/token", data=form)


async def _fail(client: httpx.AsyncClient, sec: Harness, username: str, times: int) -> None:
    """`times` wrong passwords, each after the progressive delay of the previous ones has passed."""
    for _ in range(times):
        assert (await _login(client, username, "wrong")).status_code == 400
        sec.now[0] += timedelta(seconds=61)


async def test_account_lockout_and_unlock(sec: Harness) -> None:
    user = await sec.user("amy")
    await _fail(sec.client, sec, "amy", 5)
    # Locked (for a device that never logged in): even the right password fails.
    assert (await _login(sec.client, "amy", PASSWORD)).status_code == 400
    row = await sec.service.get_user("amy")
    assert row["failed_logins"] == 5 and row["locked_until"] is not None
    # The lock times out (15 min) ...
    sec.now[0] += timedelta(minutes=16)
    assert (await _login(sec.client, "amy", PASSWORD)).status_code == 200
    assert (await sec.service.get_user("amy"))["failed_logins"] == 0
    # ... or, with lock_seconds=0, lasts until an administrator unlocks it.
    swap_settings(sec, account_lock_seconds=0)
    sec.client.cookies.clear()  # a device that never logged in (a known device passes the lock)
    await _fail(sec.client, sec, "amy", 5)
    sec.now[0] += timedelta(days=365)
    assert (await _login(sec.client, "amy", PASSWORD)).status_code == 400
    admin = await sec.user("root-admin", "sys_admin")
    r = await sec.client.post("/auth/users/amy/unlock", headers=await sec.bearer(admin))
    assert r.status_code == 204
    assert (await _login(sec.client, "amy", PASSWORD)).status_code == 200
    assert user.username == "amy"


async def test_ip_blocked_after_50_failures(sec: Harness) -> None:
    await sec.user("bea")
    transport = httpx.ASGITransport(app=sec.app, client=("203.0.113.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as attacker:
        for i in range(49):
            r = await _login(attacker, f"user{i}", "guess")  # spraying: a different account each time
            assert r.status_code == 400
            sec.now[0] += timedelta(seconds=60)  # waits out the source's progressive delay (max 60 s)
        sec.now[0] += timedelta(minutes=10)
        assert (await _login(attacker, "nobody", "guess")).status_code == 400  # the 50th within the hour
        r = await _login(attacker, "bea", PASSWORD)
        assert r.status_code == 429 and r.json()["error"] == "access_denied"
        # Other addresses are not affected.
        assert (await _login(sec.client, "bea", PASSWORD)).status_code == 200
        # The block expires.
        sec.now[0] += timedelta(hours=1, minutes=1)
        assert (await _login(attacker, "bea", PASSWORD)).status_code == 200
    blocked = await sec.state.audit.search(__import__("cityos.security.audit", fromlist=["x"]).AuditQuery(
        action="auth.ip_blocked"), masked=False)
    assert len(blocked) == 1


async def test_failures_outside_the_window_do_not_count(sec: Harness) -> None:
    transport = httpx.ASGITransport(app=sec.app, client=("198.51.100.1", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as slow:
        for i in range(49):
            await _login(slow, f"ghost{i}", "guess")
        sec.now[0] += timedelta(hours=1, seconds=1)
        await _login(slow, "ghost", "guess")
        assert await sec.service.ip_blocked("198.51.100.1") is None


async def test_rate_limit(sec: Harness) -> None:
    swap_settings(sec, auth_rate_per_minute=3)
    await sec.user("cleo")
    codes = [(await _login(sec.client, "cleo", PASSWORD)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    sec.now[0] += timedelta(minutes=1)
    assert (await _login(sec.client, "cleo", PASSWORD)).status_code == 200


async def test_totp_required_for_staff(sec: Harness) -> None:
    official = await sec.service.create_user("olga", PASSWORD, "official", department="d1")  # not enrolled
    r = await _login(sec.client, "olga", PASSWORD)
    assert r.json()["error"] == "mfa_enrollment_required"
    # Staff enrol their first factor with the one-time code an administrator issued.
    code = (await sec.state.accounts.issue_enrolment_code("olga"))["enrolment_code"]
    r = await sec.client.post("/auth/totp/enroll", data={"username": "olga", "password": PASSWORD,
                                                         "enrolment_code": code})
    assert r.status_code == 200 and r.json()["otpauth_uri"].startswith("otpauth://totp/")
    official.totp_secret = r.json()["secret"]
    r = await sec.client.post("/auth/totp/confirm", data={"username": "olga", "password": PASSWORD,
                                                          "totp": sec.code(official)})
    assert r.status_code == 200
    sec.now[0] += timedelta(seconds=31)
    assert (await _login(sec.client, "olga", PASSWORD)).json()["error"] == "mfa_required"
    assert (await _login(sec.client, "olga", PASSWORD, "000000")).status_code == 400
    code = sec.code(official)
    assert (await _login(sec.client, "olga", PASSWORD, code)).status_code == 200
    # The same code cannot be used twice.
    assert (await _login(sec.client, "olga", PASSWORD, code)).status_code == 400
    # Enrolling again is refused.
    sec.now[0] += timedelta(seconds=61)
    r = await sec.client.post("/auth/totp/enroll", data={"username": "olga", "password": PASSWORD})
    assert r.status_code == 409


async def test_tenant_header_tampering(sec: Harness) -> None:
    admin = await sec.user("dept-boss", "dept_admin", tenant="t1", department="d1")
    await sec.service.add_department("d1", "Water", tenant="t1", districts=["east"])
    headers = await sec.bearer(admin)
    body = {"username": "newbie", "password": PASSWORD, "role": "official", "department": "d1"}
    r = await sec.client.post("/auth/users", json=body, headers={**headers, "NGSILD-Tenant": "t2"})
    assert r.status_code == 403 and "tenant" in r.json()["detail"]
    r = await sec.client.get("/auth/users", headers={**headers, "NGSILD-Tenant": "t2"})
    assert r.status_code == 403
    r = await sec.client.post("/auth/users", json=body, headers={**headers, "NGSILD-Tenant": "t1"})
    assert r.status_code == 201
    # Claims cannot be edited either: a token whose signature no longer matches is refused.
    r = await sec.client.post("/auth/users", json={**body, "username": "x2", "department": "d2"}, headers=headers)
    assert r.status_code == 403  # department outside the admin's scope
    denied = await sec.state.audit.search(__import__("cityos.security.audit", fromlist=["x"]).AuditQuery(
        outcome="denied"), masked=False)
    assert len(denied) >= 2


async def test_admin_role_needs_approval(sec: Harness) -> None:
    admin = await sec.user("sa", "sys_admin")
    r = await sec.client.post("/auth/users", json={"username": "sneaky", "password": PASSWORD, "role": "sys_admin"},
                              headers=await sec.bearer(admin))
    assert r.status_code == 403


def test_weak_passwords() -> None:
    for weak in ("admin", "Password1", "changeme", "cityos123", "aaaaaaaaaaaaaaaa", "Admin@123"):
        assert weak_password_reason(weak) is not None
    assert weak_password_reason("Correct-Horse-9-battery") is None


async def test_production_refuses_weak_password(sec: Harness, tmp_path: object) -> None:
    swap_settings(sec, env="production", admin_password="admin123", jwt_key_file="/k", data_keys="x")
    with pytest.raises(RuntimeError, match="weak"):
        await sec.service.startup()
    swap_settings(sec, admin_password="Correct-Horse-9-battery", issuer="https://city.example")
    await sec.service.startup()


async def test_ensure_demo_admin_once(sec: Harness) -> None:
    first = await sec.service.ensure_demo_admin()
    assert first is not None and first[0] == "admin" and weak_password_reason(first[1], "admin") is None
    assert await sec.service.ensure_demo_admin() is None
    assert (await sec.service.get_user("admin"))["role"] == "sys_admin"
    assert (await sec.service.get_user("admin"))["totp_enabled"]  # the first admin can sign in at once
    assert len(first[2]) >= 16  # its TOTP secret, printed once by the demo
