"""The temporal evolution of entities: reads over `hub_attribute_history` and the temporal writes. No HTTP.

Which entities a temporal query covers:
- entities with a current state are selected in `hub_entities` by the store's own conditions, so
  type, id, idPattern, q and geo-queries mean what they mean in the entity API; q and the geo-query
  therefore test the *current* state of an entity, not its past values;
- entities without a current state (created only through this API, or deleted through the entity
  API while their history is kept) are in `hub_temporal_entities` and are matched by type, id and
  idPattern only (q and geo-queries have no current state to test, so they never match them);
- `attrs` keeps the entities with history of at least one of the attributes.

Long histories are capped at `max_instances` per attribute (CITYOS_TEMPORAL_MAX_INSTANCES). When
the cap cuts an attribute, every attribute of the answer is cut at the same instant and the
caller gets the covered interval to ask for the next part (ETSI GS CIM 009 v1.8.1 §6.3.10).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, literal, select, text, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, NonexistentTenant, ResourceNotFound
from cityos.hub.jsonld import DEFAULT_VOCAB, ActiveContext
from cityos.hub.model import (
    ENTITY_MEMBERS,
    VALUE_KEY,
    Attrs,
    attribute_iri,
    body_id,
    check_body_id,
    check_entity_id,
    check_name,
    expand_types,
    is_uri,
    parse_instance,
)
from cityos.hub.models import attribute_history as h
from cityos.hub.models import entities
from cityos.hub.service import AccessDenied, Change, write_guard
from cityos.hub.sources import source_guard
from cityos.hub.store import EntityQuery, EntityRecord, HistoryRow, HubStore
from cityos.hub.temporal import rollups, sql
from cityos.hub.temporal.models import history_rollups as rollup_table
from cityos.hub.temporal.models import temporal_entities as registry
from cityos.hub.temporal.params import AGGREGATED, TemporalQuery
from cityos.hub.temporal.sql import BucketSeries, InstanceRow

log = logging.getLogger(__name__)

INSTANCE_PREFIX = "urn:ngsi-ld:attribute:instance:"
# The terms whose values say who owns an entity (cityos.security.classes.ClassRegistry).
OWNERSHIP_TERMS = ("owningDepartment", "department", "owner", "district")
_INSTANCE_KEY = re.compile(r"[0-9A-Za-z]{1,64}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]{1,1024}")
DEFAULT_MAX_INSTANCES = 1000


def max_instances_from_env() -> int:
    raw = os.environ.get("CITYOS_TEMPORAL_MAX_INSTANCES")
    return max(1, int(raw)) if raw else DEFAULT_MAX_INSTANCES


@dataclass
class TemporalEntity:
    id: str
    types: list[str]
    created_at: datetime | None = None
    modified_at: datetime | None = None
    # The attribute types of the current state: aggregated rows do not read the instances.
    attr_types: dict[str, str] = field(default_factory=dict)
    instances: dict[str, list[InstanceRow]] = field(default_factory=dict)
    # Aggregated values: per attribute, one series of buckets per datasetId.
    buckets: dict[str, list[BucketSeries]] = field(default_factory=dict)
    # The attributes of the entity's current state (None: it has none). Who may see what of the
    # history is decided from them, as in the entity API, never from the history itself.
    current_attrs: Attrs | None = None


@dataclass
class ContentRange:
    """The interval an answer cut by the instance cap covers (§6.3.10); size is lastN or unknown."""

    start: datetime
    end: datetime
    size: int | None

    def header(self) -> str:
        return f"date-time {clock.iso(self.start)}-{clock.iso(self.end)}/{self.size or '*'}"


@dataclass
class TemporalResult:
    entities: list[TemporalEntity]
    total: int | None = None
    range: ContentRange | None = None


def _needs_origin(tq: TemporalQuery) -> bool:
    """Aggregation periods with no timeAt to start from start at the earliest instance (§4.5.19)."""
    return tq.representation == AGGREGATED and tq.aggr_period is not None and tq.lower is None


def instance_uri(key: str) -> str:
    return INSTANCE_PREFIX + key


def instance_key(raw: str) -> str:
    """The key of an instanceId (a URI, §4.5.7): ours, or 404 for another well-formed URI, or 400."""
    key = raw[len(INSTANCE_PREFIX):] if raw.startswith(INSTANCE_PREFIX) else None
    if key is None or not _INSTANCE_KEY.fullmatch(key):
        if key is None and _URI.fullmatch(raw):
            # A well-formed URI of another form than the ids this broker hands out names no instance here:
            # 404 (§5.6.8, §5.6.10), as an unknown instance of ours does; a malformed id is a bad request.
            raise ResourceNotFound(f"no attribute instance {raw[:80]!r}")
        raise BadRequestData(f"{raw[:80]!r} is not an attribute instance id ({INSTANCE_PREFIX}<hex>)")
    return key


def _from_record(record: EntityRecord) -> TemporalEntity:
    return TemporalEntity(record.id, record.types, record.created_at, record.modified_at,
                          {iri: insts[0].get("type", "Property") for iri, insts in record.attrs.items() if insts},
                          current_attrs=record.attrs)


def _from_registry(row: Any) -> TemporalEntity:
    return TemporalEntity(row.entity_id, [row.entity_type], row.created_at)


def cut_to_cap(grouped: dict[tuple[str, str], list[InstanceRow]], tq: TemporalQuery,
               cap: int) -> tuple[dict[tuple[str, str], list[InstanceRow]], ContentRange | None]:
    """Apply the per-attribute cap to rows fetched in query order (oldest first, or newest first for lastN).

    Every attribute is cut at the same instant, so the answer is complete for the interval it names
    (an attribute with no instance in it is kept with none, §6.3.10).
    """
    if tq.last_n is not None and tq.last_n <= cap:
        return grouped, None  # lastN itself is the limit: nothing is ever cut
    truncated = [rows for rows in grouped.values() if len(rows) > cap]
    if not truncated:
        return grouped, None
    if tq.last_n is None:
        end = min(rows[cap - 1].time for rows in truncated)
        kept = {k: [r for r in rows[:cap] if r.time <= end] for k, rows in grouped.items()}
        start = tq.lower or min(rows[0].time for rows in kept.values() if rows)
    else:
        end = max(rows[cap - 1].time for rows in truncated)
        kept = {k: [r for r in rows[:cap] if r.time >= end] for k, rows in grouped.items()}
        start = tq.upper or max(rows[0].time for rows in kept.values() if rows)
    # An attribute whose instances all lie beyond the cut stays, empty: it has none in this interval.
    return kept, ContentRange(start, end, tq.last_n)


def parse_temporal_attrs(body: dict[str, Any], ctx: ActiveContext, now: str) -> Attrs:
    """Attributes given as instances (one object or an array of objects), each stamped as created now."""
    attrs: Attrs = {}
    for name, raw in body.items():
        if name in ENTITY_MEMBERS:
            continue
        iri = attribute_iri(name, ctx.expand)
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise BadRequestData(f"attribute {name!r} has no instances")
        if not all(isinstance(item, dict) for item in items):
            raise BadRequestData(f"each instance of {name!r} must be a JSON object")
        for item in items:
            inst = parse_instance(name, item, ctx.expand, now)
            inst["createdAt"] = inst["modifiedAt"] = now
            attrs.setdefault(iri, []).append(inst)
    return attrs


def _merge_instance(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The new members win; a change of attribute type drops the old value member."""
    value_keys = set(VALUE_KEY.values())
    type_changed = new.get("type") != old.get("type")
    merged = {k: v for k, v in old.items() if not (type_changed and k in value_keys)}
    merged.update({k: v for k, v in new.items() if k not in ("createdAt", "modifiedAt")})
    return merged


