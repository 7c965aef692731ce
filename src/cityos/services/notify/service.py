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
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float, env_int
from cityos.core import clock
from cityos.core.clock import as_utc, as_utc_or_none, iso
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.tasks import StepGuard
from cityos.security.crypto import KeyRing
from cityos.security.models import users
from cityos.security.policy import Role
from cityos.services.notify.models import CONTACT_ROLES, contacts, notifications, outbox
from cityos.services.notify.senders import OutgoingMessage, Sender, default_senders

log = logging.getLogger(__name__)

MAX_SUBJECT = 256
MAX_BODY = 8000
MAX_CONTACTS = 200
ALL_DEPARTMENTS = "*"  # a contact for every department: the tenant's supervisors (效能监督)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$")
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
_STAFF_ROLES = (Role.OFFICIAL.value, Role.DEPT_ADMIN.value)


@dataclass(frozen=True)
class Recipient:
    """Someone to tell about a department's work: in-app by user id, plus e-mail / SMS when known."""

    user_id: str
    role: str  # staff | supervisor
    email: str | None = None
    phone: str | None = None


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
        self._write_lock = write_lock or asyncio.Lock()
        self._run_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._steps = StepGuard("notification outbox")

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._write_lock) as conn:
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

    # ------------------------------------------------------------------ departments: staff, supervisors, contacts

    async def notify_department(self, tenant: str, department: str, subject: str, body: str,
                                link: str | None = None) -> list[str]:
        """Tell `department`'s staff and duty contacts (in-app, and by e-mail / SMS where the roster has an
        address), in one transaction; returns the users told."""
        told: list[str] = []
        queued = False
        async with self._write() as conn:
            for who in await self.department_recipients(conn, tenant, department):
                result = await self.notify(tenant, who.user_id, subject, body, email=who.email, phone=who.phone,
                                           link=link, conn=conn)
                queued = queued or bool(result["deliveries"])
                told.append(who.user_id)
        if queued:
            self.wake()
        return told

    async def department_recipients(self, conn: AsyncConnection, tenant: str, department: str) -> list[Recipient]:
        """Who hears about `department`'s deadlines, read in the caller's transaction: its staff accounts
        (officials and department administrators; the administrators supervise it), its duty contacts,
        and the tenant-wide supervisors (contacts of department "*"). One entry per user, supervisor
        before staff, with the contact's e-mail / phone when the roster has one."""
        found: dict[str, Recipient] = {}
        rows = (await conn.execute(select(users.c.id, users.c.role).where(
            users.c.tenant == tenant, users.c.department == department, users.c.role.in_(_STAFF_ROLES),
            users.c.disabled.is_(False)).order_by(users.c.id))).all()
        for user_id, role in rows:
            found[user_id] = Recipient(user_id, "supervisor" if role == Role.DEPT_ADMIN.value else "staff")
        roster = (await conn.execute(select(contacts).where(
            contacts.c.tenant == tenant, contacts.c.department.in_((department, ALL_DEPARTMENTS)))
            .order_by(contacts.c.department, contacts.c.user_id))).mappings().all()
        for row in roster:
            known = found.get(row["user_id"])
            role = "supervisor" if "supervisor" in (row["role"], known.role if known else "") else "staff"
            found[row["user_id"]] = Recipient(
                row["user_id"], role,
                self.keyring.decrypt(row["email"]) if row["email"] else (known.email if known else None),
                self.keyring.decrypt(row["phone"]) if row["phone"] else (known.phone if known else None))
        return sorted(found.values(), key=lambda r: (r.role != "supervisor", r.user_id))

    async def contacts(self, tenant: str, department: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(contacts).where(
                contacts.c.tenant == tenant, contacts.c.department == department)
                .order_by(contacts.c.user_id))).mappings().all()
        return {"department": department, "contacts": [
            {"userId": r["user_id"], "role": r["role"],
             "email": self.keyring.decrypt(r["email"]) if r["email"] else None,
             "phone": self.keyring.decrypt(r["phone"]) if r["phone"] else None} for r in rows]}

    async def set_contacts(self, tenant: str, department: str, body: Any) -> dict[str, Any]:
        """Replace `department`'s duty contacts: ``{"contacts": [{userId, role, email?, phone?}]}``."""
        if not department or len(department) > 128:
            raise BadRequestData("a department id is 1-128 characters")
        items = body.get("contacts") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise BadRequestData("the body is {\"contacts\": [{userId, role, email, phone}]}",
                                 errors=[{"field": "contacts", "message": "must be a list"}])
        if len(items) > MAX_CONTACTS:
            raise BadRequestData(f"at most {MAX_CONTACTS} contacts", errors=[
                {"field": "contacts", "message": f"at most {MAX_CONTACTS}"}])
        errors: list[dict[str, str]] = []
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        now = clock.now()
        for i, item in enumerate(items):
            where = f"contacts[{i}]"
            if not isinstance(item, dict):
                errors.append({"field": where, "message": "must be an object {userId, role, email, phone}"})
                continue
            user_id, role = item.get("userId"), item.get("role", "staff")
            email, phone = item.get("email"), item.get("phone")
            if not isinstance(user_id, str) or not 1 <= len(user_id.strip()) <= 128:
                errors.append({"field": f"{where}.userId", "message": "required, 1-128 characters"})
                continue
            user_id = user_id.strip()
            if user_id in seen:
                errors.append({"field": f"{where}.userId", "message": f"{user_id!r} is listed twice"})
                continue
            seen.add(user_id)
            if role not in CONTACT_ROLES:
                errors.append({"field": f"{where}.role", "message": f"one of {', '.join(CONTACT_ROLES)}"})
            if email is not None and (not isinstance(email, str) or not _EMAIL.match(email.strip())):
                errors.append({"field": f"{where}.email", "message": "not an e-mail address"})
            if phone is not None and (not isinstance(phone, str) or not _PHONE.match(phone.strip())):
                errors.append({"field": f"{where}.phone", "message": "not a phone number"})
            rows.append({"id": uuid.uuid4().hex, "tenant": tenant, "department": department, "user_id": user_id,
                         "role": role, "email": self.keyring.encrypt(email.strip()) if isinstance(email, str) else None,
                         "phone": self.keyring.encrypt(phone.strip()) if isinstance(phone, str) else None,
                         "updated_at": now})
        if errors:
            raise BadRequestData("; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors)
        async with self._write() as conn:
            await conn.execute(delete(contacts).where(contacts.c.tenant == tenant,
                                                      contacts.c.department == department))
            if rows:
                await conn.execute(contacts.insert(), rows)
        return await self.contacts(tenant, department)

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
        await self._steps.stop([self._task])
        self._task = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
            self._wake.clear()
            try:
                await self._steps.step(self.run_once())
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again on the next tick
                log.exception("notification outbox run failed")
