"""Persistence of hub entities: one interface over SQLite and PostgreSQL.

Only the upsert statement and the geo index differ between the two databases; everything else
is the same SQLAlchemy Core.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import String, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import WriterLock, json_dumps
from cityos.hub import geoquery, scopeq
from cityos.hub.model import Attrs, geometries
from cityos.hub.models import attribute_history, entities, entity_extra_types, tenants
from cityos.hub.ordering import OrderKey, order_clauses
from cityos.hub.qlang import QExpr, q_to_sql
from cityos.security.audit_intents import pending, write_pending

DEFAULT_TENANT = ""
COPY_THRESHOLD = 200
MULTI_TYPE_TTL = 2.0
HISTORY_COLUMNS = ("tenant", "entity_id", "entity_type", "attr", "instance_id", "dataset_id", "ts", "modified_at",
                   "deleted", "instance")


# (connection, tenant, version): the tenant's subscription version token, read by the statement that
# wrote the entity (`HubStore.update_one`) so the subscription matcher needs no statement of its own.
# Only valid inside the write transaction that read it: `HubStore.write` clears it.
_PREFETCHED_VERSION: ContextVar[tuple[int, str, str] | None] = ContextVar("cityos_hub_sub_version", default=None)


def prefetched_subscription_version(conn: AsyncConnection, tenant: str) -> str | None:
    """The version token `update_one` read in this transaction, or None if it read none."""
    found = _PREFETCHED_VERSION.get()
    if found is None or found[0] != id(conn.sync_connection) or found[1] != tenant:
        return None
    return found[2]


@dataclass
class EntityRecord:
    id: str
    types: list[str]
    attrs: Attrs
    created_at: datetime
    modified_at: datetime
    scope: Any = None

    @property
    def primary_type(self) -> str:
        return self.types[0]


@dataclass
class HistoryRow:
    entity_id: str
    entity_type: str
    attr: str
    instance: dict[str, Any]
    modified_at: datetime
    deleted: bool = False
    ts: datetime | None = None  # the instance's observedAt when the writer already has it as a datetime

    def time_index(self) -> datetime:
        if self.deleted:
            return self.modified_at
        if self.ts is not None:
            return self.ts
        observed = self.instance.get("observedAt")
        if not isinstance(observed, str):
            return self.modified_at
        if len(observed) == 24 and observed[-1] == "Z":  # clock.iso's form, e.g. 2026-11-21T10:00:00.000Z
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(observed)
        return clock.parse_iso(observed)

    def as_row(self, tenant: str) -> dict[str, Any]:
        return {
            "tenant": tenant, "entity_id": self.entity_id, "entity_type": self.entity_type, "attr": self.attr,
            "instance_id": os.urandom(16).hex(), "dataset_id": self.instance.get("datasetId"),
            "ts": self.time_index(), "modified_at": self.modified_at, "deleted": 1 if self.deleted else 0,
            "instance": self.instance,
        }

    def as_copy_record(self, tenant: str, instance_id: str | None = None) -> tuple[Any, ...]:
        """The row in HISTORY_COLUMNS order, instance serialised, for COPY."""
        return (tenant, self.entity_id, self.entity_type, self.attr, instance_id or os.urandom(16).hex(),
                self.instance.get("datasetId"), self.time_index(), self.modified_at, 1 if self.deleted else 0,
                orjson.dumps(self.instance).decode())


@dataclass
class SideTableChanges:
    """Entities whose extra types or geometries must be rewritten by a write."""

    types: set[str] = field(default_factory=set)
    geometries: set[str] = field(default_factory=set)


@dataclass
class EntityQuery:
    types: list[str] | None = None
    ids: list[str] | None = None
    id_pattern: str | None = None
    attrs: list[str] | None = None
    q: QExpr | None = None
    geo: geoquery.GeoQuery | None = None
    expand: Any = None
    limit: int = 20
    offset: int = 0
    after: str | None = None
    count: bool = False
    extra: list[Any] = field(default_factory=list)
    order_by: tuple[OrderKey, ...] = ()  # `orderBy`; empty: by id (and keyset paging with `after`)
    scope_q: scopeq.Node | None = None  # `scopeQ` (§4.19)


def _record(row: Any) -> EntityRecord:
    return EntityRecord(id=row.id, types=[row.type], attrs=row.attrs, created_at=row.created_at,
                        modified_at=row.modified_at, scope=row.scope)


class HubStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite has one writer; serialising writers here avoids lock-upgrade deadlocks between
        # deferred transactions. PostgreSQL uses row locks instead.
        self.write_lock = WriterLock()
        # PostgreSQL: at most pool-size write transactions at once. Beyond that the pool opens overflow
        # connections and closes them again on release, and every new connection costs a connect plus
        # re-preparing the hot statements (profiled at ~15 % of a PATCH at concurrency 32).
        # Half the pool (`core.db.create_engine` keeps 2 × CITYOS_DB_POOL_SIZE connections): reads,
        # cache refreshes and the background workers keep the other half.
        pool_size = getattr(engine.pool, "size", None)
        self._pg_write_slots = asyncio.Semaphore(max(1, pool_size() // 2 if callable(pool_size) else 10))
        self._known_tenants: set[str] = {DEFAULT_TENANT}
        # tenant -> (has multi-typed entities, when we looked). A short TTL bounds how long another
        # process's first multi-typed entity can go unseen by this process's type filters.
        self._has_multi_typed: dict[str, tuple[bool, float]] = {}

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        # Autocommit: a read needs no BEGIN/ROLLBACK round trips around its one statement.
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @asynccontextmanager
    async def write(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction. The audit record the caller announced (`security.audit_intents`) is
        persisted in it, so a change never commits without a trace of who made it. An `urgent` one goes
        before the SQLite writers waiting (`WriterLock`)."""
        try:
            if self.dialect == "sqlite":
                async with self.write_lock.turn(urgent), self.engine.begin() as conn:
                    yield conn
                    await write_pending(conn)
            else:
                async with self._pg_write_slots, self.engine.begin() as conn:
                    yield conn
                    await write_pending(conn)
        finally:
            _PREFETCHED_VERSION.set(None)

    # ------------------------------------------------------------------ tenants

    async def tenant_exists(self, conn: AsyncConnection, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        found = (await conn.execute(select(tenants.c.name).where(tenants.c.name == tenant))).first()
        if found:
            self._known_tenants.add(tenant)
        return found is not None

    async def ensure_tenant(self, conn: AsyncConnection, tenant: str) -> None:
        if await self.tenant_exists(conn, tenant):
            return
        stmt = self._insert(tenants).values(name=tenant, created_at=clock.now())
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))

    async def list_tenants(self, conn: AsyncConnection) -> list[str]:
        rows = await conn.execute(select(tenants.c.name).order_by(tenants.c.name))
        return [row.name for row in rows]

    # ------------------------------------------------------------------ reads

    async def fetch(self, conn: AsyncConnection, tenant: str, ids: Sequence[str],
                    for_update: bool = False) -> dict[str, EntityRecord]:
        if not ids:
            return {}
        found: dict[str, EntityRecord] = {}
        for chunk_start in range(0, len(ids), 5000):
            chunk = list(ids[chunk_start:chunk_start + 5000])
            if self.dialect == "postgresql":
                # A join with the id list rather than `id IN (...)`: on a table that grew faster than its
                # statistics (a bulk load) the planner scans it, comparing every row with every id. Locks
                # are taken in id order, as every writer takes them.
                wanted = (func.unnest(bindparam("fetch_ids", chunk, type_=ARRAY(String)))
                          .table_valued("id").render_derived())
                stmt = (select(entities).join(wanted, entities.c.id == wanted.c.id)
                        .where(entities.c.tenant == tenant).order_by(entities.c.id))
                if for_update:
                    stmt = stmt.with_for_update(of=entities)
            else:
                stmt = select(entities).where(entities.c.tenant == tenant, entities.c.id.in_(chunk))
            for row in await conn.execute(stmt):
                found[row.id] = _record(row)
        await self._attach_extra_types(conn, tenant, found)
        return found

    async def fetch_one(self, conn: AsyncConnection, tenant: str, entity_id: str,
                        for_update: bool = False) -> EntityRecord | None:
        """`fetch` of one entity; on PostgreSQL a statement asyncpg prepares once per connection."""
        if self.dialect != "postgresql":
            return (await self.fetch(conn, tenant, [entity_id], for_update)).get(entity_id)
        driver = await pg_driver(conn)
        row = await driver.fetchrow(_PG_FETCH_ONE_FOR_UPDATE if for_update else _PG_FETCH_ONE, tenant, entity_id)
        if row is None:
            return None
        found = {entity_id: EntityRecord(id=row["id"], types=[row["type"]], attrs=row["attrs"],
                                         created_at=row["created_at"], modified_at=row["modified_at"],
                                         scope=row["scope"])}
        await self._attach_extra_types(conn, tenant, found)
        return found[entity_id]

    async def _attach_extra_types(self, conn: AsyncConnection, tenant: str, found: dict[str, EntityRecord]) -> None:
        if not found or not await self._tenant_has_multi_typed(conn, tenant):
            return
        rows = await conn.execute(
            select(entity_extra_types.c.entity_id, entity_extra_types.c.type).where(
                entity_extra_types.c.tenant == tenant, entity_extra_types.c.entity_id.in_(list(found))
            )
        )
        for row in rows:
            record = found[row.entity_id]
            record.types = sorted({*record.types, row.type})

    async def _tenant_has_multi_typed(self, conn: AsyncConnection, tenant: str) -> bool:
        cached = self._has_multi_typed.get(tenant)
        if cached is not None and (cached[0] or time.monotonic() - cached[1] < MULTI_TYPE_TTL):
            return cached[0]
        row = (await conn.execute(
            select(entity_extra_types.c.entity_id).where(entity_extra_types.c.tenant == tenant).limit(1)
        )).first()
        self._has_multi_typed[tenant] = (row is not None, time.monotonic())
        return row is not None

    def _conditions(self, tenant: str, query: EntityQuery, multi_typed: bool) -> list[Any]:
        conds: list[Any] = [entities.c.tenant == tenant]
        if query.types:
            type_match: Any = entities.c.type.in_(query.types)
            if multi_typed:
                type_match = or_(type_match, exists().where(
                    entity_extra_types.c.tenant == tenant, entity_extra_types.c.entity_id == entities.c.id,
                    entity_extra_types.c.type.in_(query.types)))
            conds.append(type_match)
        if query.ids:
            conds.append(entities.c.id.in_(query.ids))
        if query.id_pattern:
            if self.dialect == "sqlite":
                # The q language's linear-time matcher: Python's backtracking `re` could be stalled by a
                # hostile pattern.
                conds.append(func.cityos_q_regexp(query.id_pattern, entities.c.id) == 1)
            else:
                conds.append(entities.c.id.regexp_match(query.id_pattern))
        if query.attrs:
            conds.append(or_(*(self._has_attr(iri) for iri in query.attrs)))
        if query.q is not None:
            conds.append(q_to_sql(query.q, entities.c.attrs, self.dialect, query.expand))
        if query.geo is not None:
            conds.append(geoquery.geo_filter_sql(query.geo, tenant, entities.c.id, self.dialect))
        if query.scope_q is not None:
            conds.append(scopeq.scopeq_sql(query.scope_q, entities.c.scope, self.dialect))
        conds.extend(query.extra)
        return conds

    def _has_attr(self, iri: str) -> Any:
        if self.dialect == "postgresql":
            return entities.c.attrs.op("?")(bindparam(None, iri, type_=String))
        return func.json_type(entities.c.attrs, _json_key_path(iri)).is_not(None)

    async def query(self, conn: AsyncConnection, tenant: str,
                    query: EntityQuery) -> tuple[list[EntityRecord], int | None]:
        multi_typed = await self._tenant_has_multi_typed(conn, tenant)
        conds = self._conditions(tenant, query, multi_typed)
        total: int | None = None
        if query.count:
            total = (await conn.execute(select(func.count()).select_from(entities).where(and_(*conds)))).scalar_one()
        page_conds = list(conds)
        offset = query.offset
        if query.order_by:
            order = order_clauses(query.order_by, entities, self.dialect)
        else:
            order = [entities.c.id]
            if query.after is not None:
                # Keyset paging: constant cost per page however deep the caller has paged.
                page_conds.append(entities.c.id > query.after)
                offset = 0
        stmt = select(entities).where(and_(*page_conds)).order_by(*order).limit(query.limit).offset(offset)
        found = {row.id: _record(row) for row in await conn.execute(stmt)}
        await self._attach_extra_types(conn, tenant, found)
        return list(found.values()), total

    # ------------------------------------------------------------------ writes

    def _insert(self, table: Any) -> Any:
        return pg_insert(table) if self.dialect == "postgresql" else sqlite_insert(table)

    async def insert(self, conn: AsyncConnection, tenant: str, records: Sequence[EntityRecord]) -> None:
        """Plain INSERT: a concurrent create of the same id raises IntegrityError for the caller to retry."""
        if not records:
            return
        await conn.execute(insert(entities), [self._row(tenant, r) for r in records])
        await self._write_side_tables(conn, tenant, records, replace=False)

    async def upsert(self, conn: AsyncConnection, tenant: str, records: Sequence[EntityRecord],
                     dirty: SideTableChanges | None = None) -> None:
        """Insert or replace rows. `dirty` names the entities whose types or geometries changed
        (None: assume all did), so that updates of plain values do not rewrite the geo index."""
        if not records:
            return
        stmt = self._insert(entities)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "id"],
            set_={"type": stmt.excluded.type, "modified_at": stmt.excluded.modified_at,
                  "attrs": stmt.excluded.attrs, "scope": stmt.excluded.scope},
        )
        await conn.execute(stmt, [self._row(tenant, r) for r in records])
        await self._write_side_tables(conn, tenant, records, replace=True, dirty=dirty)

    async def update_attrs_only(self, conn: AsyncConnection, tenant: str, record: EntityRecord) -> None:
        await conn.execute(
            update(entities).where(entities.c.tenant == tenant, entities.c.id == record.id)
            .values(attrs=record.attrs, modified_at=record.modified_at, scope=record.scope)
        )
        await self._write_side_tables(conn, tenant, [record], replace=True)

    async def update(self, conn: AsyncConnection, tenant: str, records: Sequence[EntityRecord],
                     dirty: SideTableChanges | None = None) -> None:
        """`upsert` of rows known to exist (read FOR UPDATE in this transaction): a plain UPDATE."""
        if not records:
            return
        if self.dialect == "postgresql":
            driver = await pg_driver(conn)
            # scope None is stored as JSON null, as SQLAlchemy's JSON type does.
            args = [(tenant, r.id, r.types[0], r.modified_at, json_dumps(r.attrs), json_dumps(r.scope))
                    for r in records]
            if len(args) == 1:
                await driver.execute(_PG_UPDATE, *args[0])
            else:
                await driver.executemany(_PG_UPDATE, args)
        else:
            await conn.execute(_SQLITE_UPDATE, [
                {"b_tenant": tenant, "b_id": r.id, "type": r.types[0], "modified_at": r.modified_at,
                 "attrs": r.attrs, "scope": r.scope} for r in records])
        await self._write_side_tables(conn, tenant, records, replace=True, dirty=dirty)

    async def update_one(self, conn: AsyncConnection, tenant: str, record: EntityRecord,
                         history: Sequence[HistoryRow]) -> bool:
        """PostgreSQL, one entity read FOR UPDATE in this transaction whose types and geometries did not
        change (a PATCH of values): its UPDATE, its history rows, the audit intent announced for the
        transaction and the read of the tenant's subscription version go as one statement, one round
        trip instead of four. Returns False (nothing done) where that does not apply."""
        if self.dialect != "postgresql" or not history or len(history) > COPY_THRESHOLD:
            return False
        driver = await pg_driver(conn)
        intent = pending()
        ids = os.urandom(16 * len(history)).hex()
        row = await driver.fetchrow(
            _PG_UPDATE_ONE, tenant, record.id, record.types[0], record.modified_at, json_dumps(record.attrs),
            json_dumps(record.scope), [h.entity_type for h in history], [h.attr for h in history],
            [ids[32 * i:32 * i + 32] for i in range(len(history))],
            [h.instance.get("datasetId") for h in history], [h.time_index() for h in history],
            [h.modified_at for h in history], [1 if h.deleted else 0 for h in history],
            [json_dumps(h.instance) for h in history],
            clock.now(), json_dumps(intent[1]) if intent is not None else None)
        if row["updated"] != 1:
            raise RuntimeError(f"entity {record.id} read for update was not updated")
        if intent is not None:
            intent[0].row_ids.append(int(row["intent_id"]))
        _PREFETCHED_VERSION.set((id(conn.sync_connection), tenant, row["version"] or ""))
        return True

    def _row(self, tenant: str, record: EntityRecord) -> dict[str, Any]:
        return {"tenant": tenant, "id": record.id, "type": record.types[0], "created_at": record.created_at,
                "modified_at": record.modified_at, "attrs": record.attrs, "scope": record.scope}

    async def _write_side_tables(self, conn: AsyncConnection, tenant: str, records: Sequence[EntityRecord],
                                 replace: bool, dirty: SideTableChanges | None = None) -> None:
        typed = [r for r in records if dirty is None or r.id in dirty.types]
        multi = [r for r in typed if len(r.types) > 1]
        if replace and typed and (multi or dirty is not None or await self._tenant_has_multi_typed(conn, tenant)):
            await conn.execute(delete(entity_extra_types).where(
                entity_extra_types.c.tenant == tenant, entity_extra_types.c.entity_id.in_([r.id for r in typed])))
        if multi:
            await conn.execute(insert(entity_extra_types), [
                {"tenant": tenant, "entity_id": r.id, "type": t} for r in multi for t in r.types[1:]])
            self._has_multi_typed[tenant] = (True, time.monotonic())
        geo_rows = [(r.id, geometries(r.attrs)) for r in records if dirty is None or r.id in dirty.geometries]
        if geo_rows and (replace or any(g for _, g in geo_rows)):
            await geoquery.write_geometries_many(conn, tenant, geo_rows)

    async def delete(self, conn: AsyncConnection, tenant: str, ids: Sequence[str]) -> None:
        ids = list(ids)
        await conn.execute(delete(entities).where(entities.c.tenant == tenant, entities.c.id.in_(ids)))
        await conn.execute(delete(entity_extra_types).where(
            entity_extra_types.c.tenant == tenant, entity_extra_types.c.entity_id.in_(ids)))
        await geoquery.delete_geometries(conn, tenant, ids)

    async def write_history(self, conn: AsyncConnection, tenant: str, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql" and len(rows) >= COPY_THRESHOLD:
            ids = os.urandom(16 * len(rows)).hex()  # one system call for the batch's random instance ids
            await self._copy_history(conn, [row.as_copy_record(tenant, ids[32 * i:32 * i + 32])
                                            for i, row in enumerate(rows)])
        else:
            await conn.execute(insert(attribute_history), [row.as_row(tenant) for row in rows])

    async def _copy_history(self, conn: AsyncConnection, records: list[tuple[Any, ...]]) -> None:
        """COPY is several times faster than INSERT for the thousands of rows of an ingest batch."""
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.copy_records_to_table("hub_attribute_history", columns=HISTORY_COLUMNS, records=records)

    async def insert_history(self, conn: AsyncConnection, tenant: str, rows: Sequence[HistoryRow]) -> None:
        """`write_history` for the hub's own writes: on PostgreSQL the few rows of an entity write go
        through one prepared INSERT instead of SQLAlchemy's executemany."""
        if self.dialect != "postgresql" or len(rows) >= COPY_THRESHOLD or not rows:
            await self.write_history(conn, tenant, rows)
            return
        driver = await pg_driver(conn)
        records = [row.as_copy_record(tenant) for row in rows]
        if len(records) == 1:
            await driver.execute(_PG_INSERT_HISTORY, *records[0])
        else:
            await driver.executemany(_PG_INSERT_HISTORY, records)

    # ------------------------------------------------------------------ discovery

    async def type_attribute_pairs(self, conn: AsyncConnection, tenant: str) -> list[tuple[str, str, str, int]]:
        """(entity type, attribute IRI, attribute type, entity count) over the tenant, computed in the database."""
        if self.dialect == "postgresql":
            sql = (
                "SELECT e.type AS etype, a.key AS attr, a.value->0->>'type' AS atype, count(*) AS n "
                "FROM hub_entities e CROSS JOIN LATERAL jsonb_each(e.attrs) a "
                "WHERE e.tenant = :tenant GROUP BY 1, 2, 3"
            )
        else:
            sql = (
                "SELECT e.type AS etype, a.key AS attr, json_extract(a.value, '$[0].type') AS atype, count(*) AS n "
                "FROM hub_entities e, json_each(e.attrs) a WHERE e.tenant = :tenant GROUP BY 1, 2, 3"
            )
        from sqlalchemy import text

        rows = await conn.execute(text(sql), {"tenant": tenant})
        return [(r.etype, r.attr, r.atype, int(r.n)) for r in rows]

    async def type_counts(self, conn: AsyncConnection, tenant: str) -> dict[str, int]:
        rows = await conn.execute(
            select(entities.c.type, func.count()).where(entities.c.tenant == tenant).group_by(entities.c.type))
        counts = {row[0]: int(row[1]) for row in rows}
        extra = await conn.execute(
            select(entity_extra_types.c.type, func.count()).where(entity_extra_types.c.tenant == tenant)
            .group_by(entity_extra_types.c.type))
        for row in extra:
            counts[row[0]] = counts.get(row[0], 0) + int(row[1])
        return counts


def _json_key_path(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'$."{escaped}"'


async def pg_driver(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn` (its statement cache prepares each statement once), inside
    `conn`'s transaction: SQLAlchemy's asyncpg adapter sends BEGIN lazily with its first statement, so a
    statement sent straight to the driver before that would run (and lock, and commit) on its own."""
    raw = await conn.get_raw_connection()
    adapter: Any = raw.dbapi_connection
    if getattr(adapter, "_transaction", True) is None:
        await adapter._start_transaction()  # a no-op on an autocommit connection
    driver = raw.driver_connection
    assert driver is not None
    return driver


_PG_COLUMNS = "id, type, created_at, modified_at, attrs, scope"
_PG_FETCH_ONE = f"SELECT {_PG_COLUMNS} FROM hub_entities WHERE tenant = $1 AND id = $2"
_PG_FETCH_ONE_FOR_UPDATE = _PG_FETCH_ONE + " FOR UPDATE"
# asyncpg's jsonb codec (set up by SQLAlchemy) takes the serialised document.
_PG_UPDATE = ("UPDATE hub_entities SET type = $3, modified_at = $4, attrs = $5::jsonb, scope = $6::jsonb "
              "WHERE tenant = $1 AND id = $2")
_PG_INSERT_HISTORY = (f"INSERT INTO hub_attribute_history ({', '.join(HISTORY_COLUMNS)}) "
                      "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)")
# `update_one`: the entity, its history rows (one array per column), the audit intent (when $16 is not
# null) and the subscription version, in one statement. Data-modifying CTEs run whatever the outer
# SELECT reads; `updated` counts the entity rows the UPDATE changed.
_PG_UPDATE_ONE = (
    "WITH u AS (UPDATE hub_entities SET type = $3, modified_at = $4, attrs = $5::jsonb, scope = $6::jsonb "
    "WHERE tenant = $1 AND id = $2 RETURNING 1), "
    f"h AS (INSERT INTO hub_attribute_history ({', '.join(HISTORY_COLUMNS)}) "
    "SELECT $1, $2, t.entity_type, t.attr, t.instance_id, t.dataset_id, t.ts, t.modified_at, t.deleted, "
    "t.instance::jsonb FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], "
    "$12::timestamptz[], $13::int[], $14::text[]) "
    "AS t(entity_type, attr, instance_id, dataset_id, ts, modified_at, deleted, instance)), "
    "a AS (INSERT INTO sec_audit_intents (created_at, event) SELECT $15, $16::text::jsonb "
    "WHERE $16::text IS NOT NULL RETURNING id) "
    "SELECT (SELECT count(*) FROM u) AS updated, (SELECT id FROM a) AS intent_id, "
    "(SELECT version FROM hub_subscription_versions WHERE tenant = $1) AS version")
_SQLITE_UPDATE = (update(entities)
                  .where(entities.c.tenant == bindparam("b_tenant"), entities.c.id == bindparam("b_id"))
                  .values(type=bindparam("type"), modified_at=bindparam("modified_at"), attrs=bindparam("attrs"),
                          scope=bindparam("scope")))
