"""好差评: ratings of completed applications, satisfaction / NPS, and rectification (整改) tasks.

- Rateable applications come from ``services.application.changed`` events (`on_application_changed`).
- `submit`: score 1–5 and an optional comment, once per application, only when completed; a score
  of 1 or 2 opens a rectification task for the handling department in the same transaction.
- Rectification deadline: ``CITYOS_RECTIFICATION_DEADLINE`` = ``<n>wd`` (working days: the end of
  the n-th Chinese working day after the rating, China time, from `holidays` CN with its
  weekend make-up days) or ``<n>h`` (hours). Default ``5wd``.
- Satisfaction (`satisfaction`): per service and per department, count, mean score, satisfaction
  (% of 4–5), bad ratings (1–2), and an NPS-style score on the five-level scale: promoters score
  5, passives 4, detractors 1–3; NPS = % promoters − % detractors (−100…100).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import holidays
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc, as_utc_or_none, iso
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.events import Event, EventBus
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal
from cityos.services.ratings.models import applications, ratings, rectifications

log = logging.getLogger(__name__)
# Application statuses after which the applicant may rate: the services core finishes an
# application as approved or rejected (a rejection is rated too: 好差评 covers every outcome).
FINISHED = frozenset({"completed", "approved", "rejected"})

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")  # no daylight saving time
_DEADLINE = re.compile(r"^\s*(\d{1,4})\s*(wd|h)\s*$")
MAX_COMMENT = 1000
MAX_REPLY = 4000
TOPIC = "services.application.changed"

AuditSink = Callable[[AuditEvent], Awaitable[None]]
NotifySink = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class RatingSettings:
    deadline: str = field(default_factory=lambda: os.environ.get("CITYOS_RECTIFICATION_DEADLINE", "5wd"))
    bad_threshold: int = 2  # scores at or below open a rectification task

    def __post_init__(self) -> None:
        if not _DEADLINE.match(self.deadline):
            raise ValueError("CITYOS_RECTIFICATION_DEADLINE must be '<n>wd' (working days) or '<n>h' (hours)")


_CN_HOLIDAYS = holidays.country_holidays("CN")


def add_working_days(start: datetime, days: int) -> datetime:
    """The end (24:00 China time) of the `days`-th working day after `start`'s day."""
    day: date = start.astimezone(CHINA).date()
    remaining = days
    while remaining > 0:
        day += timedelta(days=1)
        if _CN_HOLIDAYS.is_working_day(day):
            remaining -= 1
    return datetime.combine(day + timedelta(days=1), time(0, 0), CHINA)


def deadline_after(start: datetime, spec: str) -> datetime:
    match = _DEADLINE.match(spec)
    if not match:
        raise ValueError(f"bad deadline {spec!r}")
    amount, unit = int(match.group(1)), match.group(2)
    # Stored timestamps are UTC (SQLite keeps no offset).
    return (add_working_days(start, amount) if unit == "wd" else start + timedelta(hours=amount)).astimezone(UTC)


