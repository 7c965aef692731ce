"""Appointments: schedules, slots, bookings, waiting lists, reminders and the no-show rule.

Capacity is exact under concurrency: a booking first takes a place with one conditional UPDATE
(`booked < capacity`) and only then writes the appointment, in the same transaction; a second booking
of the same person for the same slot, or any error after the UPDATE, rolls the place back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import WritingService
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.messages import city_zone, zone_name
from cityos.livelihood.appointments.models import ACTIVE, SITE_KINDS, appointments, schedules, slots, waitlist
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden, require_allowed

MAX_SLOTS_PER_REQUEST = 2000
MAX_CAPACITY = 500
REMINDER_AHEAD = timedelta(hours=24)
# Fair use (爽约规则): this many no-shows within the window suspend online booking for SUSPENSION.
NO_SHOW_LIMIT = 3
NO_SHOW_WINDOW = timedelta(days=90)
SUSPENSION = timedelta(days=30)


class Notifications(Protocol):
    """What this domain needs of `services/notify` (in-app message; e-mail / SMS when addresses are known)."""

    async def notify(self, tenant: str, user_id: str, subject: str, body: str, *, email: str | None = None,
                     phone: str | None = None, link: str | None = None,
                     conn: AsyncConnection | None = None) -> dict[str, Any]: ...

    def wake(self) -> None: ...


class Audit(Protocol):
    async def append_in(self, conn: AsyncConnection, events: list[AuditEvent]) -> list[int]: ...


class SlotFull(Conflict):
    title = "Slot full"


class BookingSuspended(Forbidden):
    title = "Booking suspended (爽约次数过多)"


@dataclass(frozen=True)
class SlotSeries:
    """Slots to create: every `minutes` from `first` to `last` (city-zone times) on each day of [from, to]."""

    day_from: date
    day_to: date
    first: time
    last: time
    minutes: int
    capacity: int
    weekdays_only: bool = True


def check(principal: Principal | None, action: str, tenant: str, department: str | None = None,
          owner: str | None = None) -> None:
    require_allowed(principal, action, Resource("appointment", tenant, department=department, owner=owner))


def is_staff(principal: Principal | None, tenant: str, department: str | None) -> bool:
    return bool(authorize(principal, "appointment.manage", Resource("appointment", tenant, department=department)))


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def schedule_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "site": row.site, "service": row.service, "actor": row.actor,
            "department": row.department, "active": row.active}


def slot_view(row: Any) -> dict[str, Any]:
    free = 0 if row.blocked else max(0, row.capacity - row.booked)
    return {"id": row.id, "scheduleId": row.schedule_id, "start": clock.iso(clock.as_utc(row.start)),
            "end": clock.iso(clock.as_utc(row.end)), "capacity": row.capacity, "booked": row.booked, "free": free,
            "status": "busy-unavailable" if row.blocked else ("free" if free else "busy")}


def appointment_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "slotId": row.slot_id, "scheduleId": row.schedule_id, "person": row.person,
            "status": row.status, "start": clock.iso(clock.as_utc(row.start)), "note": row.note,
            "fromWaitlist": row.from_waitlist, "created": clock.iso(clock.as_utc(row.created_at))}


def parse_series(body: dict[str, Any]) -> SlotSeries:
    try:
        series = SlotSeries(date.fromisoformat(str(body["from"])), date.fromisoformat(str(body["to"])),
                            time.fromisoformat(str(body["firstStart"])), time.fromisoformat(str(body["lastStart"])),
                            int(body.get("minutes", 30)), int(body.get("capacity", 1)),
                            bool(body.get("weekdaysOnly", True)))
    except KeyError as exc:
        raise BadRequestData(f"missing member {exc.args[0]!r} (from, to, firstStart, lastStart)") from exc
    except (TypeError, ValueError) as exc:
        raise BadRequestData(f"bad slot series: {exc}") from exc
    if not 5 <= series.minutes <= 480:
        raise BadRequestData("minutes must be between 5 and 480")
    if not 1 <= series.capacity <= MAX_CAPACITY:
        raise BadRequestData(f"capacity must be between 1 and {MAX_CAPACITY}")
    if series.day_to < series.day_from or series.last < series.first:
        raise BadRequestData("the series ends before it starts")
    return series


def series_starts(series: SlotSeries) -> list[datetime]:
    """The UTC start of every slot of the series (city-zone wall times)."""
    zone = city_zone()
    starts: list[datetime] = []
    day = series.day_from
    while day <= series.day_to:
        if not (series.weekdays_only and day.weekday() >= 5):
            moment = datetime.combine(day, series.first, tzinfo=zone)
            last = datetime.combine(day, series.last, tzinfo=zone)
            while moment <= last:
                starts.append(moment.astimezone(UTC))
                moment += timedelta(minutes=series.minutes)
        day += timedelta(days=1)
        if len(starts) > MAX_SLOTS_PER_REQUEST:
            raise BadRequestData(f"at most {MAX_SLOTS_PER_REQUEST} slots per request")
    return starts


class AppointmentService(WritingService):
    def __init__(self, engine: AsyncEngine, write_lock: Any, notifications: Notifications | None,
                 audit: Audit | None) -> None:
        super().__init__(engine, write_lock)
        self.notifications = notifications
        self.audit = audit

    async def _audit(self, conn: AsyncConnection, principal: Principal | None, action: str, resource: str,
                     tenant: str, **detail: Any) -> None:
        if self.audit is not None:
            await self.audit.append_in(conn, [AuditEvent.of(principal, action, resource, tenant=tenant, **detail)])

    # ------------------------------------------------------------------ schedules and slots (staff)

    async def create_schedule(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, site, service = body.get("kind"), body.get("site"), body.get("service")
        department = body.get("department") or (principal.department if principal else None)
        check(principal, "appointment.manage", tenant, department)
        if kind not in SITE_KINDS:
            raise BadRequestData(f"kind must be one of {', '.join(SITE_KINDS)}")
        for name, value in (("site", site), ("service", service)):
            if not isinstance(value, str) or not value.strip() or len(value) > 256:
                raise BadRequestData(f"{name} must be a non-empty string of at most 256 characters")
        actor = body.get("actor")
        if actor is not None and (not isinstance(actor, str) or len(actor) > 256):
            raise BadRequestData("actor must be a string of at most 256 characters")
        assert isinstance(site, str) and isinstance(service, str)
        row = {"tenant": tenant, "id": new_id(), "kind": kind, "site": site.strip(), "service": service.strip(),
               "actor": actor, "department": department, "active": True, "created_at": clock.now()}
        async with self._write() as conn:
            await conn.execute(schedules.insert().values(**row))
            await self._audit(conn, principal, "appointment.schedule.create", row["id"], tenant, site=row["site"])
        return schedule_view(SimpleNamespace(**row))

    async def _schedule(self, conn: AsyncConnection, tenant: str, schedule_id: str) -> Any:
        row = (await conn.execute(select(schedules).where(schedules.c.tenant == tenant,
                                                          schedules.c.id == schedule_id))).first()
        if row is None:
            raise ResourceNotFound(f"no schedule {schedule_id!r}")
        return row

    async def add_slots(self, principal: Principal | None, tenant: str, schedule_id: str,
                        body: dict[str, Any]) -> dict[str, Any]:
        series = parse_series(body)
        starts = series_starts(series)
        if not starts:
            raise BadRequestData("the series has no slot (weekend only?)")
        async with self._write() as conn:
            schedule = await self._schedule(conn, tenant, schedule_id)
            check(principal, "appointment.manage", tenant, schedule.department)
            known = set((await conn.execute(select(slots.c.start).where(
                slots.c.tenant == tenant, slots.c.schedule_id == schedule_id,
                slots.c.start >= starts[0], slots.c.start <= starts[-1]))).scalars())
            known_utc = {clock.as_utc(moment) for moment in known}
            rows = [{"tenant": tenant, "id": new_id(), "schedule_id": schedule_id, "start": start,
                     "end": start + timedelta(minutes=series.minutes), "capacity": series.capacity, "booked": 0,
                     "blocked": False} for start in starts if start not in known_utc]
            if rows:
                await conn.execute(slots.insert(), rows)
            await self._audit(conn, principal, "appointment.slots.create", schedule_id, tenant, created=len(rows))
        return {"created": len(rows), "skipped": len(starts) - len(rows)}

    async def list_schedules(self, principal: Principal | None, tenant: str, kind: str | None = None,
                             site: str | None = None) -> list[dict[str, Any]]:
        check(principal, "appointment.read", tenant)
        query = select(schedules).where(schedules.c.tenant == tenant, schedules.c.active.is_(True))
        if kind:
            query = query.where(schedules.c.kind == kind)
        if site:
            query = query.where(schedules.c.site == site)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(schedules.c.site, schedules.c.service).limit(1000))).all()
        return [schedule_view(row) for row in rows]

    async def schedule(self, principal: Principal | None, tenant: str, schedule_id: str) -> dict[str, Any]:
        check(principal, "appointment.read", tenant)
        async with self.engine.connect() as conn:
            return schedule_view(await self._schedule(conn, tenant, schedule_id))

    async def list_slots(self, principal: Principal | None, tenant: str, *, schedule_id: str | None = None,
                         start_from: datetime | None = None, start_to: datetime | None = None,
                         only_free: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        check(principal, "appointment.read", tenant)
        query = select(slots).where(slots.c.tenant == tenant)
        if schedule_id:
            query = query.where(slots.c.schedule_id == schedule_id)
        if start_from:
            query = query.where(slots.c.start >= start_from)
        if start_to:
            query = query.where(slots.c.start < start_to)
        if only_free:
            query = query.where(slots.c.booked < slots.c.capacity, slots.c.blocked.is_(False),
                                slots.c.start > clock.now())
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(slots.c.start, slots.c.id).limit(limit))).all()
        return [slot_view(row) for row in rows]

    async def slot(self, principal: Principal | None, tenant: str, slot_id: str) -> dict[str, Any]:
        check(principal, "appointment.read", tenant)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(slots).where(slots.c.tenant == tenant, slots.c.id == slot_id))).first()
        if row is None:
            raise ResourceNotFound(f"no slot {slot_id!r}")
        return slot_view(row)

    # ------------------------------------------------------------------ booking (citizens)

    async def _suspended_until(self, conn: AsyncConnection, tenant: str, person: str) -> datetime | None:
        since = clock.now() - NO_SHOW_WINDOW
        misses = (await conn.execute(select(appointments.c.start).where(
            appointments.c.tenant == tenant, appointments.c.person == person, appointments.c.status == "noshow",
            appointments.c.start >= since).order_by(appointments.c.start.desc()))).scalars().all()
        if len(misses) < NO_SHOW_LIMIT:
            return None
        until = clock.as_utc(misses[0]) + SUSPENSION
        return until if until > clock.now() else None

    async def _take_place(self, conn: AsyncConnection, tenant: str, slot_id: str, person: str,
                          *, from_waitlist: bool = False, note: str | None = None) -> dict[str, Any]:
        """Take one place of the slot for `person` inside the caller's transaction."""
        now = clock.now()
        taken = await conn.execute(update(slots).where(
            slots.c.tenant == tenant, slots.c.id == slot_id, slots.c.booked < slots.c.capacity,
            slots.c.blocked.is_(False), slots.c.start > now).values(booked=slots.c.booked + 1))
        if taken.rowcount != 1:
            slot = (await conn.execute(select(slots).where(slots.c.tenant == tenant, slots.c.id == slot_id))).first()
            if slot is None:
                raise ResourceNotFound(f"no slot {slot_id!r}")
            if clock.as_utc(slot.start) <= now:
                raise BadRequestData("the slot has already started; choose a later one")
            if slot.blocked:
                raise SlotFull("the slot is not available")
            raise SlotFull("the slot is full; join the waiting list for that day instead")
        slot = (await conn.execute(select(slots).where(slots.c.tenant == tenant, slots.c.id == slot_id))).one()
        duplicate = (await conn.execute(select(appointments.c.id).where(
            appointments.c.tenant == tenant, appointments.c.slot_id == slot_id, appointments.c.person == person,
            appointments.c.status == ACTIVE))).first()
        if duplicate is not None:
            raise Conflict(f"you already hold appointment {duplicate.id} in this slot")
        row = {"tenant": tenant, "id": new_id(), "slot_id": slot_id, "schedule_id": slot.schedule_id,
               "person": person, "status": ACTIVE, "start": clock.as_utc(slot.start), "note": note,
               "reminded_at": None, "from_waitlist": from_waitlist, "created_at": now, "updated_at": now}
        await conn.execute(appointments.insert().values(**row))
        return row

    async def book(self, principal: Principal | None, tenant: str, slot_id: str,
                   note: str | None = None) -> dict[str, Any]:
        if principal is None:
            check(principal, "appointment.book", tenant)
        assert principal is not None
        check(principal, "appointment.book", tenant, owner=principal.id)
        if note is not None and (not isinstance(note, str) or len(note) > 1000):
            raise BadRequestData("note must be a string of at most 1000 characters")
        async with self._write() as conn:
            until = await self._suspended_until(conn, tenant, principal.id)
            if until is not None:
                raise BookingSuspended(f"{NO_SHOW_LIMIT} missed appointments in {NO_SHOW_WINDOW.days} days: online "
                                       f"booking is suspended until {clock.iso(until)}")
            row = await self._take_place(conn, tenant, slot_id, principal.id, note=note)
            await self._audit(conn, principal, "appointment.book", row["id"], tenant, slot=slot_id)
        return appointment_view(SimpleNamespace(**row))

    async def _appointment(self, conn: AsyncConnection, tenant: str, appointment_id: str) -> Any:
        row = (await conn.execute(select(appointments).where(appointments.c.tenant == tenant,
                                                             appointments.c.id == appointment_id))).first()
        if row is None:
            raise ResourceNotFound(f"no appointment {appointment_id!r}")
        return row

    async def _check_owner_or_staff(self, conn: AsyncConnection, principal: Principal | None, tenant: str,
                                    row: Any) -> None:
        if principal is not None and row.person == principal.id:
            return
        schedule = await self._schedule(conn, tenant, row.schedule_id)
        check(principal, "appointment.manage", tenant, schedule.department)

    async def appointment(self, principal: Principal | None, tenant: str, appointment_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._appointment(conn, tenant, appointment_id)
            await self._check_owner_or_staff(conn, principal, tenant, row)
        return appointment_view(row)

    async def mine(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        if principal is None:
            check(principal, "appointment.book", tenant)
        assert principal is not None
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(appointments).where(
                appointments.c.tenant == tenant, appointments.c.person == principal.id)
                .order_by(appointments.c.start.desc()).limit(200))).all()
        return [appointment_view(row) for row in rows]

    async def for_schedule(self, principal: Principal | None, tenant: str, schedule_id: str,
                           day: date | None = None) -> list[dict[str, Any]]:
        """A site's list of the day (staff of the schedule's department)."""
        async with self.engine.connect() as conn:
            schedule = await self._schedule(conn, tenant, schedule_id)
            check(principal, "appointment.manage", tenant, schedule.department)
            query = select(appointments).where(appointments.c.tenant == tenant,
                                               appointments.c.schedule_id == schedule_id)
            if day is not None:
                start = datetime.combine(day, time(0), tzinfo=city_zone()).astimezone(UTC)
                query = query.where(appointments.c.start >= start, appointments.c.start < start + timedelta(days=1))
            rows = (await conn.execute(query.order_by(appointments.c.start).limit(2000))).all()
        return [appointment_view(row) for row in rows]

    async def cancel(self, principal: Principal | None, tenant: str, appointment_id: str,
                     reason: str | None = None) -> dict[str, Any]:
        promoted: dict[str, Any] | None = None
        async with self._write() as conn:
            row = await self._appointment(conn, tenant, appointment_id)
            await self._check_owner_or_staff(conn, principal, tenant, row)
            if row.status != ACTIVE:
                raise Conflict(f"the appointment is {row.status}, not booked")
            await self._release(conn, tenant, row, "cancelled")
            await self._audit(conn, principal, "appointment.cancel", appointment_id, tenant,
                              reason=(reason or "")[:200])
            promoted = await self._promote(conn, tenant, row.slot_id, row.schedule_id, clock.as_utc(row.start))
        if promoted is not None and self.notifications is not None:
            self.notifications.wake()
        return {**appointment_view(row), "status": "cancelled",
                "promotedFromWaitlist": promoted["id"] if promoted else None}

    async def _release(self, conn: AsyncConnection, tenant: str, row: Any, status: str) -> None:
        await conn.execute(update(appointments).where(appointments.c.tenant == tenant, appointments.c.id == row.id)
                           .values(status=status, updated_at=clock.now()))
        await conn.execute(update(slots).where(slots.c.tenant == tenant, slots.c.id == row.slot_id,
                                               slots.c.booked > 0).values(booked=slots.c.booked - 1))

    async def _promote(self, conn: AsyncConnection, tenant: str, slot_id: str, schedule_id: str,
                       start: datetime) -> dict[str, Any] | None:
        """Give a freed place to the first person waiting for that day (their notice goes out with the commit)."""
        if start <= clock.now():
            return None
        day = start.astimezone(city_zone()).date().isoformat()
        waiting = (await conn.execute(select(waitlist).where(
            waitlist.c.tenant == tenant, waitlist.c.schedule_id == schedule_id, waitlist.c.day == day,
            waitlist.c.appointment_id.is_(None)).order_by(waitlist.c.created_at, waitlist.c.id))).all()
        for entry in waiting:
            try:
                async with conn.begin_nested():
                    row = await self._take_place(conn, tenant, slot_id, entry.person, from_waitlist=True)
            except (Conflict, BadRequestData):
                continue  # already holds that slot: the next one in line
            await conn.execute(update(waitlist).where(waitlist.c.tenant == tenant, waitlist.c.id == entry.id)
                               .values(appointment_id=row["id"]))
            await self._audit(conn, None, "appointment.promote", row["id"], tenant, waitlist=entry.id)
            if self.notifications is not None:
                await self.notifications.notify(
                    tenant, entry.person, "候补成功 Waiting list: you have an appointment",
                    f"您候补的预约已成功，时间 {start.astimezone(city_zone()):%Y-%m-%d %H:%M}。"
                    f" A place became free and is now yours.", conn=conn)
            return row
        return None

    async def reschedule(self, principal: Principal | None, tenant: str, appointment_id: str,
                         slot_id: str) -> dict[str, Any]:
        """Move a booking to another slot: the new place is taken before the old one is given up."""
        async with self._write() as conn:
            row = await self._appointment(conn, tenant, appointment_id)
            await self._check_owner_or_staff(conn, principal, tenant, row)
            if row.status != ACTIVE:
                raise Conflict(f"the appointment is {row.status}, not booked")
            if slot_id == row.slot_id:
                raise BadRequestData("that is the appointment's own slot")
            new = await self._take_place(conn, tenant, slot_id, row.person, note=row.note)
            await self._release(conn, tenant, row, "cancelled")
            await self._audit(conn, principal, "appointment.reschedule", new["id"], tenant, previous=row.id)
            await self._promote(conn, tenant, row.slot_id, row.schedule_id, clock.as_utc(row.start))
        if self.notifications is not None:
            self.notifications.wake()
        return {**appointment_view(SimpleNamespace(**new)), "replaces": row.id}

    async def join_waitlist(self, principal: Principal | None, tenant: str, schedule_id: str,
                            day: date) -> dict[str, Any]:
        if principal is None:
            check(principal, "appointment.book", tenant)
        assert principal is not None
        check(principal, "appointment.book", tenant, owner=principal.id)
        if day < clock.now().astimezone(city_zone()).date():
            raise BadRequestData("that day has passed")
        async with self._write() as conn:
            await self._schedule(conn, tenant, schedule_id)
            known = (await conn.execute(select(waitlist.c.id).where(
                waitlist.c.tenant == tenant, waitlist.c.schedule_id == schedule_id,
                waitlist.c.person == principal.id, waitlist.c.day == day.isoformat()))).first()
            if known is not None:
                raise Conflict(f"you are already waiting for {day.isoformat()} ({known.id})")
            row = {"tenant": tenant, "id": new_id(), "schedule_id": schedule_id, "person": principal.id,
                   "day": day.isoformat(), "created_at": clock.now(), "appointment_id": None}
            await conn.execute(waitlist.insert().values(**row))
            position = (await conn.execute(select(func.count()).select_from(waitlist).where(
                waitlist.c.tenant == tenant, waitlist.c.schedule_id == schedule_id,
                waitlist.c.day == day.isoformat(), waitlist.c.appointment_id.is_(None)))).scalar_one()
        return {"id": row["id"], "scheduleId": schedule_id, "day": row["day"], "position": position}

    async def mark(self, principal: Principal | None, tenant: str, appointment_id: str,
                   status: str) -> dict[str, Any]:
        """Staff record the outcome: fulfilled (came) or noshow (爽约, counts for the fair-use rule)."""
        if status not in ("fulfilled", "noshow"):
            raise BadRequestData("status must be fulfilled or noshow")
        async with self._write() as conn:
            row = await self._appointment(conn, tenant, appointment_id)
            schedule = await self._schedule(conn, tenant, row.schedule_id)
            check(principal, "appointment.manage", tenant, schedule.department)
            if row.status != ACTIVE:
                raise Conflict(f"the appointment is {row.status}, not booked")
            if status == "noshow" and clock.as_utc(row.start) > clock.now():
                raise BadRequestData("a no-show can be recorded only after the appointment's start")
            await conn.execute(update(appointments).where(appointments.c.tenant == tenant,
                                                          appointments.c.id == appointment_id)
                               .values(status=status, updated_at=clock.now()))
            await self._audit(conn, principal, f"appointment.{status}", appointment_id, tenant)
        return {**appointment_view(row), "status": status}

    # ------------------------------------------------------------------ reminders (scheduled)

    async def send_reminders(self) -> int:
        """Remind everyone whose appointment starts within REMINDER_AHEAD, once; returns how many."""
        if self.notifications is None:
            return 0
        now = clock.now()
        sent = 0
        async with self._write() as conn:
            due = (await conn.execute(select(appointments, schedules.c.site, schedules.c.service).join(
                schedules, and_(schedules.c.tenant == appointments.c.tenant,
                                schedules.c.id == appointments.c.schedule_id)).where(
                appointments.c.status == ACTIVE, appointments.c.reminded_at.is_(None),
                appointments.c.start > now, appointments.c.start <= now + REMINDER_AHEAD).limit(500))).all()
            for row in due:
                local = clock.as_utc(row.start).astimezone(city_zone())
                await self.notifications.notify(
                    row.tenant, row.person, f"预约提醒 Reminder: {row.site} {row.service}",
                    f"您预约了 {row.site}·{row.service}，时间 {local:%Y-%m-%d %H:%M}（{zone_name(local)}）。"
                    f"如不能前往请提前取消，爽约 {NO_SHOW_LIMIT} 次将暂停网上预约 {SUSPENSION.days} 天。"
                    f" Your appointment is at {local:%H:%M} on {local:%Y-%m-%d}; please cancel if you cannot come.",
                    conn=conn)
                await conn.execute(update(appointments).where(appointments.c.tenant == row.tenant,
                                                              appointments.c.id == row.id).values(reminded_at=now))
                sent += 1
        if sent:
            self.notifications.wake()
        return sent