class TemporalService:
    def __init__(self, store: HubStore, max_instances: int = DEFAULT_MAX_INSTANCES,
                 ownership_iris: Sequence[str] | None = None) -> None:
        self.store = store
        self.max_instances = max_instances
        # The attributes that decide who owns an entity (cityos.security.classes: department_of,
        # owner_of, district_of), as the core @context expands them.
        self.ownership_iris = frozenset(ownership_iris if ownership_iris is not None else
                                        (DEFAULT_VOCAB + term for term in OWNERSHIP_TERMS))

    # ------------------------------------------------------------------ reads

    async def retrieve(self, tenant: str, entity_id: str, tq: TemporalQuery) -> TemporalResult:
        check_entity_id(entity_id)
        if _needs_origin(tq):
            async with self.store.read() as conn:
                tq = replace(tq, aggr_origin=await sql.earliest(conn, tenant, [entity_id], tq))
        grain = await self._rollup_grain(tenant, tq)
        async with self.store.read() as conn:
            head = await self._head(conn, tenant, entity_id)
            if head is None:
                await self._require_tenant(conn, tenant)
                raise ResourceNotFound(f"no temporal evolution of entity {entity_id}")
            content_range = await self._fill(conn, tenant, [head], tq, grain)
        return TemporalResult([head], None, content_range)

    async def query(self, tenant: str, query: EntityQuery, tq: TemporalQuery) -> TemporalResult:
        if _needs_origin(tq):
            # The buckets start at the earliest instance of the page's entities: select them first.
            async with self.store.read() as conn:
                await self._require_tenant(conn, tenant)
                heads, total = await self._select(conn, tenant, query, tq.attrs)
                tq = replace(tq, aggr_origin=await sql.earliest(conn, tenant, [h.id for h in heads], tq))
            grain = await self._rollup_grain(tenant, tq)
            async with self.store.read() as conn:
                content_range = await self._fill(conn, tenant, heads, tq, grain)
            return TemporalResult(heads, total, content_range)
        grain = sql.rollup_grain(tq) if tq.representation == AGGREGATED else None
        async with self.store.read() as conn:
            await self._require_tenant(conn, tenant)
            dirty, registered = await _tenant_state(conn, tenant)
            if grain is None or not dirty:
                return await self._page(conn, tenant, query, tq, grain, registered)
        grain = await self._refresh_rollups(tenant, grain)
        async with self.store.read() as conn:
            return await self._page(conn, tenant, query, tq, grain, registered)

    async def _page(self, conn: AsyncConnection, tenant: str, query: EntityQuery, tq: TemporalQuery,
                    grain: str | None, registered: bool) -> TemporalResult:
        # With a grain the rollups are up to date for this answer: "has history" can be asked of them.
        heads, total = await self._select(conn, tenant, query, tq.attrs, rollups_current=grain is not None,
                                          registered=registered)
        content_range = await self._fill(conn, tenant, heads, tq, grain)
        return TemporalResult(heads, total, content_range)

    async def _require_tenant(self, conn: AsyncConnection, tenant: str) -> None:
        if not await self.store.tenant_exists(conn, tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")

    async def _head(self, conn: AsyncConnection, tenant: str, entity_id: str) -> TemporalEntity | None:
        found = await self.store.fetch(conn, tenant, [entity_id])
        if entity_id in found:
            return _from_record(found[entity_id])
        row = (await conn.execute(select(registry).where(registry.c.tenant == tenant,
                                                         registry.c.entity_id == entity_id))).first()
        return _from_registry(row) if row else None

    async def _select(self, conn: AsyncConnection, tenant: str, query: EntityQuery, attrs: list[str] | None,
                      rollups_current: bool = False,
                      registered: bool | None = None) -> tuple[list[TemporalEntity], int | None]:
        """One page of entities, ordered by id, over hub_entities and the registry together.
        `rollups_current`: no rollup bucket is marked for recomputation (`rollups.refresh` just ran), so
        the has-history test may look at the rollups first (see `_has_history`). `registered`: whether
        the tenant has entities in the registry, when the caller has asked already (None: ask)."""
        extra = ([*query.extra, _has_history(tenant, entities.c.id, attrs, rollups_current)] if attrs
                 else query.extra)
        current = replace(query, attrs=None, extra=extra)
        uses_registry = query.q is None and query.geo is None and query.scope_q is None
        if uses_registry and registered is None:
            registered = (await conn.execute(
                select(registry.c.entity_id).where(registry.c.tenant == tenant).limit(1))).first() is not None
        uses_registry = uses_registry and bool(registered)
        if not uses_registry:
            records, total = await self.store.query(conn, tenant, current)
            return [_from_record(r) for r in records], total
        # Both sources are ordered by id: take the first offset+limit of each and merge.
        skip = 0 if query.after is not None else query.offset
        records, total = await self.store.query(conn, tenant, replace(current, limit=skip + query.limit, offset=0))
        conds = _registry_conditions(tenant, query, attrs, rollups_current)
        page_conds = [*conds, registry.c.entity_id > query.after] if query.after is not None else conds
        rows = await conn.execute(select(registry).where(*page_conds).order_by(registry.c.entity_id)
                                  .limit(skip + query.limit))
        heads = [_from_record(r) for r in records]
        heads += [_from_registry(r) for r in rows]
        if not query.order_by:
            heads.sort(key=lambda head: head.id)
        # With orderBy, the entities that have a current state come in its order, then those known only
        # to the temporal registry (no current attributes to order by), by id.
        if total is not None:
            total += (await conn.execute(select(func.count()).select_from(registry).where(*conds))).scalar_one()
        return heads[skip:skip + query.limit], total

    async def _rollup_grain(self, tenant: str, tq: TemporalQuery) -> str | None:
        """The rollup grain to answer `tq` from, its marked buckets recomputed first; None: the raw rows."""
        grain = sql.rollup_grain(tq) if tq.representation == AGGREGATED else None
        if grain is None:
            return None
        async with self.store.read() as conn:
            if not await rollups.has_dirty(conn, tenant):
                return grain
        return await self._refresh_rollups(tenant, grain)

    async def _refresh_rollups(self, tenant: str, grain: str) -> str | None:
        """Recompute the tenant's marked rollup buckets: `grain`, or None (read the raw rows) if they cannot be."""
        try:
            async with write_transaction(self.store.engine, self.store.write_lock) as conn:
                await rollups.refresh(conn, tenant)
        except DBAPIError:
            # e.g. a sum beyond float8 on PostgreSQL: the marks stay, this answer comes from the raw rows.
            log.warning("temporal rollups of tenant %r could not be recomputed; reading raw history", tenant,
                        exc_info=True)
            return None
        return grain

    async def _fill(self, conn: AsyncConnection, tenant: str, heads: list[TemporalEntity],
                    tq: TemporalQuery, grain: str | None = None) -> ContentRange | None:
        by_id = {head.id: head for head in heads}
        if tq.representation == AGGREGATED:
            for series in await sql.aggregate_series(conn, tenant, list(by_id), tq, grain):
                by_id[series.entity_id].buckets.setdefault(series.attr, []).append(series)
            return None
        pairs = await sql.attribute_pairs(conn, tenant, list(by_id), tq.attrs)
        cap = self.max_instances
        newest_first = tq.last_n is not None
        limit = tq.last_n if tq.last_n is not None and tq.last_n <= cap else cap + 1
        grouped: dict[tuple[str, str], list[InstanceRow]] = {}
        for row in await sql.read_instances(conn, tenant, pairs, tq, limit, newest_first):
            grouped.setdefault((row.entity_id, row.attr), []).append(row)
        kept, content_range = cut_to_cap(grouped, tq, cap)
        for (entity_id, attr), rows in kept.items():
            by_id[entity_id].instances[attr] = sorted(rows, key=lambda r: r.time)
        return content_range

    # ------------------------------------------------------------------ writes

    async def _known_type(self, conn: AsyncConnection, tenant: str, entity_id: str) -> str | None:
        row = (await conn.execute(select(entities.c.type).where(entities.c.tenant == tenant,
                                                                entities.c.id == entity_id))).first()
        if row is None:
            row = (await conn.execute(select(registry.c.entity_type).where(
                registry.c.tenant == tenant, registry.c.entity_id == entity_id))).first()
        return None if row is None else str(row[0])

    async def _require_known(self, conn: AsyncConnection, tenant: str, entity_id: str) -> str:
        known = await self._known_type(conn, tenant, entity_id)
        if known is None:
            await self._require_tenant(conn, tenant)
            raise ResourceNotFound(f"no temporal evolution of entity {entity_id}")
        return known

    def _no_future_ownership(self, attrs: Attrs, now: datetime) -> None:
        """History may not date an owner, department or district after now: the newest instance of
        an attribute is what a reader of the history takes for its present value."""
        for iri in self.ownership_iris & attrs.keys():
            for inst in attrs[iri]:
                observed = inst.get("observedAt")
                if isinstance(observed, str) and clock.parse_iso(observed) > now:
                    raise BadRequestData(f"an instance of {iri.rsplit('/', 1)[-1]} may not be observed in the "
                                         "future: who owns an entity is not set ahead of time")

    async def _guard(self, conn: AsyncConnection, tenant: str, entity_id: str, action: str,
                     written: Attrs | None = None, types: list[str] | None = None) -> None:
        """The caller's write guard (cityos.hub.access), inside the write transaction, on the entity's
        current state: a history write is allowed to whoever may write the entity itself. Instances
        of ownership attributes count as setting them, so a caller who may not give the entity away
        may not write them into its history either. No current state: tenant-wide roles only."""
        guard = write_guard.get()
        if guard is None:
            return
        record = await self.store.fetch_one(conn, tenant, entity_id, for_update=True)
        changes = [Change(entity_id, record, record)] if record is not None else [Change(entity_id, None, None)]
        if record is not None:
            # Each written instance of an ownership attribute, as if it were the current value.
            changes += [Change(entity_id, record, EntityRecord(record.id, record.types, {**record.attrs, iri: [inst]},
                                                               record.created_at, record.modified_at, record.scope),
                               {iri})
                        for iri, insts in (written or {}).items() if iri in self.ownership_iris for inst in insts]
        for change in changes:
            reason = guard(action, change)
            if reason is not None:
                raise AccessDenied(f"{entity_id}: {reason}", entityId=entity_id)
        await self._check_sources(conn, tenant, entity_id, record, written, types)

    async def _check_sources(self, conn: AsyncConnection, tenant: str, entity_id: str, record: EntityRecord | None,
                             written: Attrs | None, types: list[str] | None) -> None:
        """一数一源 for the written attributes: a history instance of an attribute is that attribute
        written, so another source is refused or flagged as for a write of the current state. The
        entity's type comes from its current state, else its history registry, else the body."""
        sources = source_guard.get()
        if sources is None or not written:
            return
        if record is not None:
            entity_types = list(record.types)
        else:
            known = await self._known_type(conn, tenant, entity_id)
            entity_types = [known] if known is not None else list(types or [])
        now = clock.now()
        after = EntityRecord(entity_id, entity_types, dict(written), now, now, None)
        reason = sources.check_sources(Change(entity_id, record, after, set(written)))
        if reason is not None:
            raise AccessDenied(f"{entity_id}: {reason}", entityId=entity_id)

    @staticmethod
    def _committed(entity_id: str) -> None:
        """The history write committed: its 一数一源 flags are stored by the data domain."""
        sources = source_guard.get()
        if sources is not None:
            sources.sources_committed({entity_id})

    async def upsert_evolution(self, tenant: str, body: Any, ctx: ActiveContext) -> tuple[str, bool]:
        """Create a temporal evolution or add instances to it: (the entity id, True when it was created)."""
        now = clock.now()
        if not isinstance(body, dict):
            raise BadRequestData("a temporal entity must be a JSON object")
        entity_id = check_entity_id(body_id(body))
        raw_type = body.get("type", body.get("@type"))
        types = expand_types(raw_type, ctx.expand) if raw_type is not None else []
        attrs = parse_temporal_attrs(body, ctx, clock.iso(now))
        self._no_future_ownership(attrs, now)
        async with self.store.write() as conn:
            await self._guard(conn, tenant, entity_id, "entity.write", attrs, types)
            known = await self._known_type(conn, tenant, entity_id)
            if known is None:
                if not types:
                    raise BadRequestData(f"temporal entity {entity_id} is new and needs a type")
                await self.store.ensure_tenant(conn, tenant)
                await conn.execute(_registry_upsert(conn.dialect.name, update_type=False), [
                    {"tenant": tenant, "entity_id": entity_id, "entity_type": types[0], "created_at": now}])
            await self.store.write_history(conn, tenant, _rows(entity_id, known or types[0], attrs, now))
        self._committed(entity_id)
        return entity_id, known is None

    async def append_instances(self, tenant: str, entity_id: str, body: Any, ctx: ActiveContext) -> None:
        check_entity_id(entity_id)
        now = clock.now()
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")
        check_body_id(body, entity_id)
        attrs = parse_temporal_attrs(body, ctx, clock.iso(now))
        if not attrs:
            raise BadRequestData("the body has no attribute instances")
        self._no_future_ownership(attrs, now)
        async with self.store.write() as conn:
            await self._guard(conn, tenant, entity_id, "entity.write", attrs)
            known = await self._require_known(conn, tenant, entity_id)
            await self.store.write_history(conn, tenant, _rows(entity_id, known, attrs, now))
        self._committed(entity_id)

    async def delete_evolution(self, tenant: str, entity_id: str) -> None:
        """Drop the whole history of an entity; its current state, if any, stays."""
        check_entity_id(entity_id)
        async with self.store.write() as conn:
            # Dropping a history drops every attribute's: each is checked against its source (一数一源).
            written: Attrs = {}
            if source_guard.get() is not None:
                written = {str(a): [] for a in (await conn.execute(select(h.c.attr).where(
                    h.c.tenant == tenant, h.c.entity_id == entity_id).distinct())).scalars()}
            await self._guard(conn, tenant, entity_id, "entity.delete", written)
            await self._require_known(conn, tenant, entity_id)
            await conn.execute(delete(h).where(h.c.tenant == tenant, h.c.entity_id == entity_id))
            await conn.execute(delete(registry).where(registry.c.tenant == tenant, registry.c.entity_id == entity_id))
        self._committed(entity_id)

    async def delete_attr(self, tenant: str, entity_id: str, attr: str, ctx: ActiveContext,
                          dataset_id: str | None, delete_all: bool) -> None:
        check_entity_id(entity_id)
        iri = ctx.expand(check_name(attr))
        if dataset_id is not None and not is_uri(dataset_id):
            raise BadRequestData("datasetId must be a URI")
        conds = [h.c.tenant == tenant, h.c.entity_id == entity_id, h.c.attr == iri]
        if not delete_all:
            conds.append(h.c.dataset_id == dataset_id if dataset_id is not None else h.c.dataset_id.is_(None))
        async with self.store.write() as conn:
            await self._guard(conn, tenant, entity_id, "entity.write", {iri: []})
            await self._require_known(conn, tenant, entity_id)
            if (await conn.execute(delete(h).where(*conds))).rowcount == 0:
                which = f" with datasetId {dataset_id}" if dataset_id and not delete_all else ""
                raise ResourceNotFound(f"attribute {attr}{which} has no history in {entity_id}")
        self._committed(entity_id)

    async def patch_instance(self, tenant: str, entity_id: str, attr: str, instance_id: str, body: Any,
                             ctx: ActiveContext) -> None:
        check_entity_id(entity_id)
        iri = attribute_iri(attr, ctx.expand)
        key = instance_key(instance_id)
        if not isinstance(body, dict) or not body:
            raise BadRequestData("the body must be a non-empty JSON object (an attribute fragment)")
        now = clock.now()
        conds = _instance_conditions(tenant, entity_id, iri, key)
        async with self.store.write() as conn:
            stmt = select(h.c.instance, h.c.deleted, h.c.ts).where(*conds)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update()
            row = (await conn.execute(stmt)).first()
            if row is None:
                await self._guard(conn, tenant, entity_id, "entity.write")
                await self._require_known(conn, tenant, entity_id)
                raise ResourceNotFound(f"no instance {instance_id} of {attr} in {entity_id}")
            if row.deleted:
                await self._guard(conn, tenant, entity_id, "entity.write")
                raise BadRequestData(f"instance {instance_id} records a deletion and cannot be modified")
            merged = _merge_instance(row.instance, _parse_patch(attr, row.instance, body, ctx, clock.iso(now)))
            merged["modifiedAt"] = clock.iso(now)
            self._no_future_ownership({iri: [merged]}, now)
            await self._guard(conn, tenant, entity_id, "entity.write", {iri: [merged]})
            observed = merged.get("observedAt")
            ts = clock.parse_iso(observed) if isinstance(observed, str) else row.ts
            await conn.execute(update(h).where(*conds).values(
                instance=merged, ts=ts, modified_at=now, dataset_id=merged.get("datasetId")))
        self._committed(entity_id)

    async def delete_instance(self, tenant: str, entity_id: str, attr: str, instance_id: str,
                              ctx: ActiveContext) -> None:
        check_entity_id(entity_id)
        iri = ctx.expand(check_name(attr))
        key = instance_key(instance_id)
        async with self.store.write() as conn:
            await self._guard(conn, tenant, entity_id, "entity.write", {iri: []})
            if (await conn.execute(delete(h).where(*_instance_conditions(tenant, entity_id, iri, key)))).rowcount == 0:
                await self._require_known(conn, tenant, entity_id)
                raise ResourceNotFound(f"no instance {instance_id} of {attr} in {entity_id}")
        self._committed(entity_id)

    # ------------------------------------------------------------------ entity API listener

    async def remember_deleted(self, conn: AsyncConnection, tenant: str, changes: list[Change]) -> None:
        """A deleted entity keeps its history: register it so that temporal queries still find it."""
        now = clock.now()
        rows = [{"tenant": tenant, "entity_id": c.entity_id, "entity_type": c.before.types[0], "created_at": now}
                for c in changes if c.kind == "deleted" and c.before is not None]
        if rows:
            await conn.execute(_registry_upsert(conn.dialect.name, update_type=True), rows)


# ---------------------------------------------------------------------- helpers


def _has_history(tenant: str, entity_id: ColumnElement[Any], attrs: Sequence[str],
                 rollups_current: bool = False) -> ColumnElement[bool]:
    """The entity has history (instances or recorded deletions) of one of `attrs`.

    With `rollups_current`, the rollups are asked first: a rollup row is kept for every bucket with a
    live instance (none is left without one once the marked buckets are recomputed), so it proves
    history with one probe of their primary key, where the history costs a probe of every monthly
    partition. The raw rows are read only for an entity with no rollup row of those attributes (a
    history of deletions only, or none), so the answer is the raw test's. The two parts are one
    UNION ALL inside EXISTS: PostgreSQL then keeps it a per-entity probe that stops at the first row
    (with OR between two EXISTS it may hash the whole rollup table instead)."""
    raw = select(literal(1)).where(h.c.tenant == tenant, h.c.entity_id == entity_id, h.c.attr.in_(list(attrs)))
    if not rollups_current:
        return exists(raw)
    rolled = select(literal(1)).where(rollup_table.c.tenant == tenant, rollup_table.c.entity_id == entity_id,
                                      rollup_table.c.attr.in_(list(attrs)))
    return exists(union_all(rolled, raw))


async def _tenant_state(conn: AsyncConnection, tenant: str) -> tuple[bool, bool]:
    """What a query asks of the tenant before selecting, in one round trip: are rollup buckets marked for
    recomputation (`rollups.has_dirty`), and are there entities known only to the temporal registry."""
    row = (await conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM hub_history_rollup_dirty WHERE tenant = :tenant), "
        "EXISTS (SELECT 1 FROM hub_temporal_entities WHERE tenant = :tenant)"), {"tenant": tenant})).one()
    return bool(row[0]), bool(row[1])


