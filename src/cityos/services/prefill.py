"""Pre-filled applications from 服务找人 (livelihood): one click of a resident or a company becomes an
application here, with the data the government already holds, and nothing typed again.

The livelihood domain publishes ``livelihood.application.requested`` on the event bus (domains never
touch each other's tables) with the application's id, the service code, the applicant and the form
made from the departments' records. This consumer validates the form against the service's JSON
Schema and starts the application under that very id, so a repeated event (a retry after a lost
answer) starts nothing twice: it only announces the existing application again. The answer travels
back on the bus: ``services.application.changed`` (the usual event, with the receipt) or
``services.prefill.refused`` with the reason (unknown service, a form the service does not accept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cityos.core.errors import ProblemError
from cityos.core.events import Event, EventBus
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Role
from cityos.services import models as m

try:  # PostgreSQL inserts a new application in one raw asyncpg statement (`ServiceDesk._insert_pg`)
    from asyncpg.exceptions import UniqueViolationError
    DUPLICATE: tuple[type[Exception], ...] = (IntegrityError, UniqueViolationError)
except ImportError:  # pragma: no cover - SQLite-only installs
    DUPLICATE = (IntegrityError,)

log = logging.getLogger(__name__)
REQUESTED = "livelihood.application.requested"
REFUSED = "services.prefill.refused"
CHANNEL = "online"


class PrefilledApplications:
    def __init__(self, desk: Any, bus: EventBus) -> None:
        self.desk = desk
        self.bus = bus

    def subscribe(self) -> Callable[[], None]:
        return self.bus.subscribe(REQUESTED, self.on_requested)

    async def _refuse(self, payload: dict[str, Any], reason: str) -> None:
        log.warning("pre-filled application %s refused: %s", str(payload.get("id"))[:32], reason)
        await self.bus.publish(REFUSED, {"tenant": payload.get("tenant"), "id": payload.get("id"),
                                         "applicant": payload.get("applicant"), "reason": reason})

    async def _existing(self, tenant: str, app_id: str) -> dict[str, Any] | None:
        async with self.desk._read() as conn:
            row = (await conn.execute(select(m.applications).where(
                m.applications.c.tenant == tenant, m.applications.c.id == app_id))).mappings().first()
        return dict(row) if row is not None else None

    async def on_requested(self, event: Event) -> None:
        payload = event.payload
        tenant, app_id, code = payload.get("tenant"), payload.get("id"), payload.get("serviceCode")
        applicant, form = payload.get("applicant"), payload.get("form")
        if not (isinstance(tenant, str) and isinstance(app_id, str) and 0 < len(app_id) <= 32
                and isinstance(code, str) and isinstance(applicant, str) and 0 < len(applicant) <= 64
                and isinstance(form, dict)):
            await self._refuse(payload, "malformed request: tenant, id, serviceCode, applicant and form are needed")
            return
        existing = await self._existing(tenant, app_id)
        if existing is not None:  # a repeated request: tell again, start nothing
            await self.desk._publish(existing)
            return
        try:
            svc = await self.desk.service(tenant, code)
        except ProblemError as exc:
            await self._refuse(payload, f"no service {code!r} in the catalogue ({exc.detail})")
            return
        role = Role.ENTERPRISE.value if payload.get("applicantKind") == "company" else Role.CITIZEN.value
        principal = Principal(id=applicant, role=role, tenant=tenant)
        materials, errors = await self.desk._validate_submission(svc, principal, tenant, form, [])
        if errors:
            await self._refuse(payload, "; ".join(f"{e['field']}: {e['message']}" for e in errors)[:1000])
            return
        try:
            row = await self.desk._start(svc, principal, tenant, form, materials, CHANNEL, None, app_id=app_id)
        except DUPLICATE:  # the same request handled concurrently: the other one started it
            existing = await self._existing(tenant, app_id)
            if existing is not None:
                await self.desk._publish(existing)
            return
        security = self.desk._peer("security")
        if security is not None:
            await security.audit.record(AuditEvent(
                "application.submit", f"application:{app_id}", actor=applicant, actor_kind="user", role=role,
                tenant=tenant, detail={"service": code, "receipt": row["receipt"], "prefilled": True,
                                       "policy": payload.get("policy"),
                                       "prefilledFrom": payload.get("prefilledFrom")}))
        await self.desk._after_change(row, svc, principal, submitted=True)