def validate_score(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise BadRequestData("score must be an integer from 1 to 5")
    return value


def validate_comment(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_COMMENT:
        raise BadRequestData(f"comment must be a string of at most {MAX_COMMENT} characters")
    return value.strip() or None


def _text_or_none(value: Any, limit: int = 128) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def rating_out(row: Any) -> dict[str, Any]:
    return {"id": row.id, "applicationId": row.application_id, "serviceCode": row.service_code,
            "department": row.department, "score": row.score, "comment": row.comment,
            "createdAt": iso(as_utc(row.created_at))}


def rectification_out(row: Any, now: datetime) -> dict[str, Any]:
    deadline = as_utc(row.deadline)
    replied_at = as_utc_or_none(row.replied_at)
    return {"id": row.id, "ratingId": row.rating_id, "applicationId": row.application_id,
            "serviceCode": row.service_code, "department": row.department, "score": row.score,
            "comment": row.comment, "status": row.status, "deadline": iso(deadline),
            "overdue": row.status == "open" and now > deadline, "createdAt": iso(as_utc(row.created_at)),
            "reply": row.reply, "repliedBy": row.replied_by, "repliedAt": iso(replied_at) if replied_at else None,
            "repliedLate": replied_at is not None and replied_at > deadline}


def _stats(count: int, total: int, satisfied: int, promoters: int, detractors: int, bad: int) -> dict[str, Any]:
    if not count:
        return {"count": 0, "meanScore": None, "satisfaction": None, "nps": None, "badRatings": 0,
                "promoters": 0, "detractors": 0}
    return {"count": count, "meanScore": round(total / count, 2), "satisfaction": round(100 * satisfied / count, 1),
            "nps": round(100 * (promoters - detractors) / count, 1), "badRatings": bad, "promoters": promoters,
            "detractors": detractors}


_UPSERT_COLUMNS = ("tenant", "application_id", "service_code", "department", "applicant", "status", "completed_at",
                   "updated_at")
_PG_UPSERT = (f"INSERT INTO {applications.name} ({', '.join(_UPSERT_COLUMNS)}) "
              f"VALUES ({', '.join(f'${i}' for i in range(1, len(_UPSERT_COLUMNS) + 1))}) "
              f"ON CONFLICT (tenant, application_id) DO UPDATE SET "
              + ", ".join(f"{k} = EXCLUDED.{k}" for k in _UPSERT_COLUMNS[2:]))


class RatingService:
    def __init__(self, engine: AsyncEngine, bus: EventBus | None = None, settings: RatingSettings | None = None,
                 audit: AuditSink | None = None, notify: NotifySink | None = None,
                 write_lock: asyncio.Lock | None = None) -> None:
        self.engine = engine
        self.bus = bus
        self.settings = settings or RatingSettings()
        self.audit = audit
        self.notify = notify
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = write_lock or asyncio.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._write_lock) as conn:
            yield conn

    # ------------------------------------------------------------------ rateable applications

    def subscribe(self) -> None:
        if self.bus is not None and self._unsubscribe is None:
            self._unsubscribe = self.bus.subscribe(TOPIC, self.on_application_changed, group="ratings")

    def unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def on_application_changed(self, event: Event) -> None:
        # Idempotent without a claim: the effect is an upsert of the application's latest state, and a
        # JetStream redelivery comes before the next event of its partition (one unacknowledged at a time).
        payload = event.payload
        app = payload.get("application")
        tenant = payload.get("tenant", "")
        if not isinstance(app, dict) or not isinstance(tenant, str):
            log.warning("ignored %s without an application", TOPIC)
            return
        application_id, applicant = _text_or_none(app.get("id")), _text_or_none(app.get("applicant"))
        status = _text_or_none(app.get("status"), 32)
        if application_id is None or applicant is None or status is None:
            log.warning("ignored %s: id, applicant and status are required", TOPIC)
            return
        completed_at: datetime | None = None
        if isinstance(app.get("completedAt"), str):
            with contextlib.suppress(ValueError):
                completed_at = clock.parse_iso(app["completedAt"])
        now = clock.now()
        if status in FINISHED and completed_at is None:
            completed_at = now
        await self.record_application(tenant, application_id, _text_or_none(app.get("serviceCode")) or "",
                                      _text_or_none(app.get("department")), applicant, status, completed_at)

    async def record_application(self, tenant: str, application_id: str, service_code: str,
                                 department: str | None, applicant: str, status: str,
                                 completed_at: datetime | None) -> None:
        values = {"tenant": tenant, "application_id": application_id, "service_code": service_code,
                  "department": department, "applicant": applicant, "status": status,
                  "completed_at": completed_at, "updated_at": clock.now()}
        if not self._sqlite:
            # One statement in autocommit: one round trip (this runs on every application change).
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql(_PG_UPSERT, tuple(values[k] for k in _UPSERT_COLUMNS))
            return
        insert = sqlite.insert(applications).values(**values)
        changed = {k: insert.excluded[k] for k in _UPSERT_COLUMNS[2:]}
        async with self._write() as conn:
            await conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "application_id"],
                                                            set_=changed))

    async def application(self, tenant: str, application_id: str) -> dict[str, Any]:
        """The rateable record of an application (404 when this package has never heard of it)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(applications).where(
                applications.c.tenant == tenant, applications.c.application_id == application_id))).first()
        if row is None:
            raise ResourceNotFound(f"no application {application_id!r}")
        return {"id": row.application_id, "serviceCode": row.service_code, "department": row.department,
                "applicant": row.applicant, "status": row.status}

    # ------------------------------------------------------------------ ratings

    async def submit(self, tenant: str, application_id: str, applicant: str, score: int,
                     comment: str | None) -> dict[str, Any]:
        """Rate an application (the caller has checked that `applicant` is the applicant).

        409 when the application is not completed or was rated already.
        """
        validate_score(score)
        comment = validate_comment(comment)
        now = clock.now()
        rating_id = uuid.uuid4().hex
        rectification: dict[str, Any] | None = None
        try:
            async with self._write() as conn:
                app = (await conn.execute(select(applications).where(
                    applications.c.tenant == tenant, applications.c.application_id == application_id))).first()
                if app is None:
                    raise ResourceNotFound(f"no application {application_id!r}")
                if app.applicant != applicant:
                    raise Conflict("only the applicant may rate an application")  # the API checks first (403)
                if app.status not in FINISHED:
                    raise Conflict(f"application {application_id} is {app.status}; only finished ones are rated")
                row = {"id": rating_id, "tenant": tenant, "application_id": application_id,
                       "service_code": app.service_code, "department": app.department, "applicant": applicant,
                       "score": score, "comment": comment, "created_at": now}
                await conn.execute(ratings.insert().values(**row))
                if score <= self.settings.bad_threshold:
                    rectification = {"id": uuid.uuid4().hex, "tenant": tenant, "rating_id": rating_id,
                                     "application_id": application_id, "service_code": app.service_code,
                                     "department": app.department, "score": score, "comment": comment,
                                     "status": "open", "deadline": deadline_after(now, self.settings.deadline),
                                     "created_at": now}
                    await conn.execute(rectifications.insert().values(**rectification))
        except IntegrityError as exc:
            raise Conflict(f"application {application_id} has been rated already") from exc
        out = rating_out(_Row(row))
        out["rectificationId"] = rectification["id"] if rectification else None
        if self.bus is not None:
            await self.bus.publish("services.rating.created", {"tenant": tenant, "rating": out})
            if rectification is not None:
                await self.bus.publish("services.rectification.opened", {
                    "tenant": tenant, "rectification": rectification_out(_Row(rectification), now)})
        return out

    async def rating_of(self, tenant: str, application_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(ratings).where(ratings.c.tenant == tenant,
                                                            ratings.c.application_id == application_id))).first()
        return None if row is None else rating_out(row)

    # ------------------------------------------------------------------ satisfaction

    async def _grouped(self, tenant: str, column: Any, departments: list[str] | None) -> list[dict[str, Any]]:
        """Statistics grouped by `column` (one group, key None, when `column` is None)."""
        score = ratings.c.score
        key = (column if column is not None else func.min(ratings.c.tenant)).label("key")
        query = (select(key, func.count().label("n"), func.sum(score).label("total"),
                        func.sum(case((score >= 4, 1), else_=0)).label("satisfied"),
                        func.sum(case((score == 5, 1), else_=0)).label("promoters"),
                        func.sum(case((score <= 3, 1), else_=0)).label("detractors"),
                        func.sum(case((score <= self.settings.bad_threshold, 1), else_=0)).label("bad"))
                 .where(ratings.c.tenant == tenant))
        if column is not None:
            query = query.group_by(column).order_by(column)
        if departments is not None:
            query = query.where(ratings.c.department.in_(departments))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [{"key": r.key, **_stats(int(r.n), int(r.total or 0), int(r.satisfied or 0), int(r.promoters or 0),
                                        int(r.detractors or 0), int(r.bad or 0))} for r in rows]

    async def satisfaction(self, tenant: str, departments: Iterable[str] | None = None) -> dict[str, Any]:
        """Per service and per department (and overall): count, mean score, satisfaction % (4–5),
        NPS-style score and bad-rating count. `departments` limits it to those departments."""
        deps = list(departments) if departments is not None else None
        by_service = await self._grouped(tenant, ratings.c.service_code, deps)
        by_department = await self._grouped(tenant, ratings.c.department, deps)
        overall = (await self._grouped(tenant, None, deps))[0]
        overall.pop("key")
        return {"overall": overall,
                "byService": [{"serviceCode": i.pop("key"), **i} for i in by_service],
                "byDepartment": [{"department": i.pop("key"), **i} for i in by_department]}

    # ------------------------------------------------------------------ rectifications

    async def rectifications(self, tenant: str, *, department: str | None = None, status: str | None = None,
                             departments: Iterable[str] | None = None, limit: int = 50,
                             offset: int = 0) -> dict[str, Any]:
        now = clock.now()
        where = [rectifications.c.tenant == tenant]
        if department is not None:
            where.append(rectifications.c.department == department)
        if departments is not None:
            where.append(rectifications.c.department.in_(list(departments)))
        if status == "overdue":
            where += [rectifications.c.status == "open", rectifications.c.deadline < now]
        elif status is not None:
            where.append(rectifications.c.status == status)
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(rectifications)
                                        .where(and_(*where)))).scalar_one()
            rows = (await conn.execute(select(rectifications).where(and_(*where))
                                       .order_by(rectifications.c.deadline, rectifications.c.id)
                                       .limit(limit).offset(offset))).all()
        return {"total": total, "items": [rectification_out(r, now) for r in rows]}

    async def rectification(self, tenant: str, rectification_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(rectifications).where(
                rectifications.c.tenant == tenant, rectifications.c.id == rectification_id))).first()
        if row is None:
            raise ResourceNotFound(f"no rectification {rectification_id!r}")
        return rectification_out(row, clock.now())

    async def reply(self, tenant: str, rectification_id: str, reply: str, by: Principal | None, *,
                    ip: str = "") -> dict[str, Any]:
        """Record the department's reply (the caller has checked the department); 409 if replied."""
        if not isinstance(reply, str) or not reply.strip():
            raise BadRequestData("reply must be a non-empty string")
        if len(reply) > MAX_REPLY:
            raise BadRequestData(f"reply must be at most {MAX_REPLY} characters")
        actor = (by.username or by.id) if by is not None else "system"
        now = clock.now()
        async with self._write() as conn:
            result = await conn.execute(update(rectifications).where(
                rectifications.c.tenant == tenant, rectifications.c.id == rectification_id,
                rectifications.c.status == "open").values(status="replied", reply=reply.strip(),
                                                          replied_by=actor[:256], replied_at=now))
            if result.rowcount != 1:
                exists = (await conn.execute(select(rectifications.c.id).where(
                    rectifications.c.tenant == tenant, rectifications.c.id == rectification_id))).first()
                if exists is None:
                    raise ResourceNotFound(f"no rectification {rectification_id!r}")
                raise Conflict(f"rectification {rectification_id} has been replied to already")
            app = (await conn.execute(select(ratings.c.applicant).select_from(
                rectifications.join(ratings, ratings.c.id == rectifications.c.rating_id))
                .where(rectifications.c.id == rectification_id))).first()
        if self.audit is not None:
            await self.audit(AuditEvent.of(by, "rectification.act", f"rectification:{rectification_id}", ip=ip,
                                           tenant=tenant))
        out = await self.rectification(tenant, rectification_id)
        if self.bus is not None:
            await self.bus.publish("services.rectification.replied", {"tenant": tenant, "rectification": out})
        if self.notify is not None and app is not None:
            try:
                await self.notify(tenant, app.applicant, "您的评价已收到整改回复 (reply to your rating)",
                                  reply.strip())
            except Exception:  # a notification must never undo the reply
                log.exception("could not notify the applicant of rectification %s", rectification_id)
        return out


class _Row:
    """Attribute access over a dict, so freshly inserted rows render like fetched ones."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self.__dict__.setdefault("reply", None)
        self.__dict__.setdefault("replied_by", None)
        self.__dict__.setdefault("replied_at", None)
