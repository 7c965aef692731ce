"""Issue #12, findings 6, 7, 9, 10, 13, 14 and weak passwords (15): login defence, appointments,
second factor, account lifecycle, hashing off the event loop, the second-administrator bootstrap."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sec_harness import PASSWORD, Harness, swap_settings
from starlette.requests import Request

from cityos.security.api import client_ip
from cityos.security.audit import AuditQuery
from cityos.security.models import approvals as approvals_table
from cityos.security.service import NewUser


async def _login(client: httpx.AsyncClient, username: str, password: str, totp: str | None = None,
                 device: str | None = None) -> httpx.Response:
    form = {"grant_type": "password", "username": username, "password": password}
    if totp:
        form["totp"] = totp
    if device:
        form["device_token"] = device
    return await client.post("/auth/token", data=form)


def _stranger(sec: Harness, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=sec.app, client=(ip, 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://cityos.test")


async def _actions(sec: Harness, action: str) -> list[dict[str, Any]]:
    return list(await sec.state.audit.search(AuditQuery(action=action), masked=False))


# ------------------------------------------------------------------------------ finding 6: lockout


async def test_locked_admin_passes_with_known_device(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin")
    first = await _login(sec.client, "root", PASSWORD, sec.code(admin))
    assert first.status_code == 200
    device = first.json()["device_token"]
    assert device.startswith("dv_") and first.cookies.get("cityos_device") == device
    sec.now[0] += timedelta(seconds=31)
    async with _stranger(sec, "203.0.113.9") as attacker:
        for _ in range(5):
            assert (await _login(attacker, "root", "guess")).status_code == 400
            sec.now[0] += timedelta(seconds=61)
        assert (await sec.service.get_user("root"))["locked_until"] is not None
        # The attacker, even with the right password and code, stays locked out ...
        r = await _login(attacker, "root", PASSWORD, sec.code(admin))
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # ... and so does any device that never logged in ...
    async with _stranger(sec, "198.51.100.20") as fresh:
        assert (await _login(fresh, "root", PASSWORD, sec.code(admin))).status_code == 400
    # ... but the administrator's own device passes the lock with password + TOTP.
    sec.now[0] += timedelta(seconds=31)
    async with _stranger(sec, "198.51.100.21") as laptop:
        r = await _login(laptop, "root", PASSWORD, sec.code(admin), device=device)
        assert r.status_code == 200, r.text
        assert "device_token" not in r.json()  # the device is known already
    # The device token is the admin's: it does not open another locked account.
    await sec.user("other")
    async with _stranger(sec, "203.0.113.10") as attacker:
        for _ in range(5):
            await _login(attacker, "other", "guess")
            sec.now[0] += timedelta(seconds=61)
        assert (await _login(attacker, "other", PASSWORD, device=device)).status_code == 400


async def test_failures_age_out_so_a_trickle_never_locks(sec: Harness) -> None:
    await sec.user("trickle")
    async with _stranger(sec, "203.0.113.11") as attacker:
        for _ in range(12):  # one guess every 15 minutes, for three hours
            assert (await _login(attacker, "trickle", "guess")).status_code == 400
            sec.now[0] += timedelta(minutes=15)
    row = await sec.service.get_user("trickle")
    assert row["locked_until"] is None and row["failed_logins"] <= 2
    assert (await _login(sec.client, "trickle", PASSWORD)).status_code == 200


async def test_progressive_delay_per_account_and_source(sec: Harness) -> None:
    await sec.user("slow")
    async with _stranger(sec, "203.0.113.12") as attacker:
        for _ in range(3):
            assert (await _login(attacker, "slow", "guess")).status_code == 400
        r = await _login(attacker, "slow", "guess")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # Unknown names are delayed the same way (no account enumeration).
        for _ in range(3):
            await _login(attacker, "no-such-user", "guess")
        r2 = await _login(attacker, "no-such-user", "guess")
        assert r2.status_code == 429 and r2.json()["detail"] == r.json()["detail"]
        sec.now[0] += timedelta(seconds=int(r.headers["Retry-After"]))
        assert (await _login(attacker, "slow", "guess")).status_code == 400
    # Per source: many names from one address are slowed down too.
    async with _stranger(sec, "203.0.113.13") as sprayer:
        codes = [(await _login(sprayer, f"name{i}", "guess")).status_code for i in range(11)]
        assert codes[:10] == [400] * 10 and codes[10] == 429


class CountingHasher:
    """The service's own argon2 hasher, counting verifications and the threads they run on."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.verifies, self.threads = inner, 0, set()

    def verify(self, hash_: str, password: str) -> bool:
        self.verifies += 1
        self.threads.add(threading.get_ident())
        return bool(self.inner.verify(hash_, password))

    def hash(self, password: str) -> str:
        self.threads.add(threading.get_ident())
        return str(self.inner.hash(password))

    def check_needs_rehash(self, hash_: str) -> bool:
        return bool(self.inner.check_needs_rehash(hash_))


