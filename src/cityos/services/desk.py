"""The service desk's shared state and plumbing: settings, connections, peers, notices, audit.

No HTTP here. Access checks that need the real resource go through the `Check` callback the API
passes in (it is `security.api.enforce` bound to the request, so refusals are audited).

The desk (`cityos.services.service.ServiceDesk`) is composed of one part per responsibility;
this is the part every other one builds on."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_int
from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import BadRequestData
from cityos.core.events import EventBus
from cityos.security.audit import AuditEvent
from cityos.security.policy import Resource
from cityos.services import models as m
from cityos.services.calendar import WorkCalendar
from cityos.services.catalogue import CATALOGUE_DIR, Service, load_directory
from cityos.services.workflow import Engine

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


class DeskCore:
    """The desk's state (one per process; the rest lives in the database) and its plumbing."""

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

    async def _audit_in(self, conn: AsyncConnection, event: AuditEvent) -> None:
        """The audit record of an administrative write, in the write's own transaction."""
        security = self._peer("security")
        if security is not None:
            await security.audit.append_in(conn, [event])
