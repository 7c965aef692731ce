"""Retention of attribute history: per tenant and per entity type, purged on a schedule.

Which window applies to a history row, most specific first:
1. a policy for its tenant and entity type (`hub_history_retention`, entity_type = the type's IRI);
2. a policy for its tenant (entity_type = "");
3. CITYOS_HISTORY_RETENTION_DAYS; unset, the history is kept forever.

How rows go:
- PostgreSQL: a month partition that ended before the longest window began holds only expired
  rows, so it is detached and dropped whole: no row-by-row delete, no bloat, no vacuum debt. If
  some rows have no window at all (no default), the partition is dropped only when every row in it
  is covered by a policy.
- Everything else (the DEFAULT partition, partly expired months, shorter per-type windows, SQLite)
  is deleted in batches of BATCH rows, each in its own short transaction, so writers never wait long.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import and_, column, delete, exists, func, literal_column, or_, select, table, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from cityos.core import clock
from cityos.core.tasks import StepGuard
from cityos.hub.models import attribute_history
from cityos.hub.partitions import ensure_history_partitions
from cityos.hub.temporal import rollups
from cityos.hub.temporal.models import ALL_TYPES, history_retention
from cityos.hub.temporal.models import temporal_entities as registry

log = logging.getLogger("cityos.retention")

BATCH = 10_000
MAX_DAYS = 36_500
FIRST_RUN_DELAY = 60.0
DEFAULT_INTERVAL = 3600.0
_ADVISORY_KEY = 0x43_49_54_59_48_52  # "CITYHR": one purge at a time across all API workers
_MONTH_PARTITION = re.compile(r"^hub_attribute_history_(\d{4})(\d{2})$")


@dataclass(frozen=True)
class Policy:
    tenant: str
    entity_type: str  # "" for the whole tenant
    days: int


def default_days() -> int | None:
    raw = os.environ.get("CITYOS_HISTORY_RETENTION_DAYS")
    if not raw:
        return None
    days = int(raw)
    return days if days > 0 else None


# ---------------------------------------------------------------------- policies


async def list_policies(conn: AsyncConnection, tenant: str | None = None) -> list[Policy]:
    stmt = select(history_retention).order_by(history_retention.c.tenant, history_retention.c.entity_type)
    if tenant is not None:
        stmt = stmt.where(history_retention.c.tenant == tenant)
    return [Policy(r.tenant, r.entity_type, r.days) for r in await conn.execute(stmt)]


async def set_policy(conn: AsyncConnection, tenant: str, entity_type: str, days: int) -> None:
    stmt = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(history_retention)
    row = {"tenant": tenant, "entity_type": entity_type, "days": days, "updated_at": clock.now()}
    await conn.execute(stmt.values(**row).on_conflict_do_update(
        index_elements=["tenant", "entity_type"], set_={"days": days, "updated_at": row["updated_at"]}))


async def drop_policy(conn: AsyncConnection, tenant: str, entity_type: str) -> bool:
    result = await conn.execute(delete(history_retention).where(
        history_retention.c.tenant == tenant, history_retention.c.entity_type == entity_type))
    return bool(result.rowcount)


# ---------------------------------------------------------------------- which rows are expired


def _history_like(name: str) -> Any:
    """A partition (or the parent) as a lightweight table: the same columns, another name."""
    return table(name, column("tenant"), column("entity_type"), column("ts"), column("entity_id"))


def _covered(t: Any) -> ColumnElement[bool]:
    """The row falls under some policy (of its tenant, or of its tenant and type)."""
    r = history_retention
    return exists().where(r.c.tenant == t.c.tenant,
                          or_(r.c.entity_type == ALL_TYPES, r.c.entity_type == t.c.entity_type))


@dataclass(frozen=True)
class Scope:
    """A disjoint group of rows sharing one retention window."""

    days: int
    tenant: str | None = None  # None: every row no policy covers (the env default)
    entity_type: str | None = None  # None: the whole tenant, minus the types in `excluded`
    excluded: tuple[str, ...] = ()

    def conditions(self, t: Any) -> list[ColumnElement[bool]]:
        if self.tenant is None:
            return [~_covered(t)]
        if self.entity_type is not None:
            return [t.c.tenant == self.tenant, t.c.entity_type == self.entity_type]
        return [t.c.tenant == self.tenant, t.c.entity_type.not_in(self.excluded)]


def scopes(policies: list[Policy], default: int | None) -> list[Scope]:
    typed: dict[str, list[str]] = {}
    for p in policies:
        if p.entity_type != ALL_TYPES:
            typed.setdefault(p.tenant, []).append(p.entity_type)
    found = [Scope(p.days, p.tenant, p.entity_type) if p.entity_type != ALL_TYPES
             else Scope(p.days, p.tenant, None, tuple(typed.get(p.tenant, ()))) for p in policies]
    if default is not None:
        found.append(Scope(default))
    return found


# ---------------------------------------------------------------------- purge


async def purge_expired(engine: AsyncEngine, now: datetime) -> int:
    """Remove the history rows older than their retention window; returns how many went."""
    default = default_days()
    async with engine.connect() as conn:
        policies = await list_policies(conn)
    if default is None and not policies:
        return 0
    if engine.dialect.name != "postgresql":
        return await _purge_rows(engine, [attribute_history.name], now, policies, default)
    async with engine.connect() as lock:
        # Several API workers run this loop; one purge at a time is enough.
        got = (await lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _ADVISORY_KEY})).scalar()
        await lock.commit()  # the lock belongs to the session; no transaction stays open meanwhile
        if not got:
            return 0
        try:
            longest = max([p.days for p in policies] + ([default] if default else []))
            removed = await _drop_partitions(engine, now - timedelta(days=longest), default is None)
            shortest = min([p.days for p in policies] + ([default] if default else []))
            names = await _partitions_with_rows_before(engine, now - timedelta(days=shortest))
            removed += await _purge_rows(engine, names, now, policies, default)
        finally:
            await lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
            await lock.commit()
    return removed


async def _partitions(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'hub_attribute_history'::regclass ORDER BY c.relname"))
    return [r[0] for r in rows]


def _month_bounds(name: str) -> tuple[datetime, datetime] | None:
    match = _MONTH_PARTITION.match(name)
    if not match:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


async def _drop_partitions(engine: AsyncEngine, cutoff: datetime, check_coverage: bool) -> int:
    """Detach and drop the month partitions that ended before `cutoff` (every row in them is expired)."""
    removed = 0
    async with engine.connect() as conn:
        names = await _partitions(conn)
    for name in names:
        bounds = _month_bounds(name)
        if bounds is None or bounds[1] > cutoff:
            continue
        async with engine.begin() as conn:
            part = _history_like(name)
            uncovered = exists(select(literal_column("1")).select_from(part).where(~_covered(part)))
            if check_coverage and (await conn.execute(select(uncovered))).scalar():
                continue  # some rows have no retention window: they stay, so the partition stays
            count = (await conn.execute(select(func.count()).select_from(part))).scalar_one()
            await conn.execute(text(f'ALTER TABLE hub_attribute_history DETACH PARTITION "{name}"'))
            await conn.execute(text(f'DROP TABLE "{name}"'))
            await rollups.forget_range(conn, *bounds)  # no trigger sees a dropped partition
            log.info("dropped history partition %s (%d rows)", name, count)
            removed += int(count)
    return removed


async def _partitions_with_rows_before(engine: AsyncEngine, cutoff: datetime) -> list[str]:
    """The partitions that may hold rows older than `cutoff`: months that started before it, and the rest."""
    async with engine.connect() as conn:
        names = await _partitions(conn)
    wanted = []
    for name in names:
        bounds = _month_bounds(name)
        if bounds is None or bounds[0] < cutoff:
            wanted.append(name)
    return wanted


async def _purge_rows(engine: AsyncEngine, tables: list[str], now: datetime, policies: list[Policy],
                      default: int | None) -> int:
    removed = 0
    for scope in scopes(policies, default):
        cutoff = now - timedelta(days=scope.days)
        for name in tables:
            part = _history_like(name)
            conds = [part.c.ts < cutoff, *scope.conditions(part)]
            removed += await _delete_in_batches(engine, part, and_(*conds))
    return removed


async def _delete_in_batches(engine: AsyncEngine, part: Any, condition: ColumnElement[bool]) -> int:
    pg = engine.dialect.name == "postgresql"
    # ctid (PostgreSQL) and rowid (SQLite) address rows directly: each batch is a TID/rowid lookup.
    key: ColumnElement[Any] = literal_column("ctid" if pg else "rowid")
    # correlate(None): the sub-select reads the table the DELETE writes, it is not correlated to it.
    picked = select(key).select_from(part).where(condition).limit(BATCH).correlate(None)
    if pg:
        stmt = delete(part).where(key == func.any(func.array(picked.scalar_subquery())))
    else:
        stmt = delete(part).where(key.in_(picked))
    removed = 0
    while True:
        async with engine.begin() as conn:
            count = (await conn.execute(stmt)).rowcount
        removed += count
        if count < BATCH:
            return removed


async def forget_empty_evolutions(engine: AsyncEngine) -> int:
    """Registry entries (entities without a current state) whose history is all gone."""
    h = attribute_history
    async with engine.begin() as conn:
        result = await conn.execute(delete(registry).where(~exists().where(
            h.c.tenant == registry.c.tenant, h.c.entity_id == registry.c.entity_id)))
    return int(result.rowcount)


# ---------------------------------------------------------------------- schedule


async def run_once(engine: AsyncEngine) -> int:
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await ensure_history_partitions(conn)  # keep the months ahead ready while we are here
    removed = await purge_expired(engine, clock.now())
    if removed:
        await forget_empty_evolutions(engine)
        log.info("history retention removed %d rows", removed)
    return removed


def start_retention(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Start the periodic purge (every CITYOS_RETENTION_INTERVAL_SECONDS, 0 = never); returns its stop."""
    raw = os.environ.get("CITYOS_RETENTION_INTERVAL_SECONDS")
    interval = float(raw) if raw else DEFAULT_INTERVAL

    async def stop_nothing() -> None:
        return None

    if interval <= 0:
        return stop_nothing

    steps = StepGuard("history retention")

    async def loop() -> None:
        await asyncio.sleep(min(interval, FIRST_RUN_DELAY))
        while True:
            try:
                await steps.step(run_once(app.state.engine))
            except Exception:  # a failed purge must not stop the next one
                log.exception("history retention failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="cityos-history-retention")

    async def stop() -> None:
        await steps.stop([task])

    return stop
