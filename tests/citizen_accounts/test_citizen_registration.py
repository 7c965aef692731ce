"""Self-registration of citizens and companies, phone codes and password reset, over HTTP.

The codes travel through the real notification outbox to the SMS channel's `LogSender` (the
default SMS sender), and are read back from what it delivered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from stdnum.cn import ric, uscc

from cityos.core import clock
from cityos.security.models import users
from cityos.services.notify.senders import LogSender

BASE = "/api/services/registration"
PASSWORD = "Qiong-Shan-Harbour-2026"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def resident_id(serial: int) -> str:
    body = f"46010019900101{serial:03d}"
    return body + ric.calc_check_digit(body + "0")  # stdnum expects a placeholder check digit


def credit_code(serial: int) -> str:
    body = f"91460100MA5T{serial:05d}"
    return body + uscc.calc_check_digit(body)


@pytest.fixture
def now() -> Iterator[list[datetime]]:
    moment = [T0]
    clock.set_clock(lambda: moment[0])
    yield moment
    clock.reset_clock()


@pytest.fixture
async def sms(app: Any, client: Any) -> AsyncIterator[LogSender]:
    """The SMS channel's real log sender, fresh; the outbox loop paused (tests deliver with run_once)."""
    notifier = app.state.notifier
    saved = dict(notifier.senders)
    await notifier.stop()
    sender = LogSender("sms")
    notifier.senders["sms"] = sender
    yield sender
    notifier.senders.clear()
    notifier.senders.update(saved)
    notifier.start()


async def code_for(app: Any, client: Any, sms: LogSender, phone: str, purpose: str = "register") -> str:
    reply = await client.post(f"{BASE}/phone-code", json={"phone": phone, "purpose": purpose})
    assert reply.status_code == 202, reply.text
    await app.state.notifier.run_once()
    mine = [m for m in sms.recent if m.address == phone]
    assert mine, "no SMS delivered"
    found = re.search(r"\b(\d{6})\b", mine[-1].body)
    assert found is not None
    return found.group(1)


def citizen(serial: int, mobile: str, code: Any, **over: Any) -> dict[str, Any]:
    return {"kind": "citizen", "username": f"resident{serial}", "password": PASSWORD, "name": "王小明",
            "idNumber": resident_id(serial), "phone": mobile, "code": code, **over}


async def test_citizen_registers_with_phone_code_and_signs_in(app: Any, anon_client: Any, sms: LogSender,
                                                             now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13800138001")
    assert "【CityOS】" in sms.recent[-1].subject and "验证码" in sms.recent[-1].body
    reply = await anon_client.post(BASE, json=citizen(1, "138 0013 8001", code))
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["role"] == "citizen" and body["phone"] == "138****8001"
    async with app.state.engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.username == "resident1"))).mappings().one()
    # Personal data is field-encrypted in the account row; the registration keeps only digests.
    assert row["id_number"].startswith("enc:") and resident_id(1) not in str(dict(row))
    login = await anon_client.post("/auth/token", data={"grant_type": "password", "username": "resident1",
                                                        "password": PASSWORD})
    assert login.status_code == 200, login.text
    me = await anon_client.get("/auth/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert me.json()["role"] == "citizen"


async def test_company_registers_with_credit_code(app: Any, anon_client: Any, sms: LogSender,
                                                  now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13900139002")
    reply = await anon_client.post(BASE, json={"kind": "company", "username": "haikou-trading",
                                               "password": PASSWORD, "name": "海口港湾贸易有限公司",
                                               "creditCode": credit_code(2), "phone": "13900139002",
                                               "code": code})
    assert reply.status_code == 201, reply.text
    assert reply.json()["role"] == "enterprise"


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("idNumber", "46010019900101123X", "check digit"),          # wrong check digit
    ("idNumber", "46010019901301123" + "0", "resident ID"),     # month 13
    ("idNumber", 460100199001011234, "resident ID"),            # not a string
    ("phone", "12345", "mobile"),
    ("kind", "robot", "kind"),
    ("name", "<b>x</b>", "name"),
    ("password", "123456", "weak"),
])
async def test_bad_registrations_are_refused_before_the_code_is_spent(
        app: Any, anon_client: Any, sms: LogSender, now: list[datetime], field: str, value: Any,
        needle: str) -> None:
    code = await code_for(app, anon_client, sms, "13700137003")
    bad = await anon_client.post(BASE, json=citizen(3, "13700137003", code, **{field: value}))
    assert bad.status_code == 400, bad.text
    assert needle in bad.json()["detail"]
    good = await anon_client.post(BASE, json=citizen(3, "13700137003", code))  # the code still works
    assert good.status_code == 201, good.text