async def test_same_work_and_answer_for_unknown_locked_and_wrong(sec: Harness) -> None:
    await sec.user("locked")
    await sec.user("plain")
    swap_settings(sec, account_lock_seconds=0, login_delay_after=100, ip_delay_after=100)
    async with _stranger(sec, "203.0.113.14") as attacker:
        for _ in range(5):
            await _login(attacker, "locked", "guess")
    counter = CountingHasher(sec.service.hasher)
    sec.service.hasher = counter  # type: ignore[assignment]
    answers = []
    for username, password in (("nobody-here", "guess"), ("locked", PASSWORD), ("locked", "guess"),
                               ("plain", "guess")):
        before = counter.verifies
        r = await _login(sec.client, username, password)
        answers.append((r.status_code, r.json()["error"], r.json()["detail"]))
        assert counter.verifies == before + 1, username  # one argon2 verification on every path
    assert len(set(answers)) == 1, answers
    assert threading.get_ident() not in counter.threads  # and never on the event loop's thread


def _request(peer: str, forwarded: list[str], sec: Harness) -> Request:
    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded]
    return Request({"type": "http", "method": "POST", "path": "/auth/token", "headers": headers,
                    "client": (peer, 1234), "app": sec.app, "query_string": b""})


async def test_x_forwarded_for_only_from_trusted_proxies(sec: Harness) -> None:
    assert client_ip(_request("10.0.0.5", ["1.2.3.4"], sec)) == "10.0.0.5"  # no proxies configured
    swap_settings(sec, trusted_proxies="10.0.0.0/8, 192.0.2.1")
    assert client_ip(_request("10.0.0.5", ["1.2.3.4"], sec)) == "1.2.3.4"
    # The right-most address that is not a trusted proxy: what the client wrote on the left is ignored.
    assert client_ip(_request("10.0.0.5", ["6.6.6.6, 1.2.3.4, 192.0.2.1"], sec)) == "1.2.3.4"
    assert client_ip(_request("10.0.0.5", ["6.6.6.6", "1.2.3.4"], sec)) == "1.2.3.4"
    assert client_ip(_request("198.51.100.7", ["1.2.3.4"], sec)) == "198.51.100.7"  # not a trusted peer
    assert client_ip(_request("10.0.0.5", ["not-an-ip"], sec)) == "10.0.0.5"
    assert client_ip(_request("10.0.0.5", [], sec)) == "10.0.0.5"
    # Behind the proxy, one source's failures do not block another user's login.
    await sec.user("bystander")
    swap_settings(sec, ip_fail_limit=5, ip_delay_after=100, login_delay_after=100)
    async with _stranger(sec, "10.0.0.5") as proxy:
        for i in range(5):
            r = await proxy.post("/auth/token", data={"grant_type": "password", "username": f"x{i}",
                                                      "password": "guess"},
                                 headers={"X-Forwarded-For": "203.0.113.50"})
            assert r.status_code == 400
        r = await proxy.post("/auth/token", data={"grant_type": "password", "username": "bystander",
                                                  "password": PASSWORD},
                             headers={"X-Forwarded-For": "203.0.113.50"})
        assert r.status_code == 429
        r = await proxy.post("/auth/token", data={"grant_type": "password", "username": "bystander",
                                                  "password": PASSWORD},
                             headers={"X-Forwarded-For": "198.51.100.60"})
        assert r.status_code == 200, r.text
    blocked = await _actions(sec, "auth.ip_blocked")
    assert [row["resource"] for row in blocked] == ["ip:203.0.113.50"]


