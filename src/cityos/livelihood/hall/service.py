"""The service hall: groups, windows, tickets, calling, and the wait each ticket can expect."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, time, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.db import WritingService
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.messages import city_zone
from cityos.livelihood.hall import planning
from cityos.livelihood.hall.models import CALLED, CHANNELS, DONE, NO_SHOW, SERVING, WAITING, groups, tickets, windows
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import require_allowed

DEFAULT_HANDLING_MINUTES = 6.0
HANDLING_SAMPLE = 50
MAX_WINDOWS_PER_HALL = 200
NUMBER_RETRIES = 5


def check(principal: Principal | None, action: str, tenant: str, department: str | None = None,
          owner: str | None = None) -> None:
    require_allowed(principal, action, Resource("hall", tenant, department=department, owner=owner))


def city_day(moment: datetime) -> str:
    return moment.astimezone(city_zone()).date().isoformat()


def ticket_view(row: Any, *, personal: bool) -> dict[str, Any]:
    def at(value: datetime | None) -> str | None:
        return clock.iso(clock.as_utc(value)) if value is not None else None
    view = {"id": row.id, "hall": row.hall, "group": row.queue, "issuedFor": row.group_code, "number": row.number,
            "channel": row.channel,
            "status": row.status, "window": row.window, "taken": at(row.taken_at), "called": at(row.called_at),
            "started": at(row.started_at), "finished": at(row.finished_at), "transfers": row.transfers}
    if personal:
        view["person"] = row.person
    return view


def text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{name} must be a non-empty string of at most {limit} characters")
    return value.strip()


class HallService(WritingService):
    # ------------------------------------------------------------------ set-up (staff)

    async def define_group(self, principal: Principal | None, tenant: str, hall: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        code, name = text(body, "code", 8).upper(), text(body, "name", 128)
        if not code.isalnum():
            raise BadRequestData("code must be letters or digits (it prefixes ticket numbers)")
        department = body.get("department") or (principal.department if principal else None)
        check(principal, "hall.operate", tenant, department)
        async with self._write() as conn:
            known = (await conn.execute(select(groups.c.code).where(
                groups.c.tenant == tenant, groups.c.hall == hall, groups.c.code == code))).first()
            if known is not None:
                raise Conflict(f"group {code} exists in hall {hall}")
            await conn.execute(groups.insert().values(tenant=tenant, hall=hall, code=code, name=name,
                                                      department=department))
        return {"hall": hall, "code": code, "name": name, "department": department}

    async def _groups(self, conn: AsyncConnection, tenant: str, hall: str) -> dict[str, Any]:
        rows = (await conn.execute(select(groups).where(groups.c.tenant == tenant, groups.c.hall == hall))).all()
        return {row.code: row for row in rows}

    async def open_window(self, principal: Principal | None, tenant: str, hall: str, number: int,
                          body: dict[str, Any]) -> dict[str, Any]:
        skills = body.get("skills")
        if not isinstance(skills, list) or not skills or not all(isinstance(s, str) for s in skills):
            raise BadRequestData("skills must be a non-empty list of group codes")
        if not 1 <= number <= MAX_WINDOWS_PER_HALL:
            raise BadRequestData(f"window numbers run from 1 to {MAX_WINDOWS_PER_HALL}")
        department = principal.department if principal else None
        check(principal, "hall.operate", tenant, department)
        async with self._write() as conn:
            known_groups = await self._groups(conn, tenant, hall)
            unknown = sorted({s.upper() for s in skills} - set(known_groups))
            if unknown:
                raise BadRequestData(f"unknown service group(s) {', '.join(unknown)} in hall {hall}")
            values = {"skills": sorted({s.upper() for s in skills}), "open": True,
                      "staff": principal.id if principal else None, "department": department}
            changed = await conn.execute(update(windows).where(
                windows.c.tenant == tenant, windows.c.hall == hall, windows.c.number == number).values(**values))
            if changed.rowcount == 0:
                await conn.execute(windows.insert().values(tenant=tenant, hall=hall, number=number, **values))
        return {"hall": hall, "number": number, **values}

    async def close_window(self, principal: Principal | None, tenant: str, hall: str, number: int) -> dict[str, Any]:
        async with self._write() as conn:
            window = await self._window(conn, tenant, hall, number)
            check(principal, "hall.operate", tenant, window.department)
            await conn.execute(update(windows).where(windows.c.tenant == tenant, windows.c.hall == hall,
                                                     windows.c.number == number).values(open=False))
        return {"hall": hall, "number": number, "open": False}

    async def _window(self, conn: AsyncConnection, tenant: str, hall: str, number: int) -> Any:
        row = (await conn.execute(select(windows).where(windows.c.tenant == tenant, windows.c.hall == hall,
                                                        windows.c.number == number))).first()
        if row is None:
            raise ResourceNotFound(f"no window {number} in hall {hall}")
        return row

    # ------------------------------------------------------------------ tickets

    async def take_ticket(self, principal: Principal | None, tenant: str, hall: str, group: str,
                          channel: str) -> dict[str, Any]:
        """A ticket from the web (the citizen's own), the kiosk or the desk (hall staff)."""
        if channel not in CHANNELS:
            raise BadRequestData(f"channel must be one of {', '.join(CHANNELS)}")
        if channel == "online":
            if principal is None:
                check(principal, "hall.ticket", tenant)
            assert principal is not None
            check(principal, "hall.ticket", tenant, owner=principal.id)
        else:
            check(principal, "hall.operate", tenant, principal.department if principal else None)
        group = group.upper()
        for _ in range(NUMBER_RETRIES):
            try:
                async with self._write() as conn:
                    row = await self._new_ticket(conn, tenant, hall, group, channel,
                                                 principal.id if channel == "online" and principal else None)
                break
            except IntegrityError:
                continue  # another process took the same number at the same moment: take the next
        else:
            raise Conflict("the ticket machine is busy; try again")
        view = ticket_view(SimpleNamespace(**row), personal=True)
        view["prediction"] = await self.prediction(tenant, hall, row["id"])
        return view

    async def _new_ticket(self, conn: AsyncConnection, tenant: str, hall: str, group: str, channel: str,
                          person: str | None) -> dict[str, Any]:
        known = await self._groups(conn, tenant, hall)
        if group not in known:
            raise ResourceNotFound(f"no service group {group} in hall {hall}")
        open_windows = await self._open_windows(conn, tenant, hall, group)
        if not open_windows:
            raise Conflict(f"no window serves {known[group].name} now; please come back in opening hours")
        if person is not None:
            held = (await conn.execute(select(tickets.c.number).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.person == person,
                tickets.c.status.in_((WAITING, CALLED))))).first()
            if held is not None:
                raise Conflict(f"you already hold ticket {held.number} in this hall")
        now = clock.now()
        day = city_day(now)
        last = (await conn.execute(select(func.max(tickets.c.seq)).where(
            tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.day == day,
            tickets.c.group_code == group))).scalar_one()
        seq = (last or 0) + 1
        row = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "hall": hall, "group_code": group, "queue": group,
               "day": day, "seq": seq, "number": f"{group}{seq:03d}", "channel": channel, "person": person,
               "status": WAITING, "window": None, "taken_at": now, "called_at": None, "started_at": None,
               "finished_at": None, "transfers": 0}
        await conn.execute(tickets.insert().values(**row))
        return row

    async def _open_windows(self, conn: AsyncConnection, tenant: str, hall: str, group: str) -> list[int]:
        rows = (await conn.execute(select(windows.c.number, windows.c.skills).where(
            windows.c.tenant == tenant, windows.c.hall == hall, windows.c.open.is_(True)))).all()
        return [row.number for row in rows if group in row.skills]

    async def _ticket(self, conn: AsyncConnection, tenant: str, ticket_id: str) -> Any:
        row = (await conn.execute(select(tickets).where(tickets.c.tenant == tenant, tickets.c.id == ticket_id))).first()
        if row is None:
            raise ResourceNotFound(f"no ticket {ticket_id!r}")
        return row

    async def ticket(self, principal: Principal | None, tenant: str, ticket_id: str) -> dict[str, Any]:
        """A ticket and its predicted wait: its holder, or hall staff (anyone else gets 404, not a hint)."""
        async with self.engine.connect() as conn:
            row = await self._ticket(conn, tenant, ticket_id)
        staff = bool(authorize(principal, "hall.operate", Resource("hall", tenant,
                                                                    department=principal.department
                                                                    if principal else None)))
        if not staff and (principal is None or row.person != principal.id):
            raise ResourceNotFound(f"no ticket {ticket_id!r}")
        view = ticket_view(row, personal=True)
        if row.status == WAITING:
            view["prediction"] = await self.prediction(tenant, row.hall, ticket_id)
        return view

    async def my_tickets(self, principal: Principal | None, tenant: str, hall: str) -> list[dict[str, Any]]:
        """The caller's own online tickets of today in this hall, newest first; a waiting one with its
        predicted wait, computed again at each read (the citizen's page polls it)."""
        check(principal, "hall.ticket", tenant, owner=principal.id if principal else None)
        assert principal is not None
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(tickets).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.person == principal.id,
                tickets.c.day == city_day(clock.now())).order_by(tickets.c.taken_at.desc()).limit(20))).all()
        out = []
        for row in rows:
            view = ticket_view(row, personal=False)
            if row.status == WAITING:
                view["prediction"] = await self.prediction(tenant, hall, row.id)
            out.append(view)
        return out

    async def window_state(self, principal: Principal | None, tenant: str, hall: str,
                           number: int) -> dict[str, Any]:
        """A window's desk view: open or not, what it serves, its current ticket, and today's counts."""
        async with self.engine.connect() as conn:
            window = await self._window(conn, tenant, hall, number)
            check(principal, "hall.operate", tenant, window.department)
            current = (await conn.execute(select(tickets).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.window == number,
                tickets.c.status.in_((CALLED, SERVING))))).first()
            counts: dict[str, int] = dict((await conn.execute(select(tickets.c.status, func.count()).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.window == number,
                tickets.c.day == city_day(clock.now()), tickets.c.status.in_((DONE, NO_SHOW)))
                .group_by(tickets.c.status))).all())
            waiting = (await conn.execute(select(func.count()).select_from(tickets).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.status == WAITING,
                tickets.c.queue.in_(list(window.skills))))).scalar_one()
        return {"hall": hall, "number": number, "open": window.open, "skills": list(window.skills),
                "current": ticket_view(current, personal=False) if current is not None else None,
                "waiting": waiting, "doneToday": counts.get(DONE, 0), "noShowsToday": counts.get(NO_SHOW, 0)}

    async def call_next(self, principal: Principal | None, tenant: str, hall: str, number: int) -> dict[str, Any]:
        """The window calls the longest-waiting ticket among the groups it serves."""
        async with self._write() as conn:
            window = await self._window(conn, tenant, hall, number)
            check(principal, "hall.operate", tenant, window.department)
            if not window.open:
                raise Conflict(f"window {number} is closed")
            current = (await conn.execute(select(tickets.c.number).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.window == number,
                tickets.c.status.in_((CALLED, SERVING))))).first()
            if current is not None:
                raise Conflict(f"window {number} still has ticket {current.number}: finish it, mark a no-show or "
                               f"transfer it first")
            candidates = (await conn.execute(select(tickets.c.id).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.status == WAITING,
                tickets.c.queue.in_(list(window.skills))).order_by(tickets.c.taken_at, tickets.c.id)
                .limit(20))).scalars().all()
            now = clock.now()
            for ticket_id in candidates:
                called = await conn.execute(update(tickets).where(
                    tickets.c.tenant == tenant, tickets.c.id == ticket_id, tickets.c.status == WAITING)
                    .values(status=CALLED, window=number, called_at=now))
                if called.rowcount == 1:
                    return ticket_view(await self._ticket(conn, tenant, ticket_id), personal=False)
        raise ResourceNotFound(f"nobody is waiting for window {number}")

    async def advance(self, principal: Principal | None, tenant: str, ticket_id: str, to: str,
                      group: str | None = None) -> dict[str, Any]:
        """serving (the client sat down), done, noshow, or transfer to another group's queue."""
        async with self._write() as conn:
            row = await self._ticket(conn, tenant, ticket_id)
            department = None
            if row.window is not None:
                department = (await self._window(conn, tenant, row.hall, row.window)).department
            check(principal, "hall.operate", tenant, department)
            now = clock.now()
            allowed = {SERVING: (CALLED,), DONE: (SERVING,), NO_SHOW: (CALLED,), "transfer": (CALLED, SERVING)}
            if to not in allowed:
                raise BadRequestData("to must be serving, done, noshow or transfer")
            if row.status not in allowed[to]:
                raise Conflict(f"ticket {row.number} is {row.status}; it cannot go to {to}")
            values: dict[str, Any]
            if to == SERVING:
                values = {"status": SERVING, "started_at": now}
            elif to == DONE:
                values = {"status": DONE, "finished_at": now}
            elif to == NO_SHOW:
                values = {"status": NO_SHOW, "finished_at": now}
            else:
                target = (group or "").upper()
                if target not in await self._groups(conn, tenant, row.hall):
                    raise BadRequestData(f"no service group {target!r} to transfer to")
                if not await self._open_windows(conn, tenant, row.hall, target):
                    raise Conflict(f"no window serves group {target} now")
                # The ticket keeps its original time: a transferred client does not queue again from the back.
                values = {"status": WAITING, "queue": target, "window": None, "called_at": None,
                          "started_at": None, "transfers": row.transfers + 1}
            changed = await conn.execute(update(tickets).where(tickets.c.tenant == tenant, tickets.c.id == ticket_id,
                                                               tickets.c.status == row.status).values(**values))
            if changed.rowcount != 1:
                raise Conflict("the ticket changed meanwhile; reload")
            return ticket_view(await self._ticket(conn, tenant, ticket_id), personal=False)

    # ------------------------------------------------------------------ predictions and the call screen

    async def handling_minutes(self, conn: AsyncConnection, tenant: str, hall: str, group: str) -> float:
        rows = (await conn.execute(select(tickets.c.started_at, tickets.c.finished_at).where(
            tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.queue == group,
            tickets.c.status == DONE, tickets.c.started_at.is_not(None))
            .order_by(tickets.c.finished_at.desc()).limit(HANDLING_SAMPLE))).all()
        durations = [(clock.as_utc(r.finished_at) - clock.as_utc(r.started_at)).total_seconds() / 60 for r in rows]
        return sum(durations) / len(durations) if durations else DEFAULT_HANDLING_MINUTES

    async def prediction(self, tenant: str, hall: str, ticket_id: str) -> dict[str, Any]:
        """Expected wait: the tickets ahead plus this one, served by the group's open windows at the group's
        recent mean handling time ((ahead + 1) × handling ÷ windows)."""
        async with self.engine.connect() as conn:
            row = await self._ticket(conn, tenant, ticket_id)
            ahead = (await conn.execute(select(func.count()).select_from(tickets).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.queue == row.queue,
                tickets.c.status == WAITING, tickets.c.taken_at < row.taken_at))).scalar_one()
            open_windows = len(await self._open_windows(conn, tenant, hall, row.queue))
            handling = await self.handling_minutes(conn, tenant, hall, row.queue)
        minutes = (ahead + 1) * handling / open_windows if open_windows else None
        return {"ahead": ahead, "windows": open_windows, "handlingMinutes": round(handling, 1),
                "waitMinutes": round(minutes, 1) if minutes is not None else None,
                "at": clock.iso(clock.now())}

    async def board(self, principal: Principal | None, tenant: str, hall: str) -> dict[str, Any]:
        """The call screen (叫号屏): the latest calls and each queue's length and expected wait. No personal data."""
        check(principal, "hall.read", tenant)
        async with self.engine.connect() as conn:
            known = await self._groups(conn, tenant, hall)
            if not known:
                raise ResourceNotFound(f"no hall {hall!r}")
            calls = (await conn.execute(select(tickets).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.called_at.is_not(None),
                tickets.c.day == city_day(clock.now())).order_by(tickets.c.called_at.desc()).limit(10))).all()
            queues = []
            for code, group in sorted(known.items()):
                waiting = (await conn.execute(select(func.count()).select_from(tickets).where(
                    tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.queue == code,
                    tickets.c.status == WAITING))).scalar_one()
                open_windows = await self._open_windows(conn, tenant, hall, code)
                handling = await self.handling_minutes(conn, tenant, hall, code)
                queues.append({"group": code, "name": group.name, "waiting": waiting, "windows": open_windows,
                               "waitMinutes": round(waiting * handling / len(open_windows), 1)
                               if open_windows else None})
        return {"hall": hall, "calls": [{"number": r.number, "window": r.window, "status": r.status,
                                         "called": clock.iso(clock.as_utc(r.called_at))} for r in calls],
                "queues": queues}

    # ------------------------------------------------------------------ planning

    async def demand_by_hour(self, tenant: str, hall: str, days: int = 20, opening: int = 9,
                             closing: int = 17) -> list[float]:
        """Mean tickets per opening hour over the last `days` working days that had tickets."""
        since = clock.now() - timedelta(days=days * 7 // 5 + 2)
        async with self.engine.connect() as conn:
            taken = (await conn.execute(select(tickets.c.taken_at).where(
                tickets.c.tenant == tenant, tickets.c.hall == hall, tickets.c.taken_at >= since))).scalars().all()
        counts = [0] * (closing - opening)
        seen_days: set[date] = set()
        for moment in taken:
            local = clock.as_utc(moment).astimezone(city_zone())
            if opening <= local.hour < closing:
                counts[local.hour - opening] += 1
                seen_days.add(local.date())
        return [count / max(1, len(seen_days)) for count in counts]

    async def plan(self, principal: Principal | None, tenant: str, hall: str, body: dict[str, Any]) -> dict[str, Any]:
        """Windows per hour for a day: from the demand given, or the hall's own history."""
        check(principal, "hall.operate", tenant, principal.department if principal else None)
        demand = body.get("arrivalsPerHour")
        if demand is None:
            demand = await self.demand_by_hour(tenant, hall)
        if (not isinstance(demand, list) or not 1 <= len(demand) <= 24
                or not all(isinstance(x, int | float) and 0 <= x <= 2000 for x in demand)):
            raise BadRequestData("arrivalsPerHour must be 1–24 numbers between 0 and 2000")
        handling = body.get("handlingMinutes", DEFAULT_HANDLING_MINUTES)
        if not isinstance(handling, int | float) or not 0.5 <= handling <= 120:
            raise BadRequestData("handlingMinutes must be between 0.5 and 120")
        rates = [float(x) for x in demand]
        if not any(rates):
            raise BadRequestData("no demand to plan for")
        opening = body.get("opening", 9)
        if not isinstance(opening, int) or not 0 <= opening <= 23:
            raise BadRequestData("opening must be an hour 0–23")
        planned, result = await asyncio.to_thread(planning.plan_day, rates, float(handling))
        static, static_result = await asyncio.to_thread(planning.static_staffing, rates, float(handling))
        return {"hall": hall, "handlingMinutes": handling,
                "hours": [{"hour": time(opening + h).isoformat("minutes") if opening + h < 24 else None,
                           "arrivals": rates[h], "windows": planned[h],
                           "erlangC": planning.windows_for(rates[h], float(handling)),
                           "utilisation": round(result.utilisation_by_hour[h], 3)}
                          for h in range(len(rates))],
                "simulated": {"meanWait": round(result.mean_wait, 2), "p90Wait": round(result.p90_wait, 2),
                              "windowHours": result.window_hours},
                "static": {"windows": static, "meanWait": round(static_result.mean_wait, 2),
                           "p90Wait": round(static_result.p90_wait, 2), "windowHours": static_result.window_hours}}