def _registry_conditions(tenant: str, query: EntityQuery, attrs: list[str] | None,
                         rollups_current: bool = False) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [
        registry.c.tenant == tenant,
        # An entity that has a current state again is found through hub_entities.
        ~exists().where(entities.c.tenant == tenant, entities.c.id == registry.c.entity_id),
    ]
    if query.types:
        conds.append(registry.c.entity_type.in_(query.types))
    if query.ids:
        conds.append(registry.c.entity_id.in_(query.ids))
    if query.id_pattern:
        conds.append(registry.c.entity_id.regexp_match(query.id_pattern))
    if attrs:
        conds.append(_has_history(tenant, registry.c.entity_id, attrs, rollups_current))
    return conds


def _registry_upsert(dialect: str, update_type: bool) -> Any:
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(registry)
    if update_type:
        return stmt.on_conflict_do_update(index_elements=["tenant", "entity_id"],
                                          set_={"entity_type": stmt.excluded.entity_type})
    return stmt.on_conflict_do_nothing(index_elements=["tenant", "entity_id"])


def _rows(entity_id: str, entity_type: str, attrs: Attrs, now: datetime) -> list[HistoryRow]:
    return [HistoryRow(entity_id, entity_type, iri, inst, now) for iri, insts in attrs.items() for inst in insts]


def _instance_conditions(tenant: str, entity_id: str, iri: str, key: str) -> list[ColumnElement[bool]]:
    # The (tenant, entity_id, attr, ts) index narrows the search to one attribute's history.
    return [h.c.tenant == tenant, h.c.entity_id == entity_id, h.c.attr == iri, h.c.instance_id == key]


def _parse_patch(attr: str, old: dict[str, Any], body: dict[str, Any], ctx: ActiveContext,
                 now: str) -> dict[str, Any]:
    """A partial instance: the type and, for the same type, the value default to the old ones."""
    kind = body.get("type", old.get("type", "Property"))
    raw = {"type": kind, **body}
    value_key = VALUE_KEY.get(kind) if isinstance(kind, str) else None
    if value_key and kind == old.get("type") and value_key not in raw and value_key in old:
        raw[value_key] = old[value_key]
    return parse_instance(attr, raw, ctx.expand, now)