async def test_known_device_passes_a_shared_address_block(sec: Harness) -> None:
    """Behind a proxy nobody declared trusted, everyone shares one address: a stranger's failures
    block it, but a device that logged in before still gets in (and is not delayed)."""
    admin = await sec.user("root", "sys_admin")
    async with _stranger(sec, "10.0.0.5") as shared:
        first = await _login(shared, "root", PASSWORD, sec.code(admin))
        device = first.json()["device_token"]
        shared.cookies.clear()
        sec.now[0] += timedelta(seconds=31)
        for i in range(50):
            assert (await _login(shared, f"guess{i}", "guess")).status_code == 400
            sec.now[0] += timedelta(seconds=60)
        assert await sec.service.ip_blocked("10.0.0.5") is not None
        await sec.user("colleague")
        assert (await _login(shared, "colleague", PASSWORD)).status_code == 429
        r = await _login(shared, "root", PASSWORD, sec.code(admin), device=device)
        assert r.status_code == 200, r.text


async def test_admin_lifts_a_lock(sec: Harness) -> None:
    await sec.user("lockee")
    swap_settings(sec, account_lock_seconds=0)
    async with _stranger(sec, "203.0.113.15") as attacker:
        for _ in range(5):
            await _login(attacker, "lockee", "guess")
            sec.now[0] += timedelta(seconds=61)
    assert (await _login(sec.client, "lockee", PASSWORD)).status_code == 400
    admin = await sec.user("sa", "sys_admin")
    assert (await sec.client.post("/auth/users/lockee/unlock", headers=await sec.bearer(admin))).status_code == 204
    assert (await _login(sec.client, "lockee", PASSWORD)).status_code == 200


# ------------------------------------------------------------------------------ finding 7: appointments


async def test_dept_admin_appoints_only_department_staff_of_its_departments(sec: Harness) -> None:
    await sec.service.add_department("water", "Water")
    await sec.service.add_department("water-east", "Water east", parent="water")
    await sec.service.add_department("roads", "Roads")
    boss = await sec.user("boss", "dept_admin", department="water")
    headers = await sec.bearer(boss)

    async def create(role: str, department: str | None, name: str) -> int:
        body: dict[str, Any] = {"username": name, "password": PASSWORD, "role": role}
        if department:
            body["department"] = department
        return (await sec.client.post("/auth/users", json=body, headers=headers)).status_code

    assert await create("operator", None, "op1") == 403
    assert await create("auditor", None, "aud1") == 403
    assert await create("official", None, "off-nodept") == 403
    assert await create("citizen", None, "cit1") == 403
    assert await create("official", "roads", "off-roads") == 403
    assert await create("sys_admin", None, "sa2") == 403
    assert await create("official", "water", "off-water") == 201
    assert await create("official", "water-east", "off-east") == 201
    names = {u["username"] for u in await sec.service.list_users()}
    assert names == {"boss", "off-water", "off-east"}
    denied = await _actions(sec, "user.appoint")
    assert len(denied) >= 4 and all(row["outcome"] == "denied" for row in denied)
    # Nor can it unlock, disable or re-role the sys_admin, an operator or an official elsewhere.
    await sec.user("root", "sys_admin")
    await sec.user("op", "operator")
    await sec.user("roadie", "official", department="roads")
    for target in ("root", "op", "roadie"):
        assert (await sec.client.post(f"/auth/users/{target}/unlock", headers=headers)).status_code == 403
        assert (await sec.client.post(f"/auth/users/{target}/disable", headers=headers)).status_code == 403
    r = await sec.client.put("/auth/users/off-water/role", json={"role": "operator"}, headers=headers)
    assert r.status_code == 403
    r = await sec.client.put("/auth/users/off-water/role", json={"role": "official", "department": "roads"},
                             headers=headers)
    assert r.status_code == 403
    r = await sec.client.put("/auth/users/off-water/role", json={"role": "official", "department": "water-east"},
                             headers=headers)
    assert r.status_code == 200 and r.json()["department"] == "water-east"
    assert (await sec.service.get_user("off-water"))["department"] == "water-east"


