"""Notifications: the in-app inbox over HTTP, real e-mail through SMTP, SMS, and the outbox retry."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from cityos.core import clock
from cityos.services.notify.models import outbox
from cityos.services.notify.senders import LogSender, OutgoingMessage, SmtpEmailSender, SmtpSettings

INBOX = "/api/services/notifications"


@pytest.fixture
async def notifier(app: Any) -> Any:
    """The app's notifier with its background loop paused (tests drive `run_once`), senders restored after."""
    n = app.state.notifier
    saved = dict(n.senders)
    await n.stop()
    yield n
    await n.stop()
    n.senders.clear()
    n.senders.update(saved)
    n.start()


class FlakySender:
    """Fails `failures` times, then delivers (a real sender to a list)."""

    channel = "email"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delivered: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("gateway down")
        self.delivered.append(message)


async def test_inbox_lists_only_own_messages_newest_first(client: Any, auth: Any, notifier: Any) -> None:
    await notifier.notify("", "u1", "申请已受理", "Your application was accepted", link="/apps/1")
    await notifier.notify("", "u1", "申请已办结", "Your application is complete")
    await notifier.notify("", "u2", "other", "not yours")
    response = await client.get(INBOX, headers=auth.headers("citizen", user_id="u1"))
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 2 and body["unread"] == 2
    assert {m["subject"] for m in body["items"]} == {"申请已办结", "申请已受理"}
    assert all(m["read"] is False for m in body["items"])
    assert "not yours" not in response.text


async def test_mark_read_is_idempotent_and_filters_unread(client: Any, auth: Any, notifier: Any) -> None:
    first = await notifier.notify("", "u1", "one", "body one")
    await notifier.notify("", "u1", "two", "body two")
    headers = auth.headers("citizen", user_id="u1")
    response = await client.post(f"{INBOX}/{first['id']}/read", headers=headers)
    assert response.status_code == 200
    assert response.json()["read"] is True and response.json()["readAt"]
    again = await client.post(f"{INBOX}/{first['id']}/read", headers=headers)
    assert again.status_code == 200 and again.json()["readAt"] == response.json()["readAt"]
    unread = (await client.get(INBOX, params={"unread": "true"}, headers=headers)).json()
    assert unread["total"] == 1 and unread["items"][0]["subject"] == "two"


async def test_inbox_refuses_anonymous_and_other_users(client: Any, anon_client: Any, auth: Any,
                                                       notifier: Any) -> None:
    message = await notifier.notify("", "u1", "private", "for u1 only")
    assert (await anon_client.get(INBOX)).status_code == 401
    assert (await anon_client.post(f"{INBOX}/{message['id']}/read")).status_code == 401
    other = await client.post(f"{INBOX}/{message['id']}/read", headers=auth.headers("citizen", user_id="u2"))
    assert other.status_code == 404
    assert (await client.post(f"{INBOX}/nope/read", headers=auth.headers("citizen", user_id="u1"))).status_code == 404
    bad = await client.get(INBOX, params={"limit": "many"}, headers=auth.headers("citizen", user_id="u1"))
    assert bad.status_code == 400
    assert bad.json()["title"]
    still_unread = (await client.get(INBOX, headers=auth.headers("citizen", user_id="u1"))).json()
    assert still_unread["unread"] == 1


async def test_email_is_delivered_to_a_real_smtp_server(client: Any, notifier: Any,
                                                        smtp_server: tuple[Any, int]) -> None:
    mailbox, port = smtp_server
    notifier.senders["email"] = SmtpEmailSender(SmtpSettings(host="127.0.0.1", port=port,
                                                             from_addr="noreply@city.example"))
    stored = await notifier.notify("", "u1", "营业执照已签发", "您的电子营业执照已签发。", email="zhang@example.cn",
                                   link="https://city.example/licences/1")
    assert stored["deliveries"] == ["email"]
    assert await notifier.run_once() == 1
    assert len(mailbox.messages) == 1
    mail = mailbox.messages[0]
    assert mail["Subject"] == "营业执照已签发"
    assert mail["From"] == "noreply@city.example"
    assert mailbox.recipients[0] == ["zhang@example.cn"]
    text = mail.get_content()
    assert "您的电子营业执照已签发。" in text and "https://city.example/licences/1" in text
    assert await notifier.deliveries(stored["id"]) == [
        {"channel": "email", "status": "sent", "attempts": 1, "lastError": None,
         "sentAt": (await notifier.deliveries(stored["id"]))[0]["sentAt"]}]
    assert await notifier.run_once() == 0  # sent once, not again


