"""Batch writes of time-stamped observations: latest value by observedAt, every reading in history.

Sensor data arrives late, twice and out of order (QoS 1 redelivery, gateways replaying 72 h
of cached readings). `upsert_observations` applies a batch of readings to many entities in one
transaction with these rules, per (entity, attribute):

- the entity keeps as its current value the reading with the NEWEST observedAt; an older reading
  never replaces a newer one, so a backfill never moves "latest" backwards;
- every reading that is not a duplicate is written to the attribute history, older ones included;
- a duplicate is a reading with the same entity, attribute and observedAt as one already stored
  (the current value, an earlier reading in history, or an earlier reading in the same batch):
  it is stored once, whatever its value;
- "static" attributes (location, refDevice, ...) are set when missing or different.

Entities are read FOR UPDATE (PostgreSQL), so concurrent writers of the same entity serialise,
and the write goes through `HubService._write`/`_commit`: the notification outbox and the event
bus see the changes exactly as for any other hub write. A caller may run its own statements in
the same transaction (`prepare`), e.g. to lock and update its own rows atomically with the hub
write, and to build the batch from what it read under those locks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.hub.model import Attrs
from cityos.hub.models import attribute_history
from cityos.hub.service import Change, HubService
from cityos.hub.store import EntityRecord, HistoryRow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _ms(dt: datetime) -> int:
    """Milliseconds since the epoch (observedAt has millisecond precision); naive means UTC (SQLite)."""
    return (clock.as_utc(dt) - _EPOCH) // _MS


@dataclass
class Reading:
    attr: str  # expanded attribute IRI
    value: Any
    observed_at: datetime  # UTC
    unit_code: str | None = None
    kind: str = "Property"  # Property | GeoProperty | Relationship (value is then the object URI)
    # Derived once when the reading is made, which for ingestion is before the write transaction and
    # its row locks: milliseconds since the epoch, the ISO form, and the history's timestamp.
    ms: int = field(init=False)
    iso: str = field(init=False)
    ts: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.ms = ms = _ms(self.observed_at)
        self.ts = _EPOCH + ms * _MS
        found = _ISO_BY_MS.get(ms)
        if found is None:  # the readings of one message share their time
            if len(_ISO_BY_MS) >= 4096:
                _ISO_BY_MS.clear()
            found = _ISO_BY_MS[ms] = clock.iso(self.ts)
        self.iso = found


_ISO_BY_MS: dict[int, str] = {}


@dataclass
class ObservedEntity:
    entity_id: str
    entity_type: str  # expanded type IRI, used when the entity is created
    readings: list[Reading] = field(default_factory=list)
    static: Attrs = field(default_factory=dict)  # internal-form instances without observedAt


@dataclass
class ObservationResult:
    stored: int = 0  # readings written (current value and/or history)
    duplicates: int = 0
    latest_changed: int = 0  # (entity, attribute) pairs whose current value moved
    entities_created: int = 0
    changes: list[Change] = field(default_factory=list)


Prepare = Callable[[AsyncConnection], Awaitable[Sequence[ObservedEntity]]]


def _instance(reading: Reading, now: str) -> dict[str, Any]:
    inst: dict[str, Any] = {"type": reading.kind}
    inst["object" if reading.kind == "Relationship" else "value"] = reading.value
    inst["observedAt"] = reading.iso
    if reading.unit_code:
        inst["unitCode"] = reading.unit_code
    inst["createdAt"] = now
    inst["modifiedAt"] = now
    return inst


def _default_instance(instances: list[dict[str, Any]]) -> dict[str, Any] | None:
    for inst in instances:
        if "datasetId" not in inst:
            return inst
    return None


def _observed_ms(inst: dict[str, Any] | None) -> int | None:
    if inst is None:
        return None
    observed = inst.get("observedAt")
    if not isinstance(observed, str):
        return None
    if len(observed) == 24 and observed[-1] == "Z":  # what clock.iso writes: the fast path
        try:
            return (datetime.fromisoformat(observed) - _EPOCH) // _MS
        except ValueError:
            pass
    try:
        return _ms(clock.parse_iso(observed))
    except ValueError:
        return None


def _same_static(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if old is None:
        return False
    return all(old.get(k) == v for k, v in new.items() if k not in ("createdAt", "modifiedAt"))


async def _history_keys(conn: AsyncConnection, tenant: str,
                        wanted: dict[tuple[str, str], list[int]]) -> set[tuple[str, str, int]]:
    """Which (entity, attribute, observedAt ms) of `wanted` are already in the history."""
    if not wanted:
        return set()
    found: set[tuple[str, str, int]] = set()
    by_entity: dict[str, set[str]] = {}
    lo = min(min(v) for v in wanted.values())
    hi = max(max(v) for v in wanted.values())
    for entity_id, attr in wanted:
        by_entity.setdefault(entity_id, set()).add(attr)
    ids = sorted(by_entity)
    attrs = sorted({a for s in by_entity.values() for a in s})
    t = attribute_history.c
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        stmt = select(t.entity_id, t.attr, t.ts).where(and_(
            t.tenant == tenant, t.entity_id.in_(chunk), t.attr.in_(attrs), t.deleted == 0,
            t.ts >= datetime.fromtimestamp(lo / 1000, UTC), t.ts <= datetime.fromtimestamp(hi / 1000, UTC)))
        for row in await conn.execute(stmt):
            found.add((row.entity_id, row.attr, _ms(row.ts)))
    return found


async def upsert_observations(service: HubService, tenant: str, items: Sequence[ObservedEntity] | None = None,
                              prepare: Prepare | None = None, urgent: bool = False) -> ObservationResult:
    """Apply readings to entities (creating them) in one transaction; see the module docstring.

    `prepare(conn)`, when given, runs first inside the transaction and returns (more) items.
    Retried from scratch on a concurrent create of the same entity, so it must be idempotent
    within its transaction (it is re-run in a fresh one). `urgent`: someone waits on this write (a device's
    answer to a command), so on SQLite it goes before the writers waiting.
    """
    result = ObservationResult()

    async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
        nonlocal result
        result = ObservationResult()
        batch = list(items or ())
        if prepare is not None:
            batch.extend(await prepare(conn))
        if not batch:
            return [], []
        now = clock.now()
        now_iso = clock.iso(now)
        merged: dict[str, ObservedEntity] = {}
        for item in batch:
            seen = merged.get(item.entity_id)
            if seen is None:
                merged[item.entity_id] = ObservedEntity(item.entity_id, item.entity_type, list(item.readings),
                                                        dict(item.static))
            else:
                seen.readings.extend(item.readings)
                seen.static.update(item.static)
        ids = sorted(merged)
        existing = await service.store.fetch(conn, tenant, ids, for_update=True)

        # Pass 1: drop in-batch duplicates and readings equal to the current value's time; collect
        # older readings whose duplicates could only be in the history.
        plans: dict[str, dict[str, list[tuple[int, Reading]]]] = {}
        current_of: dict[tuple[str, str], int | None] = {}
        older: dict[tuple[str, str], list[int]] = {}
        for entity_id in ids:
            item = merged[entity_id]
            before = existing.get(entity_id)
            per_attr: dict[str, dict[int, Reading]] = {}
            for reading in item.readings:
                ms = reading.ms
                slot = per_attr.setdefault(reading.attr, {})
                if ms in slot:
                    result.duplicates += 1
                    continue
                slot[ms] = reading
            plan: dict[str, list[tuple[int, Reading]]] = {}
            for attr, slot in per_attr.items():
                current_ms = _observed_ms(_default_instance(before.attrs.get(attr, []))) if before else None
                current_of[(entity_id, attr)] = current_ms
                kept = []
                for ms, reading in sorted(slot.items()):
                    if current_ms is not None and ms == current_ms:
                        result.duplicates += 1
                        continue
                    if current_ms is not None and ms < current_ms:
                        older.setdefault((entity_id, attr), []).append(ms)
                    kept.append((ms, reading))
                plan[attr] = kept
            plans[entity_id] = plan
        in_history = await _history_keys(conn, tenant, older)

        # Pass 2: build the new entity states and the extra history rows.
        changes: list[Change] = []
        created: list[EntityRecord] = []
        extra_rows: list[HistoryRow] = []
        for entity_id in ids:
            item = merged[entity_id]
            before = existing.get(entity_id)
            if before is None:
                after = EntityRecord(entity_id, [item.entity_type], {}, now, now, None)
            else:
                # A shallow copy is enough: an attribute that changes gets a new list of new instances
                # below; the unchanged instances are shared with `before` and never modified in place.
                after = EntityRecord(before.id, list(before.types), dict(before.attrs), before.created_at,
                                     now, before.scope)  # readings never change the scope
            entity_type = after.types[0]
            changed: set[str] = set()
            for attr, kept in plans[entity_id].items():
                if in_history:
                    kept = [(ms, r) for ms, r in kept if (entity_id, attr, ms) not in in_history]
                    result.duplicates += len(plans[entity_id][attr]) - len(kept)
                if not kept:
                    continue
                current = _default_instance(after.attrs.get(attr, []))
                current_ms = current_of[(entity_id, attr)] if before is not None else _observed_ms(current)
                newest_ms, newest = kept[-1]
                becomes_latest = current_ms is None or newest_ms > current_ms
                for ms, reading in kept:
                    result.stored += 1
                    if becomes_latest and ms == newest_ms:
                        continue  # written to history by _commit as the attribute's new value
                    extra_rows.append(HistoryRow(entity_id, entity_type, attr, _instance(reading, now_iso), now,
                                                 ts=reading.ts))
                if becomes_latest:
                    inst = _instance(newest, now_iso)
                    if current is not None:
                        inst["createdAt"] = current.get("createdAt", now_iso)
                    others = [i for i in after.attrs.get(attr, []) if "datasetId" in i]
                    after.attrs[attr] = [inst, *others]
                    changed.add(attr)
                    result.latest_changed += 1
            for attr, instances in item.static.items():
                new = instances[0]
                old = _default_instance(after.attrs.get(attr, []))
                if _same_static(old, new):
                    continue
                inst = dict(new)
                inst["createdAt"] = old.get("createdAt", now_iso) if old else now_iso
                inst["modifiedAt"] = now_iso
                after.attrs[attr] = [inst, *[i for i in after.attrs.get(attr, []) if "datasetId" in i]]
                changed.add(attr)
            if before is None:
                created.append(after)
                changes.append(Change(entity_id, None, after, set(after.attrs)))
                result.entities_created += 1
            elif changed:
                changes.append(Change(entity_id, before, after, changed))
        if extra_rows:
            await service.store.ensure_tenant(conn, tenant)
            await service.store.write_history(conn, tenant, extra_rows)
        result.changes = changes
        return changes, created

    await service._write(tenant, work, urgent=urgent)
    return result