async def test_auditor_needs_admin_plus_second_person(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin")
    admin_headers = await sec.bearer(admin)
    r = await sec.client.post("/auth/users", json={"username": "aud", "password": PASSWORD, "role": "auditor"},
                              headers=admin_headers)
    assert r.status_code == 403 and "two-person" in r.json()["detail"]
    r = await sec.client.post("/auth/approvals", headers=admin_headers, json={
        "kind": "create_user", "params": {"username": "aud", "role": "auditor"}, "reason": "annual audit"})
    assert r.status_code == 201, r.text
    approval = r.json()["id"]
    # The requester cannot approve; an official cannot either; a dept_admin of the tenant can.
    assert (await sec.client.post(f"/auth/approvals/{approval}/approve", headers=admin_headers)).status_code == 403
    official = await sec.user("off", "official", department="d1")
    r = await sec.client.post(f"/auth/approvals/{approval}/approve", headers=await sec.bearer(official))
    assert r.status_code == 403
    second = await sec.user("second", "dept_admin", department="d1")
    r = await sec.client.post(f"/auth/approvals/{approval}/approve", headers=await sec.bearer(second))
    assert r.status_code == 200 and r.json()["status"] == "approved"
    r = await sec.client.post(f"/auth/approvals/{approval}/execute", headers=admin_headers)
    assert r.status_code == 200, r.text
    code = r.json()["result"]["enrolment_code"]
    # The one-time code was shown once: it is not stored with the approval.
    stored = await sec.client.get(f"/auth/approvals/{approval}", headers=admin_headers)
    assert "enrolment_code" not in stored.text and code not in stored.text
    async with sec.engine.connect() as conn:
        rows = (await conn.execute(approvals_table.select())).mappings().all()
    assert all(code not in str(dict(row)) for row in rows)
    assert (await sec.service.get_user("aud"))["role"] == "auditor"
    # The auditor sets a password and enrols TOTP with the code, then logs in with both factors.
    r = await sec.client.post("/auth/totp/enroll", data={"username": "aud", "password": PASSWORD,
                                                         "enrolment_code": code})
    assert r.status_code == 200, r.text
    auditor = NewUser(r.json()["secret"], "aud", r.json()["secret"])
    r = await sec.client.post("/auth/totp/confirm", data={"username": "aud", "password": PASSWORD,
                                                          "totp": sec.code(auditor)})
    assert r.status_code == 200, r.text
    sec.now[0] += timedelta(seconds=31)
    r = await _login(sec.client, "aud", PASSWORD, sec.code(auditor))
    assert r.status_code == 200, r.text
    # The code was spent.
    r = await sec.client.post("/auth/totp/enroll", data={"username": "aud", "password": PASSWORD,
                                                         "enrolment_code": code})
    assert r.status_code == 409


async def test_tenant_wide_role_change_needs_approval(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin")
    await sec.user("cit", "citizen")
    headers = await sec.bearer(admin)
    for role in ("operator", "auditor", "dept_admin", "sys_admin"):
        r = await sec.client.put("/auth/users/cit/role", json={"role": role}, headers=headers)
        assert r.status_code == 403, role
    r = await sec.client.put("/auth/users/cit/role", json={"role": "official"}, headers=headers)
    assert r.status_code == 403  # an official without a department is tenant-wide
    r = await sec.client.put("/auth/users/cit/role", json={"role": "nope"}, headers=headers)
    assert r.status_code == 400
    r = await sec.client.post("/auth/approvals", headers=headers, json={
        "kind": "assign_role", "params": {"username": "cit", "role": "operator"}, "reason": "night shift"})
    assert r.status_code == 201
    approval = r.json()["id"]
    # The person appointed cannot be the second person.
    r = await sec.client.post("/auth/approvals", headers=headers, json={
        "kind": "assign_role", "params": {"username": "cit", "role": "sys_admin"}, "reason": "x"})
    assert r.status_code == 400
    second = await sec.user("second", "dept_admin", department="d1")
    assert (await sec.client.post(f"/auth/approvals/{approval}/approve",
                                  headers=await sec.bearer(second))).status_code == 200
    assert (await sec.client.post(f"/auth/approvals/{approval}/execute", headers=headers)).status_code == 200
    assert (await sec.service.get_user("cit"))["role"] == "operator"


async def test_appointment_bad_input_and_other_tenants(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin", tenant="t1")
    headers = await sec.bearer(admin)
    for params in ({"username": "x", "role": "citizen"}, {"username": "x", "role": "official", "department": "d1"},
                   {"username": "x", "role": "emperor"}, {"role": "auditor"}, {"username": "", "role": "auditor"},
                   {"username": "x", "role": "auditor", "department": 7}):
        r = await sec.client.post("/auth/approvals", headers=headers,
                                  json={"kind": "create_user", "params": params, "reason": "x"})
        assert r.status_code == 400 and r.json()["status"] == 400, params
    # A dept_admin of another tenant neither sees nor touches this tenant's staff.
    await sec.user("t1-off", "official", tenant="t1", department="d1")
    other = await sec.user("t2-boss", "dept_admin", tenant="t2", department="d1")
    other_headers = await sec.bearer(other)
    for path in ("disable", "enable", "unlock", "enrolment-code", "totp/reset"):
        r = await sec.client.post(f"/auth/users/t1-off/{path}", headers=other_headers)
        assert r.status_code == 404, path
    r = await sec.client.post("/auth/users/t1-off/disable", content=b"{not json",
                              headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert (await sec.service.get_user("t1-off"))["disabled_at"] is None


# ------------------------------------------------------------------------------ finding 9: second factor


async def test_auditor_needs_totp(sec: Harness) -> None:
    await sec.service.create_user("aud", PASSWORD, "auditor", allow_admin=True)
    r = await _login(sec.client, "aud", PASSWORD)
    assert r.status_code == 400 and r.json()["error"] == "mfa_enrollment_required"
    enrolled = await sec.user("aud2", "auditor")
    assert (await _login(sec.client, "aud2", PASSWORD)).json()["error"] == "mfa_required"
    assert (await _login(sec.client, "aud2", PASSWORD, sec.code(enrolled))).status_code == 200


async def test_one_totp_code_one_login_under_concurrency(sec: Harness) -> None:
    official = await sec.user("olga", "official", department="d1")
    code = sec.code(official)
    results = await asyncio.gather(*[_login(sec.client, "olga", PASSWORD, code) for _ in range(6)])
    codes = sorted(r.status_code for r in results)
    # One login; the other five are refused: as a replayed code (400) or, once the failures pile up,
    # by the login limiter (429), whichever the interleaving of the six requests reaches first.
    assert codes[0] == 200 and codes[1] != 200 and set(codes[1:]) <= {400, 429}, [r.text for r in results]
    assert codes.count(400) >= 1
    refused = await _actions(sec, "auth.login")
    assert sum(1 for row in refused if row["detail"].get("reason") == "totp code already used") >= 1


async def test_staff_enrolment_needs_an_admin_code(sec: Harness) -> None:
    await sec.service.create_user("newbie", PASSWORD, "official", department="d1")
    r = await sec.client.post("/auth/totp/enroll", data={"username": "newbie", "password": PASSWORD})
    assert r.status_code == 400 and "enrolment code" in r.json()["detail"]
    sec.now[0] += timedelta(seconds=61)
    r = await sec.client.post("/auth/totp/enroll", data={"username": "newbie", "password": PASSWORD,
                                                         "enrolment_code": "AAAAAA-BBBBBB-CCCCCC-DDDDDD"})
    assert r.status_code == 400
    assert (await sec.service.get_user("newbie"))["totp_secret"] is None
    admin = await sec.user("root", "sys_admin")
    r = await sec.client.post("/auth/users/newbie/enrolment-code", headers=await sec.bearer(admin))
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    code = r.json()["enrolment_code"]
    # It expires.
    sec.now[0] += timedelta(hours=73)
    r = await sec.client.post("/auth/totp/enroll", data={"username": "newbie", "password": PASSWORD,
                                                         "enrolment_code": code})
    assert r.status_code == 400
    code = (await sec.state.accounts.issue_enrolment_code("newbie"))["enrolment_code"]
    sec.now[0] += timedelta(seconds=61)
    r = await sec.client.post("/auth/totp/enroll", data={"username": "newbie", "password": PASSWORD,
                                                         "enrolment_code": code.lower()})
    assert r.status_code == 200, r.text
    # A citizen may still add TOTP with the password alone.
    await sec.user("cit")
    r = await sec.client.post("/auth/totp/enroll", data={"username": "cit", "password": PASSWORD})
    assert r.status_code == 200


# ------------------------------------------------------------------------------ finding 10: lifecycle


async def test_disable_stops_the_access_token_at_once(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin")
    admin_headers = await sec.bearer(admin)
    official = await sec.user("olga", "official", department="d1")
    tokens = await sec.token(official)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await sec.client.get("/auth/me", headers=headers)).status_code == 200
    r = await sec.client.post("/auth/users/olga/disable", json={"reason": "left the city"}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["disabled"] is True
    row = await sec.service.get_user("olga")
    assert row["disabled"] and row["disabled_at"] is not None
    assert (await sec.client.get("/auth/me", headers=headers)).status_code == 401
    r = await sec.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400
    assert (await _login(sec.client, "olga", PASSWORD, sec.code(official))).status_code == 400
    # Disabling yourself is refused; a disabled account is shown as such.
    r = await sec.client.post("/auth/users/root/disable", headers=admin_headers)
    assert r.status_code == 403
    listed = {u["username"]: u for u in (await sec.client.get("/auth/users", headers=admin_headers)).json()}
    assert listed["olga"]["disabled_at"] is not None
    # Enabled again, the user logs in again.
    assert (await sec.client.post("/auth/users/olga/enable", headers=admin_headers)).status_code == 200
    assert (await sec.service.get_user("olga"))["disabled_at"] is None
    sec.now[0] += timedelta(seconds=31)
    assert (await _login(sec.client, "olga", PASSWORD, sec.code(official))).status_code == 200
    assert (await sec.client.post("/auth/users/ghost/disable", headers=admin_headers)).status_code == 404
    actions = {row["action"] for row in await sec.state.audit.search(AuditQuery(resource="user:olga"),
                                                                         masked=False)}
    assert {"user.disable", "user.enable"} <= actions


async def test_reset_totp_and_set_role(sec: Harness) -> None:
    await sec.service.add_department("d1", "One")
    await sec.service.add_department("d2", "Two")
    admin = await sec.user("root", "sys_admin")
    headers = await sec.bearer(admin)
    official = await sec.user("olga", "official", department="d1")
    tokens = await sec.token(official)
    r = await sec.client.post("/auth/users/olga/totp/reset", headers=headers)
    assert r.status_code == 200 and r.json()["enrolment_code"]
    row = await sec.service.get_user("olga")
    assert row["totp_secret"] is None and not row["totp_enabled"]
    r = await sec.client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 401
    assert (await _login(sec.client, "olga", PASSWORD)).json()["error"] == "mfa_enrollment_required"
    r = await sec.client.put("/auth/users/olga/role", json={"role": "official", "department": "d2"},
                             headers=headers)
    assert r.status_code == 200 and r.json() == {"username": "olga", "role": "official", "department": "d2"}
    r = await sec.client.put("/auth/users/olga/role", json={"role": "official", "department": "nowhere"},
                             headers=headers)
    assert r.status_code == 400
    r = await sec.client.put("/auth/users/olga/role", json={"department": "d2"}, headers=headers)
    assert r.status_code == 400
    actions = [row["action"] for row in await sec.state.audit.search(AuditQuery(resource="user:olga"),
                                                                         masked=False)]
    assert "auth.totp_reset" in actions and "user.role" in actions and "user.enrolment_code" in actions


async def test_oauth_clients_lifecycle(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin")
    headers = await sec.bearer(admin)
    r = await sec.client.post("/auth/clients", json={"client_id": "traffic-app", "role": "operator"},
                              headers=headers)
    assert r.status_code == 201 and r.json()["client_secret"].startswith("cs_")
    secret = r.json()["client_secret"]
    assert (await sec.client.post("/auth/clients", json={"client_id": "traffic-app", "role": "operator"},
                                  headers=headers)).status_code == 409
    for bad in ({"client_id": "x", "role": "sys_admin"}, {"client_id": "bad id!", "role": "operator"},
                {"role": "operator"}):
        assert (await sec.client.post("/auth/clients", json=bad, headers=headers)).status_code == 400
    listed = (await sec.client.get("/auth/clients", headers=headers)).json()
    assert [c["client_id"] for c in listed] == ["traffic-app"] and "secret_hash" not in listed[0]
    r = await sec.client.post("/auth/token", data={"grant_type": "client_credentials", "client_id": "traffic-app",
                                                   "client_secret": secret})
    assert r.status_code == 200
    bearer = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert (await sec.client.get("/auth/me", headers=bearer)).status_code == 200
    assert (await sec.client.post("/auth/clients/traffic-app/disable", headers=headers)).status_code == 204
    assert (await sec.client.get("/auth/me", headers=bearer)).status_code == 401
    r = await sec.client.post("/auth/token", data={"grant_type": "client_credentials", "client_id": "traffic-app",
                                                   "client_secret": secret})
    assert r.status_code == 401
    assert (await sec.client.post("/auth/clients/nope/disable", headers=headers)).status_code == 404
    boss = await sec.user("boss", "dept_admin", department="d1")
    assert (await sec.client.get("/auth/clients", headers=await sec.bearer(boss))).status_code == 403
    assert {"client.create", "client.disable"} <= {row["action"] for row in await sec.state.audit.search(
        AuditQuery(resource="client:traffic-app"), masked=False)}


async def test_lifecycle_cli(sec: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cityos.cli import app as cli

    monkeypatch.setenv("CITYOS_DATABASE_URL", sec.app.state.settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(sec.state.settings.data_dir))
    official = await sec.user("olga", "official", department="d1")
    await sec.token(official)

    async def run(*args: str) -> Any:
        result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
        assert result.exit_code == 0, result.output
        return result

    await run("user", "disable", "olga", "--reason", "left")
    assert (await sec.service.get_user("olga"))["disabled_at"] is not None
    await run("user", "enable", "olga")
    assert (await sec.service.get_user("olga"))["disabled_at"] is None
    await run("user", "set-role", "olga", "operator")
    assert (await sec.service.get_user("olga"))["role"] == "operator"
    out = await run("user", "reset-totp", "olga")
    assert "enrolment code" in out.output and (await sec.service.get_user("olga"))["totp_secret"] is None
    out = await run("client", "add", "cli-app", "--role", "operator")
    assert "cs_" in out.output
    assert "cli-app" in (await run("client", "list")).output
    await run("client", "disable", "cli-app")
    assert (await sec.state.accounts.get_client("cli-app"))["disabled"]
    refused = await asyncio.to_thread(CliRunner().invoke, cli, ["user", "set-role", "olga", "sys_admin"])
    assert refused.exit_code != 0


# ------------------------------------------------------------------------------ finding 13: hashing


async def test_hashing_runs_off_the_event_loop(sec: Harness) -> None:
    counter = CountingHasher(sec.service.hasher)
    sec.service.hasher = counter  # type: ignore[assignment]
    new = await sec.service.create_user("hashy", PASSWORD, "citizen")
    assert (await _login(sec.client, "hashy", PASSWORD)).status_code == 200
    assert counter.verifies == 1 and counter.threads
    assert threading.get_ident() not in counter.threads
    assert new.username == "hashy"


async def test_login_concurrency_is_bounded(sec: Harness) -> None:
    await sec.user("busy")
    swap_settings(sec, login_concurrency=1, login_queue_seconds=0.05)
    async with sec.service.login_slot():  # another login holds the only slot
        r = await _login(sec.client, "busy", PASSWORD)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["status"] == 503
    assert (await _login(sec.client, "busy", PASSWORD)).status_code == 200


# ------------------------------------------------------------------------------ finding 14: second admin


async def test_second_admin_approved_by_a_dept_admin(sec: Harness) -> None:
    first = await sec.user("root", "sys_admin")
    headers = await sec.bearer(first)
    r = await sec.client.post("/auth/approvals", headers=headers, json={
        "kind": "create_user", "params": {"username": "root2", "role": "sys_admin"}, "reason": "deputy"})
    assert r.status_code == 201, r.text
    approval = r.json()["id"]
    boss = await sec.user("boss", "dept_admin", department="d1")
    r = await sec.client.post(f"/auth/approvals/{approval}/approve", headers=await sec.bearer(boss))
    assert r.status_code == 200, r.text
    r = await sec.client.post(f"/auth/approvals/{approval}/execute", headers=headers)
    assert r.status_code == 200 and r.json()["result"]["enrolment_code"]
    assert (await sec.service.get_user("root2"))["role"] == "sys_admin"
    # A dept_admin cannot nominate an administrator itself.
    r = await sec.client.post("/auth/approvals", headers=await sec.bearer(boss), json={
        "kind": "create_user", "params": {"username": "root3", "role": "sys_admin"}, "reason": "me too"})
    assert r.status_code == 403


async def test_second_admin_by_break_glass_recovery_code(sec: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    code = await sec.state.accounts.create_recovery_code()
    assert code is not None and await sec.state.accounts.create_recovery_code() is None  # created once
    first = await sec.user("root", "sys_admin")
    await sec.user("deputy")
    headers = await sec.bearer(first)
    r = await sec.client.post("/auth/approvals", headers=headers, json={
        "kind": "assign_admin_role", "params": {"username": "deputy", "role": "sys_admin"}, "reason": "deputy"})
    approval = r.json()["id"]
    with pytest.raises(Exception, match="does not match"):
        await sec.state.approvals.approve_with_recovery_code(approval, "RC-WRONG")
    assert (await sec.state.approvals.get(approval))["status"] == "pending"
    # Through the CLI, as an operator at the server would.
    from typer.testing import CliRunner

    from cityos.cli import app as cli

    monkeypatch.setenv("CITYOS_DATABASE_URL", sec.app.state.settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(sec.state.settings.data_dir))
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["user", "approve", approval,
                                                               "--recovery-code", code])
    assert result.exit_code == 0, result.output
    assert (await sec.state.approvals.get(approval))["status"] == "approved"
    assert (await sec.client.post(f"/auth/approvals/{approval}/execute", headers=headers)).status_code == 200
    assert (await sec.service.get_user("deputy"))["role"] == "sys_admin"
    # Spent: it does not approve a second appointment; nor does it approve anything but appointments.
    await sec.user("third")
    r = await sec.client.post("/auth/approvals", headers=headers, json={
        "kind": "assign_admin_role", "params": {"username": "third", "role": "sys_admin"}, "reason": "x"})
    with pytest.raises(Exception, match="does not match"):
        await sec.state.approvals.approve_with_recovery_code(r.json()["id"], code)
    r = await sec.client.post("/auth/approvals", headers=headers, json={
        "kind": "rotate_keys", "params": {}, "reason": "x"})
    with pytest.raises(Exception, match="only approves role appointments"):
        await sec.state.approvals.approve_with_recovery_code(r.json()["id"], code)
    uses = await _actions(sec, "recovery_code.use")
    assert [row["outcome"] for row in uses].count("success") == 1


# ------------------------------------------------------------------------------ finding 15: weak passwords


@pytest.mark.parametrize("password", ["Aaaaaaaaaaa1", "password1111!A", "Qwertyuiop123!", "OlgaWang1985!"])
async def test_weak_passwords_refused(sec: Harness, password: str) -> None:
    admin = await sec.user("root", "sys_admin")
    r = await sec.client.post("/auth/users", headers=await sec.bearer(admin), json={
        "username": "cit", "password": password, "role": "citizen", "display_name": "Olga Wang",
        "phone": "13812345678"})
    assert r.status_code == 400 and "too weak" in r.json()["detail"], r.text
    assert all(u["username"] != "cit" for u in await sec.service.list_users())


async def test_personal_data_counts_against_a_password(sec: Harness) -> None:
    admin = await sec.user("root", "sys_admin")
    body = {"username": "cit", "role": "citizen", "display_name": "Zhang Wei", "phone": "13987654321"}
    r = await sec.client.post("/auth/users", headers=await sec.bearer(admin),
                              json={**body, "password": "13987654321zhangwei"})
    assert r.status_code == 400
    for password in ("Zhangwei13987654321!", "Correct-Horse-13987654321", "Battery-Staple-ZhangWei-9"):
        r = await sec.client.post("/auth/users", headers=await sec.bearer(admin), json={**body, "password": password})
        assert r.status_code == 400 and "phone" in r.json()["detail"], password
    r = await sec.client.post("/auth/users", headers=await sec.bearer(admin), json={**body, "password": PASSWORD})
    assert r.status_code == 201