async def test_background_worker_delivers_without_being_asked(client: Any, notifier: Any,
                                                              smtp_server: tuple[Any, int]) -> None:
    mailbox, port = smtp_server
    notifier.senders["email"] = SmtpEmailSender(SmtpSettings(host="127.0.0.1", port=port))
    notifier.start()
    await notifier.notify("", "u1", "hello", "woken by notify", email="a@example.org")
    for _ in range(100):
        if mailbox.messages:
            break
        await asyncio.sleep(0.05)
    assert [m["Subject"] for m in mailbox.messages] == ["hello"]


async def test_sms_goes_to_the_log_sender_and_addresses_are_encrypted(app: Any, client: Any,
                                                                      notifier: Any) -> None:
    sms = LogSender("sms")
    notifier.senders["sms"] = sms
    stored = await notifier.notify("", "u1", "取件通知", "请于今日取件", phone="13812345678")
    await notifier.run_once()
    assert [(m.address, m.subject) for m in sms.recent] == [("13812345678", "取件通知")]
    async with app.state.engine.connect() as conn:
        addresses = (await conn.execute(select(outbox.c.address).where(
            outbox.c.notification_id == stored["id"]))).scalars().all()
    assert len(addresses) == 1 and addresses[0].startswith("enc:v1:") and "13812345678" not in addresses[0]


async def test_failures_never_reach_the_caller_and_are_retried(client: Any, notifier: Any,
                                                               frozen_clock: Any) -> None:
    start = clock.now()
    frozen_clock(start)
    flaky = FlakySender(failures=2)
    notifier.senders["email"] = flaky
    stored = await notifier.notify("", "u1", "retry me", "body", email="b@example.org")
    assert await notifier.run_once() == 0
    [row] = await notifier.deliveries(stored["id"])
    assert row["status"] == "pending" and row["attempts"] == 1 and "gateway down" in row["lastError"]
    assert await notifier.run_once() == 0  # not due yet: back-off
    frozen_clock(start + timedelta(hours=1))
    assert await notifier.run_once() == 0  # second failure
    frozen_clock(start + timedelta(hours=3))
    assert await notifier.run_once() == 1
    assert [m.subject for m in flaky.delivered] == ["retry me"]
    [row] = await notifier.deliveries(stored["id"])
    assert row["status"] == "sent" and row["attempts"] == 3


async def test_delivery_gives_up_after_max_attempts(client: Any, notifier: Any, frozen_clock: Any) -> None:
    start = clock.now()
    notifier.senders["email"] = FlakySender(failures=10**6)
    notifier.senders.pop("sms")  # no sender for a channel is a failure too, not a crash
    stored = await notifier.notify("", "u1", "doomed", "body", email="c@example.org", phone="13900000000")
    for step in range(notifier.settings.max_attempts + 1):
        frozen_clock(start + timedelta(days=step))
        await notifier.run_once()
    rows = await notifier.deliveries(stored["id"])
    assert {r["channel"]: r["status"] for r in rows} == {"email": "failed", "sms": "failed"}
    assert all(r["attempts"] == notifier.settings.max_attempts for r in rows)
    assert "no sender" in next(r for r in rows if r["channel"] == "sms")["lastError"]


async def test_smtp_refused_connection_is_a_retry_not_an_error(client: Any, notifier: Any, closed_port: int) -> None:
    notifier.senders["email"] = SmtpEmailSender(SmtpSettings(host="127.0.0.1", port=closed_port, timeout=2.0))
    stored = await notifier.notify("", "u1", "nobody listens", "body", email="d@example.org")
    assert stored["deliveries"] == ["email"]
    assert await notifier.run_once() == 0
    [row] = await notifier.deliveries(stored["id"])
    assert row["status"] == "pending" and "Connection" in row["lastError"]
