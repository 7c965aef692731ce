"""Elderly people living alone: readings → alert rules → an escalation chain per person.

Readings use the IoT wristband profile's attribute names (``heartRate``, ``oxygenSaturation``,
``fallDetected``; profile ``wearable`` in iot/profiles.json) plus ``sos``, ``gasAlarm``,
``smokeAlarm`` and ``motion`` (door or motion sensors). They come through the care API or, for
wristbands registered in IoT, from the hub's Device entities (`on_entity`).

Rules: a fall or SOS raises an alert at once; heart rate or SpO2 out of range for
``vitals_minutes``; gas or smoke at once; no activity for ``inactivity_hours`` while it is day
(08:00-22:00 in the city's zone) — checked by `sweep`.

Escalation: the person's chain (family → community doctor → community worker → 120), each step
with its acknowledgement deadline. `sweep` calls the next step when a deadline passes; the last
step, ``emergency``, opens an incident through the hub (an ``Alert`` entity the incident domain
turns into an incident). Each step is timed and audited; the health detail of an alert is sealed
(sensitive class) and never leaves the domain in notices or the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float
from cityos.core import clock
from cityos.core.bus_models import claim
from cityos.core.clock import as_utc, as_utc_or_none
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.events import Event
from cityos.core.messages import city_zone
from cityos.livelihood import models as m
from cityos.security.audit import AuditEvent, AuditLog
from cityos.security.crypto import KeyRing
from cityos.security.policy import Principal

ROLES = ("family", "doctor", "worker", "emergency")
ALERT_KINDS = ("fall", "sos", "vitals", "gas", "smoke", "inactivity")
DAY_START, DAY_END = time(8, 0), time(22, 0)
HubWrite = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class CareSettings:
    vitals_minutes: float = field(default_factory=lambda: env_float("CITYOS_CARE_VITALS_MINUTES", 10.0))
    inactivity_hours: float = field(default_factory=lambda: env_float("CITYOS_CARE_INACTIVITY_HOURS", 12.0))
    heart_low: float = 40.0
    heart_high: float = 130.0
    spo2_low: float = 90.0


def parse_chain(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not 1 <= len(value) <= 8:
        raise BadRequestData("chain: a list of 1-8 steps {role, userId, ackMinutes}")
    out = []
    for i, step in enumerate(value):
        if not isinstance(step, dict) or step.get("role") not in ROLES:
            raise BadRequestData(f"chain[{i}].role is one of {', '.join(ROLES)}")
        minutes = step.get("ackMinutes", 5)
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0.5 <= minutes <= 240:
            raise BadRequestData(f"chain[{i}].ackMinutes: 0.5-240")
        user = step.get("userId")
        if step["role"] == "emergency":
            if i != len(value) - 1:
                raise BadRequestData("the emergency step (120) is the last of the chain")
        elif not isinstance(user, str) or not 0 < len(user) <= 64:
            raise BadRequestData(f"chain[{i}].userId: the account called at this step")
        out.append({"role": step["role"], "userId": user if step["role"] != "emergency" else None,
                    "ackMinutes": float(minutes)})
    return out


class CareService:
    def __init__(self, engine: AsyncEngine, keyring: KeyRing, audit: AuditLog, notifier: Any = None,
                 hub_write: HubWrite | None = None, write_lock: asyncio.Lock | None = None,
                 settings: CareSettings | None = None) -> None:
        self.engine = engine
        self.keyring = keyring
        self.audit = audit
        self.notifier = notifier
        self.hub_write = hub_write
        self.settings = settings or CareSettings()
        self._lock = write_lock or asyncio.Lock()
        self._devices: dict[tuple[str, str], str] = {}  # (tenant, device) → subject
        self._unsubscribe: list[Callable[[], None]] = []

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._lock) as conn:
            yield conn

    # ------------------------------------------------------------------ roster

    async def person(self, tenant: str, subject_id: str) -> Any:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.care_people).where(
                m.care_people.c.tenant == tenant, m.care_people.c.subject_id == subject_id))).first()
        if row is None:
            raise ResourceNotFound(f"{subject_id!r} is not on the care roster")
        return row

    async def enrol(self, principal: Principal | None, tenant: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequestData("a JSON object {subject, devices, chain, district?, workerId?}")
        subject_id = body.get("subject")
        devices = body.get("devices", [])
        if not isinstance(subject_id, str) or not 0 < len(subject_id) <= 64:
            raise BadRequestData("subject: the person's id")
        if (not isinstance(devices, list) or len(devices) > 16
                or not all(isinstance(d, str) and 0 < len(d) <= 128 for d in devices)):
            raise BadRequestData("devices: up to 16 device ids")
        chain = parse_chain(body.get("chain"))
        district, worker = body.get("district"), body.get("workerId")
        for name, value in (("district", district), ("workerId", worker)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 128):
                raise BadRequestData(f"{name}: a text of 1-128 characters")
        async with self.write() as conn:
            subject = (await conn.execute(select(m.subjects).where(
                m.subjects.c.tenant == tenant, m.subjects.c.id == subject_id))).first()
            if subject is None or subject.kind != "person":
                raise ResourceNotFound(f"unknown person {subject_id!r}")
            for device in devices:
                owner = self._devices.get((tenant, device))
                if owner is not None and owner != subject_id:
                    raise Conflict(f"device {device!r} already belongs to another person")
            values = {"device_ids": devices, "chain": chain, "district": district or subject.district,
                      "worker_id": worker}
            done = await conn.execute(m.care_people.update().where(
                m.care_people.c.tenant == tenant, m.care_people.c.subject_id == subject_id).values(**values))
            if done.rowcount == 0:
                await conn.execute(m.care_people.insert().values(tenant=tenant, subject_id=subject_id,
                                                                 last_activity_at=clock.now(), notes=[], **values))
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.care.manage",
                                                            f"care:{subject_id}", tenant=tenant, steps=len(chain))])
        for device in devices:
            self._devices[(tenant, device)] = subject_id
        return {"subject": subject_id, "devices": devices, "chain": chain}

    async def _device_owner(self, tenant: str, device: str) -> str | None:
        found = self._devices.get((tenant, device))
        if found is not None:
            return found
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(m.care_people.c.subject_id, m.care_people.c.device_ids).where(
                m.care_people.c.tenant == tenant))).all()
        for row in rows:
            for name in row.device_ids:
                self._devices[(tenant, name)] = row.subject_id
        return self._devices.get((tenant, device))

    # ------------------------------------------------------------------ readings → alerts

    async def reading(self, tenant: str, body: Any, device_principal: str | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequestData("a reading is a JSON object {device, observedAt?, values}")
        device, values = body.get("device"), body.get("values")
        if not isinstance(device, str) or not 0 < len(device) <= 128:
            raise BadRequestData("device: the device id")
        if device_principal is not None and device_principal != device:
            raise BadRequestData("a device sends only its own readings")
        if not isinstance(values, dict) or not values:
            raise BadRequestData("values: an object of readings")
        at = clock.now()
        if body.get("observedAt") is not None:
            try:
                at = as_utc(datetime.fromisoformat(str(body["observedAt"])))
            except ValueError as exc:
                raise BadRequestData("observedAt: an ISO 8601 date-time") from exc
        checked = _check_values(values)
        subject = await self._device_owner(tenant, device)
        if subject is None:
            raise ResourceNotFound(f"device {device!r} is not on the care roster")
        return {"alerts": await self._apply(tenant, subject, device, checked, at)}

    async def _apply(self, tenant: str, subject: str, device: str, values: dict[str, Any], at: datetime,
                     cause: Event | None = None) -> list[str]:
        """`cause` (the bus event carrying the reading) is claimed with the effects: the alert keys hold
        the time of handling, so a JetStream redelivery would otherwise raise the fall twice."""
        raised: list[str] = []
        stamp = at.isoformat()
        async with self.write() as conn:
            if not await claim(conn, "eldercare", cause):
                return []
            await conn.execute(m.care_people.update().where(
                m.care_people.c.tenant == tenant, m.care_people.c.subject_id == subject).values(last_activity_at=at))
            if values.get("fallDetected"):
                raised += await self._raise(conn, tenant, subject, "fall", f"{subject}:fall:{stamp}", at,
                                            {"device": device})
            if values.get("sos"):
                raised += await self._raise(conn, tenant, subject, "sos", f"{subject}:sos:{stamp}", at,
                                            {"device": device})
            for flag, kind in (("gasAlarm", "gas"), ("smokeAlarm", "smoke")):
                if values.get(flag):
                    raised += await self._raise(conn, tenant, subject, kind, f"{subject}:{kind}:{stamp}", at,
                                                {"device": device})
            for measure, low, high in (("heartRate", self.settings.heart_low, self.settings.heart_high),
                                       ("oxygenSaturation", self.settings.spo2_low, 101.0)):
                if measure in values:
                    raised += await self._vitals(conn, tenant, subject, measure, float(values[measure]), low, high, at)
        return raised

    async def _vitals(self, conn: AsyncConnection, tenant: str, subject: str, measure: str, value: float,
                      low: float, high: float, at: datetime) -> list[str]:
        key = (m.care_vitals.c.tenant == tenant) & (m.care_vitals.c.subject_id == subject) & (
            m.care_vitals.c.measure == measure)
        row = (await conn.execute(select(m.care_vitals.c.out_since).where(key))).first()
        if low <= value <= high:
            if row is not None and row.out_since is not None:
                await conn.execute(m.care_vitals.update().where(key).values(out_since=None))
            return []
        since = as_utc_or_none(row.out_since) if row is not None else None
        if row is None:
            await conn.execute(m.care_vitals.insert().values(tenant=tenant, subject_id=subject, measure=measure,
                                                             out_since=at))
            since = at
        elif since is None:
            await conn.execute(m.care_vitals.update().where(key).values(out_since=at))
            since = at
        if at - since >= timedelta(minutes=self.settings.vitals_minutes):
            return await self._raise(conn, tenant, subject, "vitals", f"{subject}:vitals:{since.isoformat()}", at,
                                     {"measure": measure, "value": value, "outSince": since.isoformat()})
        return []

    async def _raise(self, conn: AsyncConnection, tenant: str, subject: str, kind: str, dedup: str,
                     at: datetime, detail: dict[str, Any]) -> list[str]:
        from cityos.livelihood.proactive.service import insert_ignore

        person = (await conn.execute(select(m.care_people).where(
            m.care_people.c.tenant == tenant, m.care_people.c.subject_id == subject))).first()
        if person is None:
            return []
        alert_id = uuid.uuid4().hex
        now = clock.now()
        first = person.chain[0]
        step = {"step": 0, "role": first["role"], "userId": first["userId"], "calledAt": now.isoformat(),
                "deadline": (now + timedelta(minutes=first["ackMinutes"])).isoformat(), "outcome": "called"}
        values = {"id": alert_id, "tenant": tenant, "subject_id": subject, "kind": kind, "dedup_key": dedup[:128],
                  "raised_at": at, "step": 0, "step_deadline": now + timedelta(minutes=first["ackMinutes"]),
                  "status": "open", "acknowledged_at": None, "acknowledged_by": None, "steps": [step],
                  "detail": self.keyring.encrypt(orjson.dumps(detail).decode(), aad=alert_id.encode())}
        if (await conn.execute(insert_ignore(conn, m.care_alerts, values))).rowcount != 1:
            return []  # the same reading again: one alert
        await self._call(conn, tenant, alert_id, kind, first)
        await self.audit.append_in(conn, [AuditEvent("livelihood.care.alert", f"care-alert:{alert_id}",
                                                     actor="livelihood", actor_kind="service", role="service",
                                                     tenant=tenant, detail={"kind": kind, "step": first["role"]})])
        return [alert_id]

    async def _call(self, conn: AsyncConnection, tenant: str, alert_id: str, kind: str, step: dict[str, Any]) -> None:
        if step["role"] == "emergency":
            return
        if self.notifier is not None and step.get("userId"):
            # No health data in the notice: the kind of alert and where to acknowledge it.
            await self.notifier.notify(tenant, step["userId"], f"关爱告警:{_KIND_ZH[kind]}",
                                       f"您关爱的独居老人触发告警({_KIND_ZH[kind]}),请尽快确认并联系。\n"
                                       f"Care alert ({kind}) for a person in your care: please acknowledge.",
                                       link=f"/care/alerts/{alert_id}", conn=conn)

    # ------------------------------------------------------------------ escalation

    async def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """Escalate alerts past their step's deadline; raise inactivity alerts in the day."""
        now = now or clock.now()
        escalated = emergency = 0
        emergencies: list[tuple[str, Any]] = []
        async with self.write() as conn:
            due = (await conn.execute(select(m.care_alerts).where(
                m.care_alerts.c.status == "open", m.care_alerts.c.step_deadline <= now))).all()
            for alert in due:
                person = (await conn.execute(select(m.care_people.c.chain, m.care_people.c.district).where(
                    m.care_people.c.tenant == alert.tenant, m.care_people.c.subject_id == alert.subject_id))).first()
                chain = person.chain if person is not None else []
                steps = [dict(s) for s in alert.steps]
                steps[-1]["outcome"] = "no acknowledgement"
                nxt = alert.step + 1
                if nxt >= len(chain):
                    await conn.execute(m.care_alerts.update().where(m.care_alerts.c.id == alert.id).values(
                        status="unanswered", step_deadline=None, steps=steps))
                    continue
                step = chain[nxt]
                deadline = now + timedelta(minutes=step["ackMinutes"]) if step["role"] != "emergency" else None
                steps.append({"step": nxt, "role": step["role"], "userId": step["userId"],
                              "calledAt": now.isoformat(), "deadline": deadline.isoformat() if deadline else None,
                              "outcome": "called"})
                status = "escalated-120" if step["role"] == "emergency" else "open"
                await conn.execute(m.care_alerts.update().where(m.care_alerts.c.id == alert.id,
                                                                m.care_alerts.c.step == alert.step).values(
                    step=nxt, step_deadline=deadline, steps=steps, status=status))
                await self._call(conn, alert.tenant, alert.id, alert.kind, step)
                await self.audit.append_in(conn, [AuditEvent(
                    "livelihood.care.escalate", f"care-alert:{alert.id}", actor="livelihood", actor_kind="service",
                    role="service", tenant=alert.tenant, detail={"step": nxt, "role": step["role"]})])
                escalated += 1
                if status == "escalated-120":
                    emergency += 1
                    emergencies.append((alert.tenant, (alert, person.district if person is not None else None)))
            inactive = await self._inactivity(conn, now)
        for tenant, (alert, district) in emergencies:
            await self._emergency(tenant, alert, district)
        return {"escalated": escalated, "emergency": emergency, "inactivity": inactive}

    async def _inactivity(self, conn: AsyncConnection, now: datetime) -> int:
        local = now.astimezone(city_zone()).time()
        if not DAY_START <= local <= DAY_END:
            return 0
        limit = now - timedelta(hours=self.settings.inactivity_hours)
        rows = (await conn.execute(select(m.care_people.c.tenant, m.care_people.c.subject_id,
                                          m.care_people.c.last_activity_at).where(
            m.care_people.c.last_activity_at <= limit))).all()
        raised = 0
        for row in rows:
            last = as_utc(row.last_activity_at)
            raised += len(await self._raise(conn, row.tenant, row.subject_id, "inactivity",
                                            f"{row.subject_id}:inactivity:{last.isoformat()}", now,
                                            {"lastActivity": last.isoformat()}))
        return raised

    async def _emergency(self, tenant: str, alert: Any, district: str | None) -> None:
        """120 through the incident domain: an active Alert in the hub (no name, no health values)."""
        if self.hub_write is None:
            return
        entity: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Alert:alarm-care-{alert.id}", "type": "Alert",
            "category": {"type": "Property", "value": "health"},
            "subCategory": {"type": "Property", "value": alert.kind},
            "alarmStatus": {"type": "Property", "value": "active"},
            "alarmSeverity": {"type": "Property", "value": "critical"},
            "incidentCategory": {"type": "Property", "value": "eldercare.emergency-120"},
            "description": {"type": "Property",
                            "value": f"独居老人关爱告警无人确认,转120 / Elderly-care alert unanswered, 120 called "
                                     f"({alert.kind})"},
        }
        if district:
            entity["district"] = {"type": "Property", "value": district}
        await self.hub_write(tenant, entity)

    async def acknowledge(self, principal: Principal, tenant: str, alert_id: str, staff: bool) -> dict[str, Any]:
        """The person called at a step (or care staff) acknowledges: the chain stops there."""
        now = clock.now()
        async with self.write() as conn:
            alert = (await conn.execute(select(m.care_alerts).where(
                m.care_alerts.c.tenant == tenant, m.care_alerts.c.id == alert_id))).first()
            called = alert is not None and any(s.get("userId") == principal.id for s in alert.steps)
            if alert is None or not (called or staff):
                raise ResourceNotFound(f"no alert {alert_id!r} for you")
            if alert.status not in ("open", "escalated-120", "unanswered"):
                raise Conflict(f"the alert is {alert.status}")
            steps = [dict(s) for s in alert.steps]
            steps[-1]["outcome"] = "acknowledged"
            steps[-1]["acknowledgedAt"] = now.isoformat()
            done = await conn.execute(m.care_alerts.update().where(
                m.care_alerts.c.id == alert_id, m.care_alerts.c.status == alert.status,
                m.care_alerts.c.step == alert.step).values(status="acknowledged", acknowledged_at=now,
                                                           acknowledged_by=principal.id, step_deadline=None,
                                                           steps=steps))
            if done.rowcount != 1:
                raise Conflict("the alert changed meanwhile; try again")
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.care.act",
                                                            f"care-alert:{alert_id}", tenant=tenant, step=alert.step)])
        return {"id": alert_id, "status": "acknowledged", "acknowledgedAt": now.isoformat(),
                "secondsToAcknowledge": (now - as_utc(alert.raised_at)).total_seconds()}

    async def note(self, principal: Principal, tenant: str, subject_id: str, text: Any, kind: Any) -> dict[str, Any]:
        if not isinstance(text, str) or not 0 < len(text.strip()) <= 2000:
            raise BadRequestData("note: a text of 1-2000 characters")
        if kind not in ("visit", "note"):
            raise BadRequestData("kind: visit or note")
        person = await self.person(tenant, subject_id)
        entry = {"at": clock.now().isoformat(), "by": principal.username or principal.id, "kind": kind,
                 "sealed": self.keyring.encrypt(text.strip(), aad=subject_id.encode())}
        async with self.write() as conn:
            await conn.execute(m.care_people.update().where(
                m.care_people.c.tenant == tenant, m.care_people.c.subject_id == subject_id).values(
                notes=[*person.notes[-199:], entry]))
            await self.audit.append_in(conn, [AuditEvent.of(principal, "livelihood.care.act", f"care:{subject_id}",
                                                            tenant=tenant, kind=kind)])
        return {"subject": subject_id, "kind": kind, "at": entry["at"]}

    async def roster(self, tenant: str, worker: str | None, districts: frozenset[str] | None,
                     since: datetime) -> dict[str, Any]:
        """The people in a worker's care, their alerts since `since`, and their notes (opened for staff)."""
        async with self.engine.connect() as conn:
            query = select(m.care_people).where(m.care_people.c.tenant == tenant)
            if worker is not None:
                query = query.where(m.care_people.c.worker_id == worker)
            if districts is not None:
                query = query.where(m.care_people.c.district.in_(sorted(districts)))
            people = (await conn.execute(query.order_by(m.care_people.c.subject_id).limit(500))).all()
            ids = [p.subject_id for p in people]
            alerts = (await conn.execute(select(m.care_alerts).where(
                m.care_alerts.c.tenant == tenant, m.care_alerts.c.subject_id.in_(ids),
                m.care_alerts.c.raised_at >= since).order_by(m.care_alerts.c.raised_at.desc()))).all() if ids else []
        by_subject: dict[str, list[dict[str, Any]]] = {}
        for alert in alerts:
            by_subject.setdefault(alert.subject_id, []).append(alert_view(alert))
        return {"people": [{"subject": p.subject_id, "district": p.district, "devices": p.device_ids,
                            "chain": [{"role": s["role"], "ackMinutes": s["ackMinutes"]} for s in p.chain],
                            "lastActivityAt": as_utc(p.last_activity_at).isoformat() if p.last_activity_at else None,
                            "alerts": by_subject.get(p.subject_id, []),
                            "notes": [{"at": n["at"], "by": n["by"], "kind": n["kind"],
                                       "text": self.keyring.decrypt(n["sealed"], aad=p.subject_id.encode())}
                                      for n in p.notes[-20:]]} for p in people]}

    async def alert(self, tenant: str, alert_id: str) -> Any:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(m.care_alerts).where(m.care_alerts.c.tenant == tenant,
                                                                  m.care_alerts.c.id == alert_id))).first()
        if row is None:
            raise ResourceNotFound(f"no alert {alert_id!r}")
        return row


_KIND_ZH = {"fall": "跌倒", "sos": "紧急呼叫", "vitals": "生命体征异常", "gas": "燃气泄漏", "smoke": "烟雾",
            "inactivity": "长时间无活动"}


def _check_values(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in ("fallDetected", "sos", "gasAlarm", "smokeAlarm", "motion"):
            if not isinstance(value, bool):
                raise BadRequestData(f"values.{name} is true or false")
        elif name in ("heartRate", "oxygenSaturation", "batteryLevel"):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 300:
                raise BadRequestData(f"values.{name} is a number between 0 and 300")
        else:
            raise BadRequestData(f"values.{name}: unknown reading")
        out[name] = value
    return out


def alert_view(row: Any) -> dict[str, Any]:
    """An alert without its health detail (kept sealed): kind, times and the steps."""
    return {"id": row.id, "subject": row.subject_id, "kind": row.kind, "status": row.status, "step": row.step,
            "raisedAt": as_utc(row.raised_at).isoformat(),
            "acknowledgedAt": as_utc(row.acknowledged_at).isoformat() if row.acknowledged_at else None,
            "steps": [{k: v for k, v in s.items() if k != "userId"} for s in row.steps]}
