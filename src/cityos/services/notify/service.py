"""The Notifier: an in-app inbox plus e-mail / SMS through an outbox with retry.

`notify` commits the inbox message and one outbox row per address in one transaction and
returns at once; delivery never raises into the caller. `run_once` claims due outbox rows (a
lease: ``next_attempt_at`` moves forward and ``attempts`` is compared-and-set, so two workers in
two processes never send the same row at the same time), sends them, and marks them sent, or
schedules a retry with exponential back-off, or gives up after ``max_attempts`` (status
``failed``, last error kept). A crash between sending and marking re-sends after the lease
expires (at least once). The background loop wakes on `notify` and polls every
``poll_seconds`` for retries and other processes' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float, env_int
from cityos.core import clock
from cityos.core.clock import as_utc, as_utc_or_none, iso
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.security.crypto import KeyRing
from cityos.services.notify.models import notifications, outbox
from cityos.services.notify.senders import OutgoingMessage, Sender, default_senders

log = logging.getLogger(__name__)

MAX_SUBJECT = 256
MAX_BODY = 8000


@dataclass(frozen=True)
class NotifySettings:
    max_attempts: int = field(default_factory=lambda: env_int("CITYOS_NOTIFY_MAX_ATTEMPTS", 6))
    retry_seconds: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_RETRY_SECONDS", 30.0))
    poll_seconds: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_POLL_SECONDS", 5.0))
    lease_seconds: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_LEASE_SECONDS", 120.0))
    send_timeout: float = field(default_factory=lambda: env_float("CITYOS_NOTIFY_SEND_TIMEOUT", 30.0))
    batch: int = 50


def message_out(row: Any) -> dict[str, Any]:
    read_at = as_utc_or_none(row.read_at)
    return {"id": row.id, "subject": row.subject, "body": row.body, "link": row.link,
            "createdAt": iso(as_utc(row.created_at)), "read": read_at is not None,
            "readAt": iso(read_at) if read_at else None}


class Notifier:
    def __init__(self, engine: AsyncEngine, keyring: KeyRing, senders: dict[str, Sender] | None = None,
                 settings: NotifySettings | None = None, write_lock: asyncio.Lock | None = None) -> None:
        self.engine = engine
        self.keyring = keyring
        self.senders: dict[str, Sender] = senders if senders is not None else default_senders()
        self.settings = settings or NotifySettings()
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = write_lock or asyncio.Lock()
        self._run_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._sqlite:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    # ------------------------------------------------------------------ the contract

    async def notify(self, tenant: str, user_id: str, subject: str, body: str, *, email: str | None = None,
                     phone: str | None = None, link: str | None = None,
                     conn: AsyncConnection | None = None) -> dict[str, Any]:
        """Store an in-app message for `user_id`; queue e-mail / SMS when an address is given.

        Returns the stored message (with ``deliveries``: the channels queued). Sending happens in
        the background and its failures are retried, never raised here. With `conn`, the rows are
        written in the caller's transaction (one commit for the caller's change and its message);
        the caller then calls `wake` after its commit when ``deliveries`` is not empty.
        """
        message, rows, result = self.prepare(tenant, user_id, subject, body, email=email, phone=phone, link=link)
        if conn is not None:
            await self._insert(conn, message, rows)
        else:
            async with self._write() as own:
                await self._insert(own, message, rows)
            if rows:
                self.wake()
        return result

    def prepare(self, tenant: str, user_id: str, subject: str, body: str, *, email: str | None = None,
                phone: str | None = None, link: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                                             dict[str, Any]]:
        """The rows `notify` writes (message, outbox rows) and what it returns, for a caller that writes them."""
        if not isinstance(user_id, str) or not user_id:
            raise BadRequestData("a notification needs a user id")
        subject = (subject or "")[:MAX_SUBJECT]
        body = (body or "")[:MAX_BODY]
        now = clock.now()
        message_id = uuid.uuid4().hex
        text = f"{body}\n\n{link}" if link else body
        rows: list[dict[str, Any]] = []
        for channel, address in (("email", email), ("sms", phone)):
            if address:
                rows.append({"tenant": tenant, "notification_id": message_id, "channel": channel,
                             "address": self.keyring.encrypt(address.strip()), "subject": subject, "body": text,
                             "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now})
        message = {"id": message_id, "tenant": tenant, "user_id": user_id, "subject": subject, "body": body,
                   "link": (link or None) and link[:2048], "created_at": now, "read_at": None}
        result = {"id": message_id, "subject": subject, "body": body, "link": link, "createdAt": iso(now),
                  "read": False, "readAt": None, "deliveries": [r["channel"] for r in rows]}
        return message, rows, result

    @staticmethod
    async def _insert(conn: AsyncConnection, message: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        await conn.execute(notifications.insert(), message)
        if rows:
            await conn.execute(outbox.insert(), rows)

    def wake(self) -> None:
        """Wake the delivery loop (new outbox rows were committed)."""
        self._wake.set()

    # ------------------------------------------------------------------ the inbox

    async def inbox(self, tenant: str, user_id: str, unread_only: bool = False, limit: int = 50,
                    offset: int = 0) -> dict[str, Any]:
        where = and_(notifications.c.tenant == tenant, notifications.c.user_id == user_id)
        unread_where = and_(where, notifications.c.read_at.is_(None))
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(notifications)
                                        .where(unread_where if unread_only else where))).scalar_one()
            unread = (await conn.execute(select(func.count()).select_from(notifications)
                                         .where(unread_where))).scalar_one()
            rows = (await conn.execute(select(notifications).where(unread_where if unread_only else where)
                                       .order_by(notifications.c.created_at.desc(), notifications.c.id)
                                       .limit(limit).offset(offset))).all()
        return {"total": total, "unread": unread, "items": [message_out(r) for r in rows]}

    async def mark_read(self, tenant: str, user_id: str, message_id: str) -> dict[str, Any]:
        """Mark one of the user's own messages read (idempotent). Another user's id is unknown (404)."""
        mine = and_(notifications.c.id == message_id, notifications.c.tenant == tenant,
                    notifications.c.user_id == user_id)
        async with self._write() as conn:
            await conn.execute(update(notifications).where(mine, notifications.c.read_at.is_(None))
                               .values(read_at=clock.now()))
            row = (await conn.execute(select(notifications).where(mine))).first()
        if row is None:
            raise ResourceNotFound(f"no notification {message_id!r}")
        return message_out(row)

    async def deliveries(self, notification_id: str) -> list[dict[str, Any]]:
        """The outbox rows of one message (addresses masked out): channel, status, attempts, error."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(outbox.c.channel, outbox.c.status, outbox.c.attempts,
                                              outbox.c.last_error, outbox.c.sent_at)
                                       .where(outbox.c.notification_id == notification_id)
                                       .order_by(outbox.c.id))).all()
        return [{"channel": r.channel, "status": r.status, "attempts": r.attempts, "lastError": r.last_error,
                 "sentAt": iso(as_utc(r.sent_at)) if r.sent_at else None} for r in rows]

    # ------------------------------------------------------------------ the outbox

    def _backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.settings.retry_seconds * 2 ** max(attempts - 1, 0), 6 * 3600))

    async def run_once(self) -> int:
        """Deliver the due outbox rows; returns how many were sent."""
        async with self._run_lock:
            now = clock.now()
            async with self.engine.connect() as conn:
                due = (await conn.execute(select(outbox).where(outbox.c.status == "pending",
                                                               outbox.c.next_attempt_at <= now)
                                          .order_by(outbox.c.next_attempt_at, outbox.c.id)
                                          .limit(self.settings.batch))).all()
            sent = 0
            for row in due:
                if await self._deliver(row, now):
                    sent += 1
            return sent

    async def _claim(self, row: Any, now: datetime) -> bool:
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        async with self._write() as conn:
            result = await conn.execute(update(outbox).where(
                outbox.c.id == row.id, outbox.c.status == "pending", outbox.c.attempts == row.attempts)
                .values(attempts=row.attempts + 1, next_attempt_at=lease))
        return bool(result.rowcount == 1)

    async def _deliver(self, row: Any, now: datetime) -> bool:
        if not await self._claim(row, now):
            return False  # another worker has it
        attempts = row.attempts + 1
        error: str | None = None
        sender = self.senders.get(row.channel)
        try:
            if sender is None:
                raise RuntimeError(f"no sender for channel {row.channel!r}")
            message = OutgoingMessage(row.channel, self.keyring.decrypt(row.address), row.subject, row.body,
                                      row.tenant, row.notification_id)
            await asyncio.wait_for(sender.send(message), self.settings.send_timeout)
        except Exception as exc:  # any sender failure is retried, never raised
            error = f"{type(exc).__name__}: {exc}"[:512]
        done = clock.now()
        if error is None:
            values: dict[str, Any] = {"status": "sent", "sent_at": done, "last_error": None}
        elif attempts >= self.settings.max_attempts:
            values = {"status": "failed", "last_error": error}
            log.warning("gave up %s notification %s after %d attempts: %s", row.channel, row.notification_id,
                        attempts, error)
        else:
            values = {"last_error": error, "next_attempt_at": done + self._backoff(attempts)}
        async with self._write() as conn:
            await conn.execute(update(outbox).where(outbox.c.id == row.id, outbox.c.attempts == attempts)
                               .values(**values))
        return error is None

    # ------------------------------------------------------------------ the background loop

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="cityos-notify-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again on the next tick
                log.exception("notification outbox run failed")