async def test_bad_credit_code_and_malformed_bodies(app: Any, anon_client: Any, sms: LogSender,
                                                    now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13600136004")
    wrong = credit_code(4)[:-1] + ("0" if credit_code(4)[-1] != "0" else "1")
    reply = await anon_client.post(BASE, json={"kind": "company", "username": "co4", "password": PASSWORD,
                                               "name": "某某公司", "creditCode": wrong, "phone": "13600136004",
                                               "code": code})
    assert reply.status_code == 400 and "check character" in reply.json()["detail"]
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        bad = await anon_client.post(BASE, content=raw, headers={"Content-Type": "application/json"})
        assert bad.status_code == 400, bad.text
    big = await anon_client.post(BASE, content=b'{"a": "' + b"x" * 20_000 + b'"}',
                                 headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    assert (await anon_client.post(f"{BASE}/phone-code", json={"phone": "13600136004",
                                                               "purpose": "login"})).status_code == 400


async def test_wrong_code_counts_and_locks_after_five(app: Any, anon_client: Any, sms: LogSender,
                                                      now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13500135005")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for left in (4, 3, 2, 1, 0):
        reply = await anon_client.post(BASE, json=citizen(5, "13500135005", wrong))
        assert reply.status_code == 400 and f"{left} tries left" in reply.json()["detail"]
    locked = await anon_client.post(BASE, json=citizen(5, "13500135005", code))  # even the right one now
    assert locked.status_code == 400 and "too many wrong codes" in locked.json()["detail"]
    for junk in ("12345", "abcdef", 123456, None):
        bad = await anon_client.post(BASE, json=citizen(5, "13500135005", junk))
        assert bad.status_code == 400


async def test_expired_and_reused_codes_are_refused(app: Any, anon_client: Any, sms: LogSender,
                                                    now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13400134006")
    now[0] += timedelta(seconds=601)
    expired = await anon_client.post(BASE, json=citizen(6, "13400134006", code))
    assert expired.status_code == 400 and "expired" in expired.json()["detail"]
    fresh = await code_for(app, anon_client, sms, "13400134006")
    assert (await anon_client.post(BASE, json=citizen(6, "13400134006", fresh))).status_code == 201
    again = await anon_client.post(BASE, json=citizen(7, "13400134006", fresh, idNumber=resident_id(7)))
    assert again.status_code == 409  # the phone has an account now


async def test_no_code_sent_is_refused(anon_client: Any, sms: LogSender, now: list[datetime]) -> None:
    reply = await anon_client.post(BASE, json=citizen(8, "13300133008", "123456"))
    assert reply.status_code == 400 and "request one" in reply.json()["detail"]


async def test_duplicate_identity_phone_and_username(app: Any, anon_client: Any, sms: LogSender,
                                                     now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13200132009")
    assert (await anon_client.post(BASE, json=citizen(9, "13200132009", code))).status_code == 201
    # The same person again with another phone: refused before a code is even asked for.
    now[0] += timedelta(minutes=2)
    code2 = await code_for(app, anon_client, sms, "13200132010")
    same_person = await anon_client.post(BASE, json=citizen(9, "13200132010", code2, username="other9"))
    assert same_person.status_code == 409 and "ID number" in same_person.json()["detail"]
    # Lower-case x of the same ID is the same identity.
    taken_name = await anon_client.post(BASE, json=citizen(10, "13200132010", code2, username="resident9"))
    assert taken_name.status_code == 409
    # A code for registration is refused for a registered phone.
    assert (await anon_client.post(f"{BASE}/phone-code", json={"phone": "13200132009"})).status_code == 409
    async with app.state.engine.connect() as conn:
        count = len((await conn.execute(select(users.c.id).where(users.c.role == "citizen"))).all())
    assert count == 1


async def test_codes_are_rate_limited_per_phone_and_per_address(app: Any, anon_client: Any, sms: LogSender,
                                                                now: list[datetime]) -> None:
    first = await anon_client.post(f"{BASE}/phone-code", json={"phone": "13100131011"})
    assert first.status_code == 202
    again = await anon_client.post(f"{BASE}/phone-code", json={"phone": "13100131011"})
    assert again.status_code == 429 and int(again.headers["Retry-After"]) <= 60
    for _ in range(4):
        now[0] += timedelta(seconds=61)
        assert (await anon_client.post(f"{BASE}/phone-code", json={"phone": "13100131011"})).status_code == 202
    now[0] += timedelta(seconds=61)
    hourly = await anon_client.post(f"{BASE}/phone-code", json={"phone": "13100131011"})
    assert hourly.status_code == 429 and "an hour" in hourly.json()["detail"]
    # Per source address: past CITYOS_REGISTRATION_RATE_PER_MINUTE calls a minute, refused whatever the phone.
    limit = app.state.registration.settings.rate_per_minute
    statuses = [(await anon_client.post(f"{BASE}/phone-code", json={"phone": f"188{i:08d}"})).status_code
                for i in range(limit + 1)]
    assert statuses[-1] == 429 and 202 in statuses


async def test_password_reset_by_phone_code(app: Any, anon_client: Any, sms: LogSender,
                                            now: list[datetime]) -> None:
    code = await code_for(app, anon_client, sms, "13000130012")
    assert (await anon_client.post(BASE, json=citizen(12, "13000130012", code))).status_code == 201
    now[0] += timedelta(minutes=2)
    reset_code = await code_for(app, anon_client, sms, "13000130012", purpose="reset")
    new_password = "Coconut-Island-Tide-88"
    wrong = await anon_client.post(f"{BASE}/password-reset", json={"phone": "13000130012", "code": "000000"
                                   if reset_code != "000000" else "111111", "newPassword": new_password})
    assert wrong.status_code == 400
    weak = await anon_client.post(f"{BASE}/password-reset", json={"phone": "13000130012", "code": reset_code,
                                                                  "newPassword": "password"})
    assert weak.status_code == 400 and "weak" in weak.json()["detail"]
    done = await anon_client.post(f"{BASE}/password-reset", json={"phone": "13000130012", "code": reset_code,
                                                                  "newPassword": new_password})
    assert done.status_code == 200 and done.json()["username"] == "resident12"
    old = await anon_client.post("/auth/token", data={"grant_type": "password", "username": "resident12",
                                                      "password": PASSWORD})
    assert old.status_code == 400
    new = await anon_client.post("/auth/token", data={"grant_type": "password", "username": "resident12",
                                                      "password": new_password})
    assert new.status_code == 200, new.text
    reused = await anon_client.post(f"{BASE}/password-reset", json={"phone": "13000130012", "code": reset_code,
                                                                    "newPassword": "Another-Long-Phrase-77"})
    assert reused.status_code == 400


async def test_reset_code_for_unknown_phone_answers_alike_and_sends_nothing(
        app: Any, anon_client: Any, sms: LogSender, now: list[datetime]) -> None:
    reply = await anon_client.post(f"{BASE}/phone-code", json={"phone": "15900159013", "purpose": "reset"})
    assert reply.status_code == 202 and reply.json()["sent"] is True
    await app.state.notifier.run_once()
    assert not [m for m in sms.recent if m.address == "15900159013"]
    reset = await anon_client.post(f"{BASE}/password-reset", json={"phone": "15900159013", "code": "123456",
                                                                   "newPassword": "Coconut-Island-Tide-88"})
    assert reset.status_code == 400


async def test_staff_cannot_be_reset_through_the_citizen_path(app: Any) -> None:
    from cityos.security.service import Forbidden

    new = await app.state.security.service.create_user("duty-officer", PASSWORD, "operator")
    with pytest.raises(Forbidden):
        await app.state.security.accounts.reset_password(new.id, "Coconut-Island-Tide-88", proof="test")
