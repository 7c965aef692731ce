"""Audit intents: no committed change goes unaudited, even when the process dies right after its commit.

The audit record of a busy write (a hub entity change) is chained after the change commits, by the
audit writer's group commit: chaining inside the change's transaction would hold the chain head for
the length of every write. Between the two commits a crash would lose the record. So the write
announces its record first:

1. the caller sets the intent (`announce`, a context variable) before the work;
2. the hub's write transaction inserts it into `sec_audit_intents` (`write_pending`), committing with
   the change or not at all;
3. after the full record is chained, the intent row is deleted (`AuditIntents.settle`);
4. an intent older than `CITYOS_AUDIT_INTENT_GRACE_SECONDS` (60) whose record is not in the chain is
   chained as `recovered` (at start and every minute, by any process: a dead process's intents are
   found by the others).

A crash between the chaining and the deletion leaves an intent whose record exists: recovery finds the
record (same action and resource, at or after the intent) and only deletes the intent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_int
from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.tasks import StepGuard
from cityos.security.audit import AuditEvent, AuditLog
from cityos.security.models import audit_intents

log = logging.getLogger(__name__)
RECOVER_EVERY_SECONDS = 60.0


@dataclass
class Intent:
    event: AuditEvent
    row_ids: list[int] = field(default_factory=list)


_PENDING: contextvars.ContextVar[Intent | None] = contextvars.ContextVar("cityos_audit_intent", default=None)


@contextlib.contextmanager
def announce(event: AuditEvent) -> Iterator[Intent]:
    """The audit record the work in this block will need; written by the work's transaction."""
    intent = Intent(event)
    token = _PENDING.set(intent)
    try:
        yield intent
    finally:
        _PENDING.reset(token)


def pending() -> tuple[Intent, dict[str, Any]] | None:
    """The announced intent not yet written in this transaction, with the event to store; None if none.
    A writer that stores it itself (the hub's one-statement update) records the row id on the intent."""
    intent = _PENDING.get()
    if intent is None or intent.row_ids:
        return None
    event = asdict(intent.event)
    event.pop("at", None)
    return intent, event


async def write_pending(conn: AsyncConnection) -> None:
    """Called inside a write transaction just before it commits: persist the announced record once."""
    found = pending()
    if found is None:
        return
    intent, event = found
    row = await conn.execute(insert(audit_intents).values(created_at=clock.now(), event=event)
                             .returning(audit_intents.c.id))
    intent.row_ids.append(int(row.scalar_one()))


class AuditIntents:
    def __init__(self, engine: AsyncEngine, log_: AuditLog, write_lock: asyncio.Lock | None = None) -> None:
        self.engine = engine
        self.audit = log_
        self._lock = write_lock or asyncio.Lock()
        self.grace = timedelta(seconds=env_int("CITYOS_AUDIT_INTENT_GRACE_SECONDS", 60))
        self._steps = StepGuard("audit intents")
        self._task: asyncio.Task[None] | None = None
        # Group settling: the intents settled while a delete transaction runs go together in the next one
        # (one transaction, one commit for many concurrent writes instead of one each).
        self._batch: tuple[list[int], asyncio.Future[None]] | None = None
        self._flushing = asyncio.Lock()
        self._flushes: set[asyncio.Task[None]] = set()

    async def _delete(self, ids: list[int]) -> None:
        async with write_transaction(self.engine, self._lock) as conn:
            await conn.execute(delete(audit_intents).where(audit_intents.c.id.in_(ids)))

    async def settle(self, intent: Intent | None) -> None:
        """The record is chained: the intent is no longer needed (a failure here only costs a later check).
        Returns once its row is deleted, in a transaction shared with the other intents settled meanwhile."""
        if intent is None or not intent.row_ids:
            return
        if self._batch is None:
            self._batch = ([], asyncio.get_running_loop().create_future())
            task = asyncio.create_task(self._flush(), name="audit-intents-settle")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        ids, done = self._batch
        ids.extend(intent.row_ids)
        await asyncio.shield(done)

    async def _flush(self) -> None:
        async with self._flushing:  # one delete at a time: the next batch fills up meanwhile
            assert self._batch is not None
            ids, done = self._batch
            self._batch = None
            try:
                await self._delete(ids)
            except Exception:
                log.warning("could not settle audit intents %s; recovery will", ids, exc_info=True)
            finally:
                done.set_result(None)

    async def recover(self) -> int:
        """Chain the records of intents older than the grace period that never were; returns how many."""
        cutoff = clock.now() - self.grace
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(audit_intents).where(audit_intents.c.created_at < cutoff)
                                       .order_by(audit_intents.c.id).limit(1000))).mappings().all()
        if not rows:
            return 0
        missing: list[AuditEvent] = []
        for row in rows:
            event = _event(row["event"])
            found = await self.audit.recorded(event.action, [event.resource], clock.as_utc(row["created_at"]))
            if event.resource not in found:
                missing.append(AuditEvent(**{**asdict(event), "detail": {**event.detail, "recovered": True,
                                                                         "intentAt": clock.iso(row["created_at"])}}))
        if missing:
            await self.audit.append_many(missing)
            log.warning("recovered %d audit records of changes committed by a process that stopped before "
                        "chaining them", len(missing))
        await self._delete([int(r["id"]) for r in rows])
        return len(missing)

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self._steps.step(self.recover())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("audit intent recovery failed")
                await asyncio.sleep(RECOVER_EVERY_SECONDS)

        self._task = asyncio.create_task(loop(), name="audit-intents")

    async def stop(self) -> None:
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._steps.stop([self._task])


def _event(doc: dict[str, Any]) -> AuditEvent:
    fields = {k: doc[k] for k in ("action", "resource", "outcome", "actor", "actor_kind", "role", "tenant", "ip",
                                  "detail") if k in doc}
    return AuditEvent(**fields)
