"""一网通办 logic: catalogue, uploads, applications, workflow steps, tasks, bundles, supervision, metrics.

No HTTP here. Access checks that need the real resource go through the `Check` callback the API
passes in (it is `security.api.enforce` bound to the request, so refusals are audited).

Every workflow step is: load the application and its serialized workflow, run the step in
SpiffWorkflow, reconcile the task rows with the workflow's ready user tasks, and write it all in one
transaction guarded by the workflow's version (optimistic lock: a concurrent step → 409).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import filetype
import orjson
from jsonschema import Draft202012Validator
from sqlalchemy import JSON, and_, bindparam, case, func, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_int
from cityos.core import clock
from cityos.core.clock import as_utc, as_utc_or_none
from cityos.core.errors import AlreadyExists, BadRequestData, Conflict, ResourceNotFound
from cityos.core.events import EventBus
from cityos.security.audit import AuditEvent
from cityos.security.policy import STAFF_ROLES, Principal, Resource, Role, Scope, authorize, role_of, scope_for
from cityos.security.service import Forbidden
from cityos.services import models as m
from cityos.services.calendar import WorkCalendar
from cityos.services.catalogue import (
    CATALOGUE_DIR,
    Bundle,
    CatalogueError,
    Service,
    build_service,
    load_directory,
    matches,
)
from cityos.services.deadlines import TIMER_LABELS, FiredTimer, fired_timers, freeze_timers, thaw_timers
from cityos.services.notify import models as notify_models
from cityos.services.workflow import APPLICANT_LANE, Engine

log = logging.getLogger(__name__)

Check = Callable[[str, Resource], Awaitable[None]]
CHANGED = "services.application.changed"
TASK_OUTCOMES = {"approve": "approve", "reject": "reject", "request-supplement": "supplement"}


class FieldErrors(BadRequestData):
    """400 with the offending fields listed: {"errors": [{"field", "message"}]}."""

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors)


@dataclass
class ServicesSettings:
    upload_dir: Path = field(default_factory=lambda: Path(os.environ.get("CITYOS_DATA_DIR") or Path.cwd() / "data")
                             / "uploads")
    max_upload_bytes: int = field(default_factory=lambda: env_int("CITYOS_SERVICES_MAX_UPLOAD_BYTES", 10 * 1024 * 1024))
    sweep_seconds: int = field(default_factory=lambda: env_int("CITYOS_SERVICES_SWEEP_SECONDS", 60))
    allowed_types: tuple[str, ...] = ("application/pdf", "image/jpeg", "image/png")


def _json_path(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else ""


def form_errors(validator: Draft202012Validator, form: Any, prefix: str = "form") -> list[dict[str, str]]:
    errors = []
    for error in sorted(validator.iter_errors(form), key=lambda e: list(map(str, e.absolute_path))):
        where = _json_path(error.absolute_path)
        if error.validator == "required" and isinstance(error.validator_value, list):
            missing = error.message.split("'")[1] if "'" in error.message else ""
            where = f"{where}.{missing}" if where and missing else (missing or where)
        errors.append({"field": f"{prefix}.{where}" if where else prefix, "message": error.message})
    return errors


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


class ServiceDesk:
    """The one-stop service desk. One per process; state lives in the database."""

    def __init__(self, engine: AsyncEngine, bus: EventBus, state: Any = None, *, write_lock: asyncio.Lock | None = None,
                 settings: ServicesSettings | None = None, calendar: WorkCalendar | None = None,
                 catalogue_dir: Path = CATALOGUE_DIR) -> None:
        self.db = engine
        self.bus = bus
        self.state = state  # app.state: licences, notifier, ratings are looked up lazily
        self.settings = settings or ServicesSettings()
        self.calendar = calendar or WorkCalendar.from_env()
        self.workflow = Engine()
        self.services, self.bundles = load_directory(catalogue_dir)
        self._managed: dict[tuple[str, str], Service] = {}
        self._write_lock = write_lock if engine.dialect.name == "sqlite" else None
        self._stored_specs: set[str] = set()  # spec refs known to be in svc_workflow_specs
        self._uploads: dict[str, dict[str, Any]] = {}  # upload rows are immutable: a bounded read cache
        self._pg = engine.dialect.name == "postgresql"
        self._inbox_statements: dict[str, Any] = {}

    # ------------------------------------------------------------------ plumbing

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is not None:
            async with self._write_lock, self.db.begin() as conn:
                yield conn
        else:
            async with self.db.begin() as conn:
                yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; on PostgreSQL in autocommit (no BEGIN/ROLLBACK round trips)."""
        async with self.db.connect() as conn:
            if self._pg:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def _peer(self, name: str) -> Any:
        return getattr(self.state, name, None) if self.state is not None else None

    async def _notify(self, tenant: str, user_id: str, subject: str, body: str) -> None:
        notifier = self._peer("notifier")
        if notifier is None:
            return
        try:
            await notifier.notify(tenant, user_id, subject, body)
        except Exception:  # a notification never breaks a case
            log.exception("notification to %s failed", user_id)

    async def _publish(self, row: dict[str, Any]) -> None:
        await self.bus.publish(CHANGED, {"tenant": row["tenant"], "application": self._summary(row)})

    async def _store_spec(self, conn: AsyncConnection, spec: Any) -> str | None:
        """Make sure the workflow's spec is in svc_workflow_specs; returns the ref to remember after commit."""
        entry = self.workflow.spec_entry(spec)
        if entry.ref in self._stored_specs:
            return None
        insert = (sqlite_insert if self.db.dialect.name == "sqlite" else pg_insert)(m.workflow_specs)
        await conn.execute(insert.values(ref=entry.ref, doc=entry.doc, created_at=clock.now())
                           .on_conflict_do_nothing(index_elements=["ref"]))
        return entry.ref

    async def _notify_in(self, conn: AsyncConnection, tenant: str, user_id: str, subject: str,
                         body: str) -> dict[str, Any] | None:
        """A notification written in the caller's transaction (None: no notifier that can do that)."""
        notifier = self._peer("notifier")
        if notifier is None or not getattr(notifier, "wake", None):
            return None
        message: dict[str, Any] = await notifier.notify(tenant, user_id, subject, body, conn=conn)
        return message

    # ------------------------------------------------------------------ catalogue

    async def service(self, tenant: str, code: str) -> Service:
        if code in self.services:
            return self.services[code]
        async with self._read() as conn:
            row = (await conn.execute(select(m.services).where(
                m.services.c.tenant == tenant, m.services.c.code == code))).mappings().first()
        if row is None:
            raise ResourceNotFound(f"no service {code!r}")
        cached = self._managed.get((tenant, code))
        if cached is None or cached.version != row["version"]:
            cached = build_service(row["doc"], CATALOGUE_DIR, code, "api", row["version"], tenant)
            self._managed[(tenant, code)] = cached
        return cached

    async def _managed_services(self, tenant: str) -> list[Service]:
        async with self._read() as conn:
            rows = (await conn.execute(select(m.services.c.code).where(m.services.c.tenant == tenant))).all()
        return [await self.service(tenant, code) for (code,) in rows]

    async def search(self, tenant: str, q: str | None, life_event: str | None, audience: str | None,
                     department: str | None = None) -> dict[str, Any]:
        found = [*self.services.values(), *await self._managed_services(tenant)]
        items: list[dict[str, Any]] = []
        for svc in found:
            d = svc.definition
            if life_event and life_event not in d.life_events:
                continue
            if audience and audience not in d.audience:
                continue
            if department and department != d.department:
                continue
            if matches(svc.text(), q):
                items.append(svc.summary())
        bundles = []
        for bundle in self.bundles.values():
            d2 = bundle.definition
            if (life_event and life_event not in d2.life_events) or (audience and audience not in d2.audience):
                continue
            text = " ".join([d2.code, d2.name, d2.name_en or "", *d2.keywords, *d2.life_events]).lower()
            if matches(text, q):
                bundles.append({"code": d2.code, "name": d2.name, "nameEn": d2.name_en, "bundle": True,
                                "services": bundle.services, "lifeEvents": d2.life_events})
        items.sort(key=lambda s: s["code"])
        return {"items": items, "bundles": bundles, "total": len(items)}

    async def guide(self, tenant: str, code: str) -> dict[str, Any]:
        if code in self.bundles:
            return self.bundles[code].guide(self.services)
        return (await self.service(tenant, code)).guide()

    async def _audit_in(self, conn: AsyncConnection, event: AuditEvent) -> None:
        """The audit record of an administrative write, in the write's own transaction."""
        security = self._peer("security")
        if security is not None:
            await security.audit.append_in(conn, [event])

    async def put_service(self, principal: Principal | None, tenant: str, doc: Any, check: Check,
                          code: str | None = None, ip: str = "") -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise BadRequestData("a service definition is a JSON object")
        if code is not None and doc.get("code", code) != code:
            raise BadRequestData("the code in the body differs from the one in the path")
        if code is not None:
            doc = {**doc, "code": code}
        decisions = doc.get("decisions") if isinstance(doc.get("decisions"), list) else []
        for value in (doc.get("process"), *decisions):
            if not isinstance(value, str) or not value.lstrip().startswith("<"):
                raise BadRequestData("process and decisions must be inline BPMN/DMN XML")
        department = doc.get("department") if isinstance(doc.get("department"), str) else None
        await check("service.manage", Resource("service", tenant, id=doc.get("code"), department=department))
        try:
            svc = build_service(doc, CATALOGUE_DIR, str(doc.get("code", "definition")), "api", 1, tenant)
        except CatalogueError as exc:
            raise BadRequestData(str(exc)) from exc
        if svc.code in self.services:
            raise AlreadyExists(f"service {svc.code!r} is defined by the shipped catalogue")
        now = clock.now()
        async with self.write() as conn:
            row = (await conn.execute(select(m.services.c.version, m.services.c.doc).where(
                m.services.c.tenant == tenant, m.services.c.code == svc.code))).first()
            if code is None and row is not None:
                raise AlreadyExists(f"service {svc.code!r} exists; PUT /api/services/catalogue/{svc.code} replaces it")
            if code is not None and row is None:
                raise ResourceNotFound(f"no service {code!r}")
            if row is not None and row[1].get("department") != svc.definition.department:
                await check("service.manage", Resource("service", tenant, id=svc.code, department=row[1]["department"]))
            version = (row[0] + 1) if row is not None else 1
            values = {"version": version, "doc": doc, "updated_at": now,
                      "updated_by": principal.id if principal else None}
            if row is None:
                await conn.execute(m.services.insert().values(tenant=tenant, code=svc.code, **values))
            else:
                await conn.execute(update(m.services).where(m.services.c.tenant == tenant,
                                                           m.services.c.code == svc.code).values(**values))
            await self._audit_in(conn, AuditEvent.of(principal, "service.manage", f"service:{svc.code}", ip=ip,
                                                     tenant=tenant, op="create" if row is None else "replace",
                                                     version=version))
        svc.version = version
        self._managed[(tenant, svc.code)] = svc
        return svc.guide()

    async def delete_service(self, tenant: str, code: str, check: Check, principal: Principal | None = None,
                             ip: str = "") -> None:
        if code in self.services:
            raise Forbidden(f"service {code!r} is part of the shipped catalogue; change it in the repository")
        svc = await self.service(tenant, code)
        await check("service.manage", Resource("service", tenant, id=code, department=svc.definition.department))
        async with self.write() as conn:
            await conn.execute(m.services.delete().where(m.services.c.tenant == tenant, m.services.c.code == code))
            await self._audit_in(conn, AuditEvent.of(principal, "service.manage", f"service:{code}", ip=ip,
                                                     tenant=tenant, op="delete"))
        self._managed.pop((tenant, code), None)

    async def reconcile_audit(self, window: timedelta = timedelta(days=2),
                              settle: timedelta = timedelta(minutes=1)) -> int:
        """Record `application.submit` for submissions committed in the last `window` whose audit record
        is missing: the process died between the application's commit and its audit record (which the
        API writes after the commit, so that the one-statement insert stays fast). Runs at start; only
        submissions older than `settle` count, so another process's record still in flight is not
        doubled. Recovered records say so (``recovered: true``). Returns how many were recorded."""
        security = self._peer("security")
        if security is None:
            return 0
        now = clock.now()
        a = m.applications
        async with self._read() as conn:
            rows = (await conn.execute(select(a.c.id, a.c.tenant, a.c.applicant, a.c.service_code, a.c.receipt,
                                              a.c.bundle_id, a.c.submitted_at)
                                       .where(a.c.submitted_at >= now - window, a.c.submitted_at < now - settle)
                                       )).mappings().all()
        if not rows:
            return 0
        resource = {r["id"]: f"case:{r['bundle_id']}" if r["bundle_id"] else f"application:{r['id']}" for r in rows}
        # A record written before its application's commit time cannot exist: search from the window's start.
        present = await security.audit.recorded("application.submit", list(resource.values()),
                                                now - window - settle)
        missing: dict[str, AuditEvent] = {}
        for r in rows:
            if resource[r["id"]] in present or resource[r["id"]] in missing:
                continue
            missing[resource[r["id"]]] = AuditEvent(
                "application.submit", resource[r["id"]], actor=r["applicant"], actor_kind="user", role="unknown",
                tenant=r["tenant"], detail={"service": r["service_code"], "receipt": r["receipt"], "recovered": True,
                                            "submittedAt": _iso(r["submitted_at"])})
        if missing:
            log.warning("audit: %d submissions had no audit record (lost in a crash); recorded now", len(missing))
            await security.audit.append_many(list(missing.values()))
        return len(missing)

    # ------------------------------------------------------------------ uploads

    async def upload(self, principal: Principal, tenant: str, data: bytes, declared: str | None,
                     filename: str | None, ip: str = "") -> dict[str, Any]:
        if not data:
            raise FieldErrors([{"field": "file", "message": "the file is empty"}])
        if len(data) > self.settings.max_upload_bytes:
            raise FieldErrors([{"field": "file", "message": f"larger than {self.settings.max_upload_bytes} bytes"}])
        kind = filetype.guess(data)
        detected = kind.mime if kind is not None else None
        if detected not in self.settings.allowed_types:
            raise FieldErrors([{"field": "file", "message": f"file type {detected or 'unknown'} is not accepted; "
                                f"allowed: {', '.join(self.settings.allowed_types)}"}])
        declared_type = (declared or "").split(";")[0].strip().lower().replace("image/jpg", "image/jpeg")
        if declared_type != detected:
            raise FieldErrors([{"field": "file", "message": f"declared content type {declared_type or 'none'} "
                                f"does not match the content ({detected})"}])
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._store_blob, digest, data)
        upload_id = uuid.uuid4().hex
        safe_name = os.path.basename((filename or "").replace("\\", "/"))[:256] or None
        upload_row = {"id": upload_id, "tenant": tenant, "owner": principal.id, "sha256": digest, "size": len(data),
                      "content_type": detected, "filename": safe_name, "created_at": clock.now()}
        async with self.write() as conn:
            await conn.execute(m.uploads.insert(), upload_row)
            # Personal documents: the upload and its audit record commit together.
            await self._audit_in(conn, AuditEvent.of(principal, "upload.create", f"upload:{upload_id}", ip=ip,
                                                     tenant=tenant, sha256=digest, size=len(data),
                                                     contentType=detected))
        self._remember_upload(upload_row)
        return {"uploadId": upload_id, "sha256": digest, "size": len(data), "contentType": detected}

    def _remember_upload(self, row: dict[str, Any]) -> None:
        """Upload rows are written once and never change: keep the recent ones (bounded, oldest out first)."""
        if len(self._uploads) >= 10_000:
            self._uploads.pop(next(iter(self._uploads)))
        self._uploads[row["id"]] = row

    def _blob_path(self, digest: str) -> Path:
        return self.settings.upload_dir / digest[:2] / digest

    def _store_blob(self, digest: str, data: bytes) -> None:
        path = self._blob_path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ submission

    async def _materials(self, svc: Service, principal: Principal, tenant: str, given: Any,
                         prefix: str = "materials") -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        errors: list[dict[str, str]] = []
        out: list[dict[str, Any]] = []
        if given is None:
            given = []
        if not isinstance(given, list):
            return [], [{"field": prefix, "message": "must be a list of {name, uploadId} or {name, licenceId}"}]
        declared = {mat.name: mat for mat in svc.definition.materials}
        seen: set[str] = set()
        upload_ids: list[str] = [g["uploadId"] for g in given
                                 if isinstance(g, dict) and isinstance(g.get("uploadId"), str)]
        uploads: dict[str, Any] = {}
        for upload_id in upload_ids:
            cached = self._uploads.get(upload_id)
            if cached is not None and cached["tenant"] == tenant:
                uploads[upload_id] = cached
        missing = [u for u in upload_ids if u not in uploads]
        if missing:
            async with self._read() as conn:
                rows = (await conn.execute(select(m.uploads).where(
                    m.uploads.c.id.in_(missing), m.uploads.c.tenant == tenant))).mappings().all()
            for r in rows:
                uploads[r["id"]] = dict(r)
                self._remember_upload(dict(r))
        for i, item in enumerate(given):
            where = f"{prefix}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                errors.append({"field": where, "message": "expected {name, uploadId} or {name, licenceId}"})
                continue
            name = item["name"]
            mat = declared.get(name)
            if mat is None:
                errors.append({"field": f"{where}.name", "message": f"{svc.code} asks for no material {name!r}"})
                continue
            if name in seen:
                errors.append({"field": f"{where}.name", "message": f"material {name!r} given twice"})
                continue
            seen.add(name)
            if isinstance(item.get("uploadId"), str) and "licenceId" not in item:
                up = uploads.get(item["uploadId"])
                if up is None or up["owner"] != principal.id:
                    errors.append({"field": f"{where}.uploadId", "message": "no such upload of yours"})
                elif up["content_type"] not in mat.content_types:
                    errors.append({"field": f"{where}.uploadId", "message": f"{up['content_type']} is not accepted "
                                   f"for {name}; allowed: {', '.join(mat.content_types)}"})
                elif mat.max_bytes is not None and up["size"] > mat.max_bytes:
                    errors.append({"field": f"{where}.uploadId", "message": f"larger than {mat.max_bytes} bytes"})
                else:
                    out.append({"name": name, "title": mat.title, "kind": "upload", "uploadId": up["id"],
                                "sha256": up["sha256"], "size": up["size"], "contentType": up["content_type"]})
            elif isinstance(item.get("licenceId"), str) and "uploadId" not in item:
                if mat.licence_type is None:
                    errors.append({"field": f"{where}.licenceId", "message": f"{name} cannot be given as an e-licence"})
                    continue
                licences = self._peer("licences")
                if licences is None:
                    errors.append({"field": f"{where}.licenceId", "message": "e-licence verification is unavailable"})
                    continue
                verdict = await licences.verify_wallet_licence(tenant, principal.id, item["licenceId"],
                                                               mat.licence_type)
                if not getattr(verdict, "valid", False):
                    errors.append({"field": f"{where}.licenceId",
                                   "message": f"e-licence refused: {getattr(verdict, 'reason', 'invalid')}"})
                    continue
                out.append({"name": name, "title": mat.title, "kind": "licence", "licenceId": item["licenceId"],
                            "licenceType": mat.licence_type, "verified": True,
                            "verifiedAt": clock.now().isoformat()})
            else:
                errors.append({"field": where, "message": "give exactly one of uploadId or licenceId"})
        for mat in svc.definition.materials:
            if mat.required and mat.name not in seen:
                errors.append({"field": prefix, "message": f"missing required material {mat.name!r} ({mat.title})"})
        return out, errors

    async def _validate_submission(self, svc: Service, principal: Principal, tenant: str, form: Any,
                                   materials: Any, prefix: str = "") -> tuple[list[dict[str, Any]],
                                                                              list[dict[str, str]]]:
        check = svc.form_check  # compiled: a valid form skips jsonschema's per-property validator objects
        errors = [] if check is not None and check(form) else form_errors(svc.validator, form, f"{prefix}form")
        if not isinstance(form, dict):
            return [], errors or [{"field": f"{prefix}form", "message": "must be an object"}]
        out, material_errors = await self._materials(svc, principal, tenant, materials, f"{prefix}materials")
        return out, errors + material_errors

    def _new_row(self, svc: Service, principal: Principal, tenant: str, form: dict[str, Any],
                 materials: list[dict[str, Any]], channel: str, now: datetime, bundle_id: str | None,
                 app_id: str | None = None) -> dict[str, Any]:
        limit = svc.definition.time_limit_days
        app_id = app_id or uuid.uuid4().hex
        local = now.astimezone(self.calendar.tz)
        return {
            "id": app_id, "tenant": tenant, "receipt": f"YW{local:%Y%m%d}{secrets.randbelow(10**10):010d}",
            "service_code": svc.code, "department": svc.definition.department, "applicant": principal.id,
            "applicant_kind": "enterprise" if principal.role == Role.ENTERPRISE else "citizen",
            "channel": channel, "status": m.IN_REVIEW, "instant": False, "escalated": False, "form": form,
            "materials": materials, "steps": [{"step": "submitted", "title": "提交申请", "at": now.isoformat(),
                                               "department": svc.definition.department, "outcome": "accepted"}],
            "licence_ids": [], "outcome_reason": None, "bundle_id": bundle_id, "limit_days": limit,
            "paused_days": 0, "paused_since": None,
            "trips_saved": svc.definition.hall_trips if channel == "online" else 0,
            "submitted_at": now, "due_at": self.calendar.due_at(now, limit), "completed_at": None,
            "handling_seconds": None, "next_timer_at": None, "updated_at": now,
        }

    async def submit(self, principal: Principal, tenant: str, body: Any, check: Check,
                     bundle_id: str | None = None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequestData("the body is a JSON object {serviceCode, form, materials}")
        code = body.get("serviceCode")
        if not isinstance(code, str):
            raise FieldErrors([{"field": "serviceCode", "message": "required"}])
        svc = await self.service(tenant, code)
        await check("application.submit", Resource("application", tenant, owner=principal.id,
                                                   department=svc.definition.department))
        channel = body.get("channel", "online")
        if channel not in svc.definition.channels:
            raise FieldErrors([{"field": "channel", "message": f"{svc.code} is offered on {svc.definition.channels}"}])
        form = body.get("form")
        materials, errors = await self._validate_submission(svc, principal, tenant, form, body.get("materials"))
        if errors:
            raise FieldErrors(errors)
        assert isinstance(form, dict)  # form_errors refused anything else
        row = await self._start(svc, principal, tenant, form, materials, channel, bundle_id)
        return await self._after_change(row, svc, principal, submitted=True)

    @staticmethod
    def _receipt_notice(row: dict[str, Any], svc: Service) -> tuple[str, str]:
        return f"已受理:{svc.definition.name}", f"您的申请已受理,受理号 {row['receipt']}。"

    @staticmethod
    def _final_notice(row: dict[str, Any], svc: Service) -> tuple[str, str] | None:
        name = svc.definition.name
        if row["status"] == m.APPROVED:
            return f"已办结:{name}", f"受理号 {row['receipt']} 已核准" + ("(秒批)" if row["instant"] else "") + "。"
        if row["status"] == m.REJECTED:
            return f"不予办理:{name}", f"受理号 {row['receipt']} 不予办理。理由:{row['outcome_reason'] or ''}"
        return None

    def _start_notices(self, row: dict[str, Any], svc: Service) -> list[tuple[str, str]]:
        """The notices written with a new application: the receipt, and the outcome when the workflow has
        already decided (秒批) and no licence has to be issued first (its notice comes in between)."""
        notices = [self._receipt_notice(row, svc)]
        final = self._final_notice(row, svc)
        if final is not None and not (row["status"] == m.APPROVED and svc.definition.licence):
            notices.append(final)
        return notices

    async def _start(self, svc: Service, principal: Principal, tenant: str, form: dict[str, Any],
                     materials: list[dict[str, Any]], channel: str, bundle_id: str | None,
                     app_id: str | None = None) -> dict[str, Any]:
        now = clock.now()
        row = self._new_row(svc, principal, tenant, form, materials, channel, now, bundle_id, app_id)
        data = {"form": form, "deadline_at": row["due_at"].isoformat(), "application_id": row["id"],
                "service_code": svc.code}
        wf = self.workflow.start(svc.spec, data)
        new_tasks, _cancelled = self._reconcile(row, svc, wf, {}, now)
        blob = self.workflow.dump(wf)
        notifier = self._peer("notifier")
        if self._pg and (notifier is None or hasattr(notifier, "prepare")):
            await self._insert_pg(row, blob, new_tasks, wf.spec, notifier, svc)
            return row
        # One transaction: the application, its workflow state, its open tasks and the receipt notice.
        async with self.write() as conn:
            stored = await self._store_spec(conn, wf.spec)
            await conn.execute(m.applications.insert(), row)
            await conn.execute(m.workflows.insert(), {"application_id": row["id"], "version": 1, "state": blob,
                                                      "updated_at": now})
            if new_tasks:
                await conn.execute(m.tasks.insert(), new_tasks)
            written = []
            for subject, body in self._start_notices(row, svc):
                notice = await self._notify_in(conn, tenant, principal.id, subject, body)
                if notice is None:
                    break
                written.append(notice)
        if stored:
            self._stored_specs.add(stored)
        if written:
            if any(n.get("deliveries") for n in written):
                self._peer("notifier").wake()
            row["_notified"] = len(written)
        return row

    async def _insert_pg(self, row: dict[str, Any], blob: bytes, new_tasks: list[dict[str, Any]], spec: Any,
                         notifier: Any, svc: Service) -> None:
        """A new application on PostgreSQL in one statement: one round trip instead of BEGIN, four INSERTs and
        COMMIT. A single statement is atomic on its own (so it runs in autocommit), and PostgreSQL runs every
        data-modifying CTE whether the outer statement reads it or not. The SQL text depends only on the
        shape (how many tasks, spec or outbox rows), so asyncpg's prepared statement cache serves it."""
        entry = self.workflow.spec_entry(spec)
        now = row["updated_at"]
        params: list[Any] = []
        parts = [_pg_values(m.workflows, [{"application_id": row["id"], "version": 1, "state": blob,
                                           "updated_at": now}], params)]
        if new_tasks:
            parts.append(_pg_values(m.tasks, new_tasks, params))
        if entry.ref not in self._stored_specs:
            parts.append(_pg_values(m.workflow_specs, [{"ref": entry.ref, "doc": entry.doc, "created_at": now}],
                                    params) + " ON CONFLICT (ref) DO NOTHING")
        deliveries: list[Any] = []
        notices = self._start_notices(row, svc) if notifier is not None else []
        messages, outbox_rows = [], []
        for subject, body in notices:
            message, outbox_part, result = notifier.prepare(row["tenant"], row["applicant"], subject, body)
            messages.append(message)
            outbox_rows.extend(outbox_part)
            deliveries.extend(result["deliveries"])
        if messages:
            parts.append(_pg_values(notify_models.notifications, messages, params))
        if outbox_rows:
            parts.append(_pg_values(notify_models.outbox, outbox_rows, params))
        main = _pg_values(m.applications, [row], params)
        sql = "WITH " + ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts)) + " " + main
        await _pg_autocommit(self.db, sql, params)
        self._stored_specs.add(entry.ref)
        if deliveries:
            notifier.wake()
        if notices:
            row["_notified"] = len(notices)

    # ------------------------------------------------------------------ reconciling workflow and rows

    def _reconcile(self, row: dict[str, Any], svc: Service, wf: Any, open_tasks: dict[str, dict[str, Any]],
                   now: datetime, rejected: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """Bring `row` (status, steps, timers) in line with `wf`; returns (task rows to insert, ids to cancel)."""
        ready = {str(t.id): t for t in self.workflow.ready_user_tasks(wf)}
        new_tasks = []
        for task_id, task in ready.items():
            if task_id in open_tasks:
                continue
            name = task.task_spec.name
            meta = svc.info.tasks.get(name, {"title": name, "lane": task.task_spec.lane or row["department"]})
            new_tasks.append({"id": task_id, "tenant": row["tenant"], "application_id": row["id"], "name": name,
                              "title": meta["title"], "department": meta["lane"], "status": "open", "outcome": None,
                              "comment": None, "actor": None, "created_at": now, "due_at": row["due_at"],
                              "completed_at": None})
        cancelled = [tid for tid in open_tasks if tid not in ready]
        steps = list(row["steps"])
        recorded = {s["step"] for s in steps if s.get("outcome") in ("escalated", "decided")}
        completed = self.workflow.completed(wf)
        for task in completed:
            name = task.task_spec.name
            if name.endswith("_escalate") and name not in recorded:
                recorded.add(name)
                steps.append({"step": name, "title": "超时督办", "at": now.isoformat(),
                              "department": task.task_spec.lane or row["department"], "outcome": "escalated"})
                row["escalated"] = True
            elif type(task.task_spec).__name__ == "BusinessRuleTask" and name not in recorded:
                recorded.add(name)
                instant = bool(task.data.get("instant"))
                steps.append({"step": name, "title": "秒批规则", "at": now.isoformat(),
                              "department": task.task_spec.lane or row["department"], "outcome": "decided",
                              "comment": str(task.data.get("instant_reason", ""))[:200], "instant": instant})
        row["steps"] = steps
        if wf.is_completed():
            row["status"] = m.REJECTED if rejected else m.APPROVED
            row["completed_at"] = now
            row["handling_seconds"] = (now - as_utc(row["submitted_at"])).total_seconds()
            row["next_timer_at"] = None
            if not rejected and not row["instant"] and \
                    any(t.task_spec.name == "auto_approve" for t in completed):
                row["instant"] = True
                steps.append({"step": "auto_approve", "title": "自动核准(秒批)", "at": now.isoformat(),
                              "department": row["department"], "outcome": "approved"})
            if row["paused_since"] is not None:
                self._resume(row, now)
        else:
            lanes = {t.task_spec.lane for t in ready.values()}
            row["status"] = m.SUPPLEMENT if APPLICANT_LANE in lanes else m.IN_REVIEW
            if row["status"] == m.SUPPLEMENT and row["paused_since"] is None:
                row["paused_since"] = now
            nxt = self.workflow.next_timer(wf)
            row["next_timer_at"] = nxt
        row["updated_at"] = now
        return new_tasks, cancelled

    def _resume(self, row: dict[str, Any], now: datetime) -> None:
        since = as_utc(row["paused_since"])
        row["paused_days"] = int(row["paused_days"]) + self.calendar.working_days_between(
            self.calendar.local_date(since), self.calendar.local_date(now))
        row["paused_since"] = None
        row["due_at"] = self.calendar.due_at(as_utc(row["submitted_at"]), int(row["limit_days"]),
                                             int(row["paused_days"]))

    async def _load(self, tenant: str, app_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int,
                                                             dict[str, Any]]:
        """The application row, its open tasks, the workflow version and the decoded state (spec loaded)."""
        async with self._read() as conn:
            row = (await conn.execute(select(m.applications).where(
                m.applications.c.id == app_id, m.applications.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no application {app_id!r}")
            wf_row = (await conn.execute(select(m.workflows.c.version, m.workflows.c.state).where(
                m.workflows.c.application_id == app_id))).first()
            open_rows = (await conn.execute(select(m.tasks).where(
                m.tasks.c.application_id == app_id, m.tasks.c.status == "open"))).mappings().all()
            if wf_row is None:
                raise Conflict(f"application {app_id} has no workflow state")
            state = self.workflow.decode(bytes(wf_row[1]))
            ref = self.workflow.needed_spec(state)
            if ref is not None and not self.workflow.has_spec(ref):
                doc = (await conn.execute(select(m.workflow_specs.c.doc).where(
                    m.workflow_specs.c.ref == ref))).scalar_one_or_none()
                if doc is None:
                    raise Conflict(f"application {app_id}: its process definition {ref[:12]}… is missing")
                self.workflow.add_spec_doc(ref, bytes(doc))
                self._stored_specs.add(ref)
        return dict(row), {r["id"]: dict(r) for r in open_rows}, int(wf_row[0]), state

    async def _save(self, row: dict[str, Any], wf: Any, version: int, new_tasks: list[dict[str, Any]],
                    cancelled: list[str], completed: list[tuple[str, dict[str, Any]]]) -> None:
        blob = self.workflow.dump(wf)
        now = row["updated_at"]
        async with self.write() as conn:
            stored = await self._store_spec(conn, wf.spec)
            done = await conn.execute(update(m.workflows).where(
                m.workflows.c.application_id == row["id"], m.workflows.c.version == version).values(
                version=version + 1, state=blob, updated_at=now))
            if done.rowcount != 1:
                raise Conflict("the application changed meanwhile; reload and try again")
            for task_id, values in completed:
                result = await conn.execute(update(m.tasks).where(
                    m.tasks.c.id == task_id, m.tasks.c.status == "open").values(**values))
                if result.rowcount != 1:
                    raise Conflict(f"task {task_id} is no longer open")
            if cancelled:
                await conn.execute(update(m.tasks).where(m.tasks.c.id.in_(cancelled), m.tasks.c.status == "open")
                                   .values(status="cancelled", completed_at=now))
            if new_tasks:
                await conn.execute(m.tasks.insert(), new_tasks)
            values = {k: row[k] for k in ("status", "instant", "escalated", "form", "materials", "steps",
                                           "licence_ids", "outcome_reason", "paused_days", "paused_since",
                                           "due_at", "completed_at", "handling_seconds", "next_timer_at",
                                           "updated_at")}
            await conn.execute(update(m.applications).where(m.applications.c.id == row["id"]).values(**values))
            await conn.execute(update(m.tasks).where(m.tasks.c.application_id == row["id"],
                                                     m.tasks.c.status == "open").values(due_at=row["due_at"]))
            wake = await self._record_timer_events(conn, row, wf)
        if stored:
            self._stored_specs.add(stored)
        if wake:
            self._peer("notifier").wake()

    async def _after_change(self, row: dict[str, Any], svc: Service, principal: Principal | None,
                            submitted: bool = False) -> dict[str, Any]:
        """Side effects after a committed change: licence, notifications, event."""
        tenant, applicant = row["tenant"], row["applicant"]
        notified = int(row.pop("_notified", 0))  # notices already written with the new application
        if submitted and notified < 1:
            await self._notify(tenant, applicant, *self._receipt_notice(row, svc))
        if row["status"] == m.APPROVED and svc.definition.licence and not row["licence_ids"]:
            await self._issue_licence(row, svc)
        final = self._final_notice(row, svc)
        if final is not None and not (submitted and notified >= 2):
            await self._notify(tenant, applicant, *final)
        await self._publish(row)
        return self.view(row, svc)

    async def _issue_licence(self, row: dict[str, Any], svc: Service) -> None:
        licences = self._peer("licences")
        spec = svc.definition.licence
        if licences is None or spec is None:
            return
        form = row["form"]
        subject = {k: _licence_value(v) for k, v in form.items() if spec.subject is None or k in spec.subject}
        try:
            doc = await licences.issue(row["tenant"], row["applicant"], spec.type, subject,
                                       svc.definition.department, row["id"])
        except Exception:
            log.exception("licence issuance failed for application %s", row["id"])
            return
        licence_id = doc.get("id") if isinstance(doc, dict) else getattr(doc, "id", None)
        if not licence_id:
            return
        row["licence_ids"] = [*row["licence_ids"], licence_id]
        row["steps"] = [*row["steps"], {"step": "licence", "title": "电子证照签发", "at": clock.now().isoformat(),
                                        "department": svc.definition.department, "outcome": "issued"}]
        async with self.write() as conn:
            await conn.execute(update(m.applications).where(m.applications.c.id == row["id"]).values(
                licence_ids=row["licence_ids"], steps=row["steps"]))
        await self._notify(row["tenant"], row["applicant"], f"电子证照已签发:{svc.definition.name}",
                           f"证照编号 {licence_id} 已存入您的卡包。")

    # ------------------------------------------------------------------ task actions

    async def act(self, principal: Principal, tenant: str, task_id: str, action: str, body: Any,
                  check: Check) -> dict[str, Any]:
        if action not in TASK_OUTCOMES:
            raise ResourceNotFound(f"no task action {action!r}")
        task = await self._task_row(tenant, task_id)
        await check("task.act", Resource("task", tenant, id=task_id, department=task["department"]))
        if task["department"] == APPLICANT_LANE:
            raise Forbidden("this task is the applicant's (补正); they answer it through /supplement")
        if task["status"] != "open":
            raise Conflict(f"task {task_id} is {task['status']}")
        body = body if isinstance(body, dict) else {}
        reason = body.get("reason") if action != "approve" else body.get("comment")
        if reason is not None and not isinstance(reason, str):
            raise FieldErrors([{"field": "reason" if action != "approve" else "comment", "message": "must be text"}])
        reason = (reason or "").strip()[:2000]
        if action != "approve" and not reason:
            raise FieldErrors([{"field": "reason", "message": f"{action} needs a reason"}])
        outcome = TASK_OUTCOMES[action]
        row, open_tasks, version, state = await self._load(tenant, task["application_id"])
        svc = await self.service(tenant, row["service_code"])
        wf = self.workflow.restore(state)
        now = clock.now()
        ready = {str(t.id) for t in self.workflow.ready_user_tasks(wf)}
        if task_id not in ready:
            raise Conflict(f"task {task_id} is not ready in the workflow")
        self.workflow.complete(wf, task_id, {f"{task['name']}_decision": outcome, "decision": outcome})
        if outcome == "reject":
            row["outcome_reason"] = reason
        step = {"step": task["name"], "title": task["title"], "at": now.isoformat(), "department": task["department"],
                "outcome": outcome}
        if reason:
            step["comment"] = reason
        row["steps"] = [*row["steps"], step]
        open_tasks.pop(task_id, None)
        new_tasks, cancelled = self._reconcile(row, svc, wf, open_tasks, now, rejected=outcome == "reject")
        if row["status"] == m.SUPPLEMENT:  # 补正: the clock stops on every branch until the applicant answers
            freeze_timers(wf, as_utc(row["due_at"]))
            row["next_timer_at"] = None
        await self._save(row, wf, version, new_tasks, cancelled, [(task_id, {
            "status": "completed", "outcome": outcome, "comment": reason or None, "actor": principal.id,
            "completed_at": now})])
        if outcome == "supplement":
            await self._notify(tenant, row["applicant"], f"请补正材料:{svc.definition.name}",
                               f"受理号 {row['receipt']} 需要补正:{reason}")
        return await self._after_change(row, svc, principal)

    async def supplement(self, principal: Principal, tenant: str, app_id: str, body: Any,
                         check: Check) -> dict[str, Any]:
        row, open_tasks, version, state = await self._load(tenant, app_id)
        await check("application.submit", Resource("application", tenant, id=app_id, owner=row["applicant"],
                                                   department=row["department"]))
        if row["status"] != m.SUPPLEMENT:
            raise Conflict(f"application {app_id} is {row['status']}; no supplement was asked for")
        body = body if isinstance(body, dict) else {}
        patch = body.get("form", {})
        if not isinstance(patch, dict):
            raise FieldErrors([{"field": "form", "message": "must be an object"}])
        svc = await self.service(tenant, row["service_code"])
        form = {**row["form"], **patch}
        errors = form_errors(svc.validator, form)
        given = body.get("materials", [])
        new_materials, material_errors = await self._materials(svc, principal, tenant, given)
        # Only the materials given now are re-checked; the rest stay as submitted.
        material_errors = [e for e in material_errors if not e["message"].startswith("missing required")]
        if errors or material_errors:
            raise FieldErrors(errors + material_errors)
        replaced = {x["name"] for x in new_materials}
        row["form"] = form
        row["materials"] = [x for x in row["materials"] if x["name"] not in replaced] + new_materials
        wf = self.workflow.restore(state)
        now = clock.now()
        paused_before = int(row["paused_days"])
        self._resume(row, now)
        # Every branch's timers move on by the paused working days, not only the asking branch's.
        thaw_timers(wf, self.calendar, int(row["paused_days"]) - paused_before, row["due_at"])
        applicant_tasks = [t for t in self.workflow.ready_user_tasks(wf) if t.task_spec.lane == APPLICANT_LANE]
        completed = []
        for task in applicant_tasks:
            self.workflow.complete(wf, str(task.id), {"form": form, "deadline_at": row["due_at"].isoformat()})
            open_tasks.pop(str(task.id), None)
            completed.append((str(task.id), {"status": "completed", "outcome": "supplied", "actor": principal.id,
                                             "completed_at": now}))
        row["steps"] = [*row["steps"], {"step": "supplement", "title": "申请人补正", "at": now.isoformat(),
                                        "department": APPLICANT_LANE, "outcome": "supplied"}]
        new_tasks, cancelled = self._reconcile(row, svc, wf, open_tasks, now)
        await self._save(row, wf, version, new_tasks, cancelled, completed)
        return await self._after_change(row, svc, principal)

    # ------------------------------------------------------------------ timers

    async def sweep(self, now: datetime | None = None) -> int:
        """Fire due BPMN timers (escalation on the deadline); returns how many applications moved."""
        now = now or clock.now()
        async with self._read() as conn:
            # Not paused cases (补正): their clock stands still, and so do their timers.
            rows = (await conn.execute(select(m.applications.c.tenant, m.applications.c.id).where(
                m.applications.c.next_timer_at <= now, m.applications.c.status == m.IN_REVIEW)
                .order_by(m.applications.c.next_timer_at).limit(500))).all()
        moved = 0
        for tenant, app_id in rows:
            try:
                row, open_tasks, version, state = await self._load(tenant, app_id)
                svc = await self.service(tenant, row["service_code"])
                wf = self.workflow.restore(state)
                self.workflow.advance(wf)
                before = len(row["steps"])
                new_tasks, cancelled = self._reconcile(row, svc, wf, open_tasks, now)
                await self._save(row, wf, version, new_tasks, cancelled, [])
            except Conflict:
                continue
            except Exception:
                log.exception("timer sweep failed for application %s", app_id)
                continue
            moved += 1
            if len(row["steps"]) != before:
                await self.bus.publish("services.application.escalated",
                                       {"tenant": tenant, "application": self._summary(row)})
                await self._publish(row)
        return moved

    async def _record_timer_events(self, conn: AsyncConnection, row: dict[str, Any], wf: Any) -> bool:
        """The step's newly fired timers (warning / escalation / overdue): one `svc_timer_events` row each
        and a notice to the responsible department's staff and to the supervisors, in the step's own
        transaction. A firing is known by its timer task id, so it is told once: not again on the next
        sweep tick, by a racing sweeper (its step conflicts and rolls back) or after a restart.
        Returns whether e-mail / SMS deliveries were queued (the caller wakes the notifier)."""
        fired = fired_timers(wf)
        if not fired:
            return False
        e = m.timer_events
        known = set((await conn.execute(select(e.c.event_id).where(e.c.application_id == row["id"]))).scalars())
        fresh = [f for f in fired if f.event_id not in known]
        if not fresh:
            return False
        notifier = self._peer("notifier")
        svc = self.services.get(row["service_code"])
        name = svc.definition.name if svc else row["service_code"]
        wake = False
        for event in fresh:
            department = event.lane if event.lane and event.lane != APPLICANT_LANE else row["department"]
            notified: list[str] = []
            if notifier is not None and hasattr(notifier, "department_recipients"):
                for who in await notifier.department_recipients(conn, row["tenant"], department):
                    subject, body, link = self._timer_notice(row, name, event, department, who.role)
                    result = await notifier.notify(row["tenant"], who.user_id, subject, body, email=who.email,
                                                   phone=who.phone, link=link, conn=conn)
                    wake = wake or bool(result.get("deliveries"))
                    notified.append(who.user_id)
            await conn.execute(e.insert().values(
                application_id=row["id"], event_id=event.event_id, tenant=row["tenant"], kind=event.kind,
                name=event.name[:128], department=department, due_at=event.due_at, fired_at=row["updated_at"],
                notified=notified))
        return wake

    def _timer_notice(self, row: dict[str, Any], name: str, event: FiredTimer, department: str,
                      role: str) -> tuple[str, str, str]:
        label = TIMER_LABELS.get(event.kind, "超时督办")
        due = event.due_at or as_utc(row["due_at"])
        due_text = due.astimezone(self.calendar.tz).strftime("%Y-%m-%d %H:%M")
        what = f"{name}「{event.title}」(受理号 {row['receipt']},承办部门 {department})"
        if event.kind == "warning":
            text = f"{what}临近承诺时限 {due_text},请及时办理。"
        else:
            text = f"{what}已超过承诺时限 {due_text},请尽快办理。"
        if role == "supervisor":
            return f"督办提醒·{label}:{name}", f"{text}请督促{department}办结。", "/supervision"
        return f"{label}:{name}", text, "/workbench"

    # ------------------------------------------------------------------ reads

    def deadline(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.calendar.deadline(submitted_at=as_utc(row["submitted_at"]), limit_days=int(row["limit_days"]),
                                      paused_days=int(row["paused_days"]),
                                      paused_since=as_utc_or_none(row["paused_since"]),
                                      completed_at=as_utc_or_none(row["completed_at"]), now=clock.now())

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"id": row["id"], "receipt": row["receipt"], "serviceCode": row["service_code"],
                "department": row["department"], "applicant": row["applicant"], "status": row["status"],
                "instant": bool(row["instant"]), "channel": row["channel"], "bundleId": row["bundle_id"],
                "submittedAt": _iso(row["submitted_at"]), "completedAt": _iso(row["completed_at"]),
                "licenceIds": list(row["licence_ids"] or [])}

    def view(self, row: dict[str, Any], svc: Service | None = None,
             open_tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out = self._summary(row)
        out.update({"serviceName": svc.definition.name if svc else None, "form": row["form"],
                    "materials": row["materials"], "steps": row["steps"], "deadline": self.deadline(row),
                    "escalated": bool(row["escalated"]), "outcomeReason": row["outcome_reason"]})
        if open_tasks is not None:
            out["openTasks"] = [{"id": t["id"], "step": t["name"], "title": t["title"],
                                 "department": t["department"]} for t in open_tasks]
        return out

    async def _task_row(self, tenant: str, task_id: str) -> dict[str, Any]:
        async with self._read() as conn:
            task = (await conn.execute(select(m.tasks).where(
                m.tasks.c.id == task_id, m.tasks.c.tenant == tenant))).mappings().first()
        if task is None:
            raise ResourceNotFound(f"no task {task_id!r}")
        return dict(task)

    @staticmethod
    def _read_resource(principal: Principal | None, tenant: str, row: Any, task_departments: Iterable[str]) -> Resource:
        """The resource `application.read` is checked on: the application's department, or, for staff,
        whichever involved department (the lead's or a task's) is one of theirs."""
        department = row["department"]
        if principal is not None and principal.role in STAFF_ROLES:
            involved = set(task_departments) | {department}
            department = next((d for d in sorted(involved, key=str) if d in principal.departments), department)
        return Resource("application", tenant, id=row["id"], department=department, owner=row["applicant"])

    async def application(self, principal: Principal | None, tenant: str, app_id: str,
                          check: Check) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(select(m.applications).where(
                m.applications.c.id == app_id, m.applications.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no application {app_id!r}")
            task_rows = (await conn.execute(select(m.tasks).where(m.tasks.c.application_id == app_id)
                                            .order_by(m.tasks.c.created_at))).mappings().all()
        await check("application.read", self._read_resource(principal, tenant, row,
                                                            (t["department"] for t in task_rows)))
        svc = self.services.get(row["service_code"])
        return self.view(dict(row), svc, [dict(t) for t in task_rows if t["status"] == "open"])

    async def applications(self, principal: Principal, tenant: str, *, status: str | None, limit: int,
                           offset: int, group: str | None = None) -> dict[str, Any]:
        """The applications the caller may list, newest first. With ``group="case"`` a one-thing bundle
        (一件事) is one item (kind ``bundle``: its overall status, progress and member applications, and
        the link to its page) and paging counts cases; other items are kind ``application``."""
        a = m.applications
        query = select(a).where(a.c.tenant == tenant)
        if principal.role in (Role.CITIZEN, Role.ENTERPRISE):
            query = query.where(a.c.applicant == principal.id)
        elif principal.role in (Role.OFFICIAL, Role.DEPT_ADMIN):
            depts = sorted(principal.departments)
            involved = select(m.tasks.c.application_id).where(m.tasks.c.tenant == tenant,
                                                              m.tasks.c.department.in_(depts))
            query = query.where(or_(a.c.department.in_(depts), a.c.id.in_(involved)))
        elif principal.role not in (Role.AUDITOR, Role.SYS_ADMIN):
            raise Forbidden(f"role {principal.role} may not list applications")
        if group == "case":
            return await self._cases(query, tenant, status, limit, offset)
        if status:
            query = query.where(a.c.status == status)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(a.c.submitted_at.desc(), a.c.id)
                                       .limit(limit).offset(offset))).mappings().all()
        items = []
        for r in rows:
            item = self._summary(dict(r))
            item["deadline"] = self.deadline(dict(r))
            items.append(item)
        return {"items": items, "limit": limit, "offset": offset}

    async def _cases(self, query: Any, tenant: str, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        """`applications` grouped by case: a bundle's members under one item (see `applications`)."""
        a = m.applications
        key = func.coalesce(a.c.bundle_id, a.c.id)
        keyed = query.where(a.c.status == status) if status else query
        page = (keyed.with_only_columns(key.label("case_key"), func.max(a.c.submitted_at).label("latest"))
                .group_by(key).order_by(literal_column("latest").desc(), literal_column("case_key"))
                .limit(limit).offset(offset))
        async with self._read() as conn:
            keys = [k for k, _ in (await conn.execute(page)).all()]
            rows = (await conn.execute(query.where(or_(a.c.id.in_(keys), a.c.bundle_id.in_(keys)))
                                       .order_by(a.c.submitted_at, a.c.id))).mappings().all() if keys else []
            found_cases = (await conn.execute(select(m.bundles).where(
                m.bundles.c.tenant == tenant, m.bundles.c.id.in_(keys)))).mappings().all() if keys else []
        cases = {r["id"]: dict(r) for r in found_cases}
        members: dict[str, list[dict[str, Any]]] = {}
        for found_row in rows:
            members.setdefault(found_row["bundle_id"] or found_row["id"], []).append(dict(found_row))
        items: list[dict[str, Any]] = []
        for k in keys:
            case, bundle = cases.get(k), None
            if case is not None:
                bundle = self.bundles.get(case["bundle_code"])
            found = members.get(k, [])
            if case is None or bundle is None:  # a plain application (or a case being created right now)
                for r in found:
                    items.append({"kind": "application", **self._summary(r), "deadline": self.deadline(r)})
                continue
            order = {app_id: i for i, app_id in enumerate(case["application_ids"])}
            found.sort(key=lambda r: order.get(r["id"], len(order)))
            views = [{**self._summary(r), "deadline": self.deadline(r)} for r in found]
            item = self._bundle_view(k, bundle, case["applicant"], views, as_utc(case["created_at"]))
            names = {v["id"]: self.services[v["serviceCode"]].definition.name
                     for v in views if v["serviceCode"] in self.services}
            for view in item["applications"]:
                view["serviceName"] = names.get(view["id"])
            done = sum(1 for v in views if v["status"] in (m.APPROVED, m.REJECTED))
            item.update({"kind": "bundle", "nameEn": bundle.definition.name_en, "submittedAt": item["createdAt"],
                         "progress": {"completed": done, "total": len(views)},
                         "link": f"/portal/bundles/{k}"})
            items.append(item)
        return {"items": items, "limit": limit, "offset": offset, "group": "case"}

    def _task_item(self, t: Any) -> dict[str, Any]:
        app_row = {"submitted_at": t["submitted_at"], "limit_days": t["limit_days"], "paused_days": t["paused_days"],
                   "paused_since": t["paused_since"], "completed_at": t["app_completed_at"]}
        return {"id": t["id"], "applicationId": t["application_id"], "receipt": t["receipt"],
                "serviceCode": t["service_code"], "step": t["name"], "title": t["title"],
                "department": t["department"], "status": t["status"], "outcome": t["outcome"],
                "createdAt": _iso(t["created_at"]), "dueAt": _iso(t["due_at"]),
                "completedAt": _iso(t["completed_at"]), "applicationStatus": t["app_status"],
                "deadline": self.deadline(app_row)}

    def _task_query(self) -> Any:
        t, a = m.tasks, m.applications
        return select(t, a.c.receipt, a.c.service_code, a.c.submitted_at, a.c.limit_days, a.c.paused_days,
                      a.c.paused_since, a.c.completed_at.label("app_completed_at"),
                      a.c.status.label("app_status")).select_from(t.join(a, a.c.id == t.c.application_id))

    def _inbox_statement(self, status: str) -> Any:
        """The inbox query for `status`, built once: bind parameters, and for open tasks the literal
        ``status = 'open'`` (so PostgreSQL can use the partial index `ix_svc_tasks_open` also under a
        generic plan) with the open total as a scalar subquery (one round trip, no COUNT over history)."""
        stmt = self._inbox_statements.get(status)
        if stmt is not None:
            return stmt
        t = m.tasks
        where = [t.c.tenant == bindparam("tenant"), t.c.department.in_(bindparam("depts", expanding=True))]
        if status == "open":
            where.append(t.c.status == literal_column("'open'"))
        elif status != "all":
            where.append(t.c.status == bindparam("status"))
        order = [t.c.due_at, t.c.id] if status == "open" else [t.c.due_at.desc(), t.c.id]
        query = self._task_query()
        if status == "open":
            total = select(func.count()).select_from(t).where(*where).scalar_subquery()
            query = query.add_columns(total.label("open_total"))
        stmt = query.where(*where).order_by(*order).limit(bindparam("limit")).offset(bindparam("offset"))
        self._inbox_statements[status] = stmt
        return stmt

    async def inbox(self, principal: Principal, tenant: str, *, status: str, limit: int, offset: int,
                    department: str | None = None) -> dict[str, Any]:
        t = m.tasks
        depts = sorted(principal.departments)
        if department is not None:
            if department not in principal.departments:
                raise Forbidden(f"department {department!r} is not yours")
            depts = [department]
        if not depts:
            return {"items": [], "total": 0, "limit": limit, "offset": offset}
        params = {"tenant": tenant, "depts": depts, "limit": limit, "offset": offset, "status": status}
        async with self._read() as conn:
            rows = (await conn.execute(self._inbox_statement(status), params)).mappings().all()
            total = None
            if status == "open":
                if rows:
                    total = int(rows[0]["open_total"])
                elif offset == 0:
                    total = 0
                else:  # a page past the end: the total still counts the open tasks
                    total = (await conn.execute(select(func.count()).select_from(t).where(
                        t.c.tenant == tenant, t.c.department.in_(depts), t.c.status == "open"))).scalar_one()
        return {"items": [self._task_item(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    async def task(self, principal: Principal, tenant: str, task_id: str, check: Check) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(self._task_query().where(
                m.tasks.c.id == task_id, m.tasks.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no task {task_id!r}")
            app_row = (await conn.execute(select(m.applications).where(
                m.applications.c.id == row["application_id"]))).mappings().one()
        await check("task.act", Resource("task", tenant, id=task_id, department=row["department"]))
        item = self._task_item(dict(row))
        svc = self.services.get(app_row["service_code"])
        item.update({"form": app_row["form"], "materials": app_row["materials"],
                     "verifiedLicences": [x for x in app_row["materials"] if x.get("kind") == "licence"],
                     "steps": app_row["steps"], "applicant": app_row["applicant"],
                     "serviceName": svc.definition.name if svc else None,
                     "formSchema": svc.definition.form if svc else None,
                     "actions": ["approve", "reject", "request-supplement"] if row["status"] == "open" else []})
        return item

    async def upload_blob(self, principal: Principal, tenant: str, upload_id: str,
                          check: Check) -> tuple[bytes, str, list[str]]:
        """The bytes of an upload, for whoever may read it: its uploader, or anyone who may read an
        application it is attached to (the same `application.read` check as reading the application).
        An upload attached to nothing yet is its uploader's alone. Returns (bytes, content type, ids of
        the applications it belongs to) so that the caller can audit the download."""
        async with self._read() as conn:
            row = (await conn.execute(select(m.uploads).where(
                m.uploads.c.id == upload_id, m.uploads.c.tenant == tenant))).mappings().first()
            attached: list[Any] = []
            tasks: dict[str, list[str]] = {}
            if row is not None and row["owner"] != principal.id:
                # Materials are always the applicant's own uploads (see `_materials`), so the
                # applications holding this one are among its owner's (served by the applicant index).
                candidates = (await conn.execute(select(
                    m.applications.c.id, m.applications.c.department, m.applications.c.applicant,
                    m.applications.c.materials).where(m.applications.c.tenant == tenant,
                                                      m.applications.c.applicant == row["owner"]))).mappings().all()
                attached = [a for a in candidates if _holds_upload(a["materials"], upload_id)]
                if attached:
                    for app_id, dept in (await conn.execute(select(m.tasks.c.application_id, m.tasks.c.department)
                                                            .where(m.tasks.c.application_id.in_(
                                                                [a["id"] for a in attached])))).all():
                        tasks.setdefault(app_id, []).append(dept)
        if row is None or (row["owner"] != principal.id and not attached):
            raise ResourceNotFound(f"no upload {upload_id!r}")
        if row["owner"] != principal.id:
            resources = [self._read_resource(principal, tenant, a, tasks.get(a["id"], ())) for a in attached]
            allowed = next((r for r in resources if authorize(principal, "application.read", r)), None)
            # The refusal goes through `check` (audited, 403) with the first application's resource.
            await check("application.read", allowed or resources[0])
        data = await asyncio.to_thread(self._blob_path(row["sha256"]).read_bytes)
        return data, row["content_type"], [a["id"] for a in attached]

    # ------------------------------------------------------------------ bundles

    async def submit_bundle(self, principal: Principal, tenant: str, body: Any, check: Check) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("bundleCode"), str):
            raise FieldErrors([{"field": "bundleCode", "message": "required"}])
        bundle = self.bundles.get(body["bundleCode"])
        if bundle is None:
            raise ResourceNotFound(f"no bundle {body['bundleCode']!r}")
        await check("application.submit", Resource("application", tenant, owner=principal.id))
        form = body.get("form")
        if not isinstance(form, dict):
            raise FieldErrors([{"field": "form", "message": "must be an object"}])
        errors = form_errors(Draft202012Validator(bundle.form), form)
        plans: list[tuple[Service, dict[str, Any], list[dict[str, Any]]]] = []
        given = body.get("materials") or []
        if not isinstance(given, list):
            raise FieldErrors([{"field": "materials", "message": "must be a list"}])
        for member in bundle.definition.services:
            svc = self.services[member.code]
            wanted = set(svc.definition.form.get("properties", {}))
            sub_form = {k: v for k, v in form.items() if k in wanted}
            for target, source in member.map.items():
                if source in form:
                    sub_form[target] = form[source]
            names = {mat.name for mat in svc.definition.materials}
            sub_materials = [g for g in given if isinstance(g, dict) and g.get("name") in names]
            materials, sub_errors = await self._validate_submission(svc, principal, tenant, sub_form, sub_materials,
                                                                    prefix=f"{member.code}.")
            errors.extend(e for e in sub_errors if e not in errors)
            plans.append((svc, sub_form, materials))
        if errors:
            raise FieldErrors(errors)
        case_id = uuid.uuid4().hex
        now = clock.now()
        ids = []
        rows = []
        for svc, sub_form, materials in plans:
            row = await self._start(svc, principal, tenant, sub_form, materials, body.get("channel", "online"), case_id)
            ids.append(row["id"])
            rows.append((row, svc))
        async with self.write() as conn:
            await conn.execute(m.bundles.insert().values(id=case_id, tenant=tenant, bundle_code=bundle.code,
                                                         applicant=principal.id, application_ids=ids, created_at=now))
        views = [await self._after_change(row, svc, principal, submitted=True) for row, svc in rows]
        return self._bundle_view(case_id, bundle, principal.id, views, now)

    def _bundle_view(self, case_id: str, bundle: Bundle, applicant: str, views: list[dict[str, Any]],
                     created: datetime) -> dict[str, Any]:
        statuses = {v["status"] for v in views}
        if statuses == {m.APPROVED}:
            status = m.APPROVED
        elif m.REJECTED in statuses:
            status = "partially_rejected" if m.APPROVED in statuses or statuses & set(m.OPEN_STATUSES) else m.REJECTED
        elif m.SUPPLEMENT in statuses:
            status = m.SUPPLEMENT
        else:
            status = m.IN_REVIEW
        return {"caseId": case_id, "bundleCode": bundle.code, "name": bundle.definition.name, "applicant": applicant,
                "status": status, "createdAt": as_utc(created).isoformat(),
                "applications": [{k: v[k] for k in ("id", "receipt", "serviceCode", "department", "status",
                                                     "deadline", "licenceIds")} for v in views]}

    async def bundle(self, principal: Principal | None, tenant: str, case_id: str, check: Check) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(select(m.bundles).where(
                m.bundles.c.id == case_id, m.bundles.c.tenant == tenant))).mappings().first()
            if row is None:
                raise ResourceNotFound(f"no case {case_id!r}")
            apps = (await conn.execute(select(m.applications).where(
                m.applications.c.id.in_(list(row["application_ids"]))))).mappings().all()
        bundle = self.bundles.get(row["bundle_code"])
        if bundle is None:
            raise ResourceNotFound(f"bundle {row['bundle_code']!r} is no longer offered")
        if principal is not None and principal.role in STAFF_ROLES:
            department = next((a["department"] for a in apps if a["department"] in principal.departments), None)
        else:
            department = None
        await check("application.read", Resource("application", tenant, id=case_id, owner=row["applicant"],
                                                 department=department or (apps[0]["department"] if apps else None)))
        order = {app_id: i for i, app_id in enumerate(row["application_ids"])}
        views = [self.view(dict(a)) for a in sorted(apps, key=lambda a: order[a["id"]])]
        return self._bundle_view(case_id, bundle, row["applicant"], views, as_utc(row["created_at"]))

    # ------------------------------------------------------------------ supervision and metrics

    async def overdue(self, principal: Principal, tenant: str, department: str | None, limit: int) -> dict[str, Any]:
        a = m.applications
        now = clock.now()
        where = [a.c.tenant == tenant, a.c.status == m.IN_REVIEW, a.c.due_at < now]
        if department:
            where.append(a.c.department == department)
        if principal.role in (Role.DEPT_ADMIN, Role.OFFICIAL):
            where.append(a.c.department.in_(sorted(principal.departments)))
        async with self._read() as conn:
            rows = (await conn.execute(select(a).where(*where).order_by(a.c.due_at).limit(limit))).mappings().all()
            counts = (await conn.execute(select(a.c.department, func.count()).where(*where)
                                         .group_by(a.c.department))).all()
            open_tasks = (await conn.execute(select(m.tasks.c.application_id, m.tasks.c.department).where(
                m.tasks.c.application_id.in_([r["id"] for r in rows]), m.tasks.c.status == "open"))).all()
        waiting: dict[str, list[str]] = {}
        for app_id, dept in open_tasks:
            waiting.setdefault(app_id, []).append(dept)
        items = []
        for r in rows:
            d = self.deadline(dict(r))
            items.append({"id": r["id"], "receipt": r["receipt"], "serviceCode": r["service_code"],
                          "department": r["department"], "dueAt": _iso(r["due_at"]), "deadline": d,
                          "overdueDays": max(0, -int(d["leftDays"])), "escalated": bool(r["escalated"]),
                          "waitingOn": sorted(set(waiting.get(r["id"], [])))})
        return {"asOf": now.isoformat(), "byDepartment": {dept: n for dept, n in counts}, "items": items}

    async def metrics(self, principal: Principal | None, tenant: str, by: str) -> dict[str, Any]:
        """Per service or department. A caller whose `supervision.read` is department-scoped (a
        dept_admin) sees only its own departments' applications and ratings."""
        a = m.applications
        departments = None if scope_for(role_of(principal), "supervision.read") in (Scope.TENANT, Scope.ALL) \
            else sorted(principal.departments if principal is not None else ())
        key = a.c.service_code if by == "service" else a.c.department
        now = clock.now()
        overdue = case((and_(a.c.completed_at.is_not(None), a.c.completed_at > a.c.due_at), 1),
                       (and_(a.c.completed_at.is_(None), a.c.status == m.IN_REVIEW, a.c.due_at < now), 1), else_=0)
        query = select(key.label("key"), func.count().label("total"),
                       func.sum(case((a.c.channel == "online", 1), else_=0)).label("online"),
                       func.sum(case((a.c.instant.is_(True), 1), else_=0)).label("instant"),
                       func.sum(case((a.c.completed_at.is_not(None), 1), else_=0)).label("completed"),
                       func.avg(a.c.handling_seconds).label("avg_seconds"),
                       func.sum(overdue).label("overdue"),
                       func.sum(a.c.trips_saved).label("trips_saved")).where(a.c.tenant == tenant).group_by(key)
        if departments is not None:
            query = query.where(a.c.department.in_(departments))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        satisfaction = await self._satisfaction(tenant, departments)
        items = []
        for r in rows:
            total = int(r["total"])
            items.append({by: r["key"], "applications": total, "completed": int(r["completed"] or 0),
                          "onlineRate": round(int(r["online"] or 0) / total, 4),
                          "averageHandlingMinutes": None if r["avg_seconds"] is None
                          else round(float(r["avg_seconds"]) / 60, 2),
                          "instantShare": round(int(r["instant"] or 0) / total, 4),
                          "overdueRate": round(int(r["overdue"] or 0) / total, 4),
                          "tripsSaved": int(r["trips_saved"] or 0),
                          "satisfaction": _pick(satisfaction, by, r["key"])})
        items.sort(key=lambda x: str(x[by]))
        return {"by": by, "asOf": now.isoformat(), "items": items, "satisfaction": satisfaction}

    async def _satisfaction(self, tenant: str, departments: list[str] | None = None) -> Any:
        ratings = self._peer("ratings")
        if ratings is None or not hasattr(ratings, "satisfaction"):
            return None
        try:
            return await ratings.satisfaction(tenant, departments)
        except Exception:
            log.exception("ratings.satisfaction failed")
            return None


def _holds_upload(materials: Any, upload_id: str) -> bool:
    return isinstance(materials, list) and any(isinstance(item, dict) and item.get("uploadId") == upload_id
                                               for item in materials)


_JSON_COLUMNS: dict[str, frozenset[str]] = {}
# asyncpg errors after which the connection is not reused (what SQLAlchemy's own error handling would do).
_PG_DISCONNECTS = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError,
                   asyncpg.exceptions.OperatorInterventionError, OSError)


async def _pg_autocommit(db: AsyncEngine, sql: str, params: list[Any]) -> None:
    """One statement on PostgreSQL, committed on its own, on a pooled connection's asyncpg connection directly:
    SQLAlchemy's cursor layer and isolation-level switching cost more CPU than the statement itself. No
    transaction is opened (asyncpg runs a statement outside a block in autocommit), so the pool's reset on
    return has nothing to roll back. asyncpg's statement cache serves the prepared statement."""
    async with db.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        try:
            await driver.execute(sql, *params)
        except _PG_DISCONNECTS:
            await conn.invalidate()
            raise


def _pg_values(table: Any, rows: list[dict[str, Any]], params: list[Any]) -> str:
    """``INSERT INTO table (keys of rows[0]) VALUES ($n, …), …`` appending the values to `params` (asyncpg style:
    JSON columns as JSON text, like SQLAlchemy's asyncpg dialect sends them)."""
    json_cols = _JSON_COLUMNS.get(table.name)
    if json_cols is None:
        json_cols = _JSON_COLUMNS[table.name] = frozenset(c.name for c in table.c if isinstance(c.type, JSON))
    cols = list(rows[0])
    groups = []
    for r in rows:
        marks = []
        for c in cols:
            value = r[c]
            params.append(orjson.dumps(value).decode() if c in json_cols and value is not None else value)
            marks.append(f"${len(params)}")
        groups.append(f"({', '.join(marks)})")
    return f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES {', '.join(groups)}"


def _licence_value(value: Any) -> Any:
    """Signed licences take no floating-point numbers (canonical JSON): integral → int, else text."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        return {k: _licence_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_licence_value(v) for v in value]
    return value


def _pick(satisfaction: Any, by: str, key: str) -> Any:
    """The per-service / per-department figure from a ratings summary, whatever its exact shape."""
    if not isinstance(satisfaction, dict):
        return None
    for name in (f"by{by.capitalize()}", by, f"{by}s", "byDepartment" if by == "department" else "byService"):
        part = satisfaction.get(name)
        if isinstance(part, dict) and key in part:
            return part[key]
        if isinstance(part, list):
            for item in part:
                if isinstance(item, dict) and key in (item.get(by), item.get("code"), item.get("key"),
                                                      item.get("serviceCode")):
                    return item
    return None
