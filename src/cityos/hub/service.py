"""The hub's logic: NGSI-LD operations over the store, with no HTTP in sight.

Every write goes through `_commit`, which stores the entities, records attribute history and
hands the changes to the in-transaction listeners (the notification outbox) before committing,
then publishes them on the event bus.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.errors import (
    AlreadyExists,
    BadRequestData,
    InvalidRequest,
    NonexistentTenant,
    ProblemError,
    ResourceNotFound,
)
from cityos.core.events import EventBus
from cityos.hub.jsonld import ActiveContext
from cityos.hub.model import (
    ENTITY_MEMBERS,
    NULL_URI,
    VALUE_KEY,
    WRITTEN_OBSERVED_AT,
    Attrs,
    attribute_iri,
    check_body_id,
    check_entity_id,
    check_name,
    check_scope,
    geometries,
    merged_scope,
    parse_attribute,
    parse_attributes,
    parse_entity,
    stamp,
)
from cityos.hub.sources import SourcePolicies
from cityos.hub.store import EntityQuery, EntityRecord, HistoryRow, HubStore, SideTableChanges

ENTITY_CHANGED = "hub.entity.changed"
MAX_RETRIES = 3


@dataclass
class Change:
    """One entity's change inside a write: what it was, what it is, which attributes moved."""

    entity_id: str
    before: EntityRecord | None
    after: EntityRecord | None
    changed_attrs: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        if self.before is None:
            return "created"
        return "deleted" if self.after is None else "updated"


ChangeListener = Callable[[AsyncConnection, str, list[Change]], Awaitable[None]]
WriteWork = Callable[[AsyncConnection], Awaitable[tuple[list[Change], list[EntityRecord]]]]
# (action, change) → None when allowed, else the reason of the refusal. Set per request by the API
# (`cityos.hub.access`); pure and in memory: it runs inside the write transaction.
WriteGuard = Callable[[str, Change], str | None]
write_guard: ContextVar[WriteGuard | None] = ContextVar("cityos_hub_write_guard", default=None)


class AccessDenied(ProblemError):
    """The caller may not change this entity (department, ownership or data-class policy)."""

    status, error_type, title = 403, "https://cityos.dev/errors/Forbidden", "Forbidden"


def _action_of(change: Change, deleting: bool) -> str:
    return "entity.delete" if deleting and change.after is None else "entity.write"


@dataclass
class UpdateResult:
    updated: list[str] = field(default_factory=list)
    not_updated: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BatchResult:
    success: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def fail(self, entity_id: Any, error: ProblemError) -> None:
        self.errors.append({"entityId": str(entity_id), "error": error.to_problem()})


class HubService:
    def __init__(self, store: HubStore, bus: EventBus | None = None) -> None:
        self.store = store
        self.bus = bus or EventBus()
        self.listeners: list[ChangeListener] = []
        # 一数一源: authoritative sources of attributes, declared by the data domain (cityos.hub.sources).
        self.sources = SourcePolicies()

    # ------------------------------------------------------------------ plumbing

    async def _commit(self, conn: AsyncConnection, tenant: str, changes: list[Change],
                      created: Sequence[EntityRecord] = ()) -> None:
        if not changes:
            return
        await self.store.ensure_tenant(conn, tenant)
        await self.store.insert(conn, tenant, created)
        created_ids = {r.id for r in created}
        kept = [c for c in changes if c.after is not None and c.entity_id not in created_ids]
        # An entity read in this transaction (FOR UPDATE on PostgreSQL, under the writer lock on SQLite)
        # still exists: a plain UPDATE. Anything else goes through the upsert.
        existed = [c for c in kept if c.before is not None]
        if len(changes) == 1 and len(existed) == 1 and await self._update_one(conn, tenant, existed[0]):
            for listener in self.listeners:
                await listener(conn, tenant, changes)
            return
        if existed:
            await self.store.update(conn, tenant, [c.after for c in existed if c.after is not None],
                                    _side_changes(existed))
        if len(existed) != len(kept):
            others = [c for c in kept if c.before is None]
            await self.store.upsert(conn, tenant, [c.after for c in others if c.after is not None],
                                    _side_changes(others))
        gone = [c.entity_id for c in changes if c.after is None]
        if gone:
            await self.store.delete(conn, tenant, gone)
        await self.store.insert_history(conn, tenant, _history(changes))
        for listener in self.listeners:
            await listener(conn, tenant, changes)

    async def _update_one(self, conn: AsyncConnection, tenant: str, change: Change) -> bool:
        """One entity whose values changed (not its types or geometries): the store's one-statement path."""
        assert change.after is not None
        dirty = _side_changes([change])
        if dirty.types or dirty.geometries:
            return False
        return await self.store.update_one(conn, tenant, change.after, _history([change]))

    async def _publish(self, tenant: str, changes: list[Change]) -> None:
        for change in changes:
            await self.bus.publish(ENTITY_CHANGED, {"tenant": tenant, "change": change})

    async def _require_tenant(self, conn: AsyncConnection, tenant: str) -> None:
        if not await self.store.tenant_exists(conn, tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")

    @contextlib.contextmanager
    def as_source(self, tenant: str, department: str | None, system: str) -> Iterator[None]:
        """Writes in this block come from another domain publishing into the hub (its records are catalogued
        hub types): they are held to 一数一源 as (department, system), refused or flagged like an API write.
        A guard already set (a request's) still applies first."""
        from cityos.security.policy import Principal

        principal = Principal(id=f"service:{system}", kind="service", role="operator", tenant=tenant,
                              username=system, department=department,
                              departments=frozenset({department}) if department else frozenset())
        outer = write_guard.get()

        def guard(action: str, change: Change) -> str | None:
            reason = outer(action, change) if outer is not None else None
            return reason if reason is not None else self.sources.check(tenant, principal, change)

        token = write_guard.set(guard)
        try:
            yield
        finally:
            write_guard.reset(token)

    async def _write(self, tenant: str, work: WriteWork, deleting: bool = False, urgent: bool = False) -> list[Change]:
        """Run a read-modify-write; a concurrent create of the same id is retried from a fresh read."""
        guard = write_guard.get()
        for attempt in range(MAX_RETRIES):
            try:
                async with self.store.write(urgent) as conn:
                    changes, created = await work(conn)
                    if guard is not None:
                        for change in changes:
                            reason = guard(_action_of(change, deleting), change)
                            if reason is not None:
                                raise AccessDenied(f"{change.entity_id}: {reason}", entityId=change.entity_id)
                    await self._commit(conn, tenant, changes, created)
                break
            except IntegrityError:
                if attempt == MAX_RETRIES - 1:
                    raise
        await self._publish(tenant, changes)
        return changes

    async def _load(self, conn: AsyncConnection, tenant: str, entity_id: str) -> EntityRecord:
        check_entity_id(entity_id)
        found = await self.store.fetch_one(conn, tenant, entity_id, for_update=True)
        if found is None:
            if not await self.store.tenant_exists(conn, tenant):
                raise NonexistentTenant(f"tenant {tenant!r} does not exist")
            raise ResourceNotFound(f"entity {entity_id} not found")
        return found

    # ------------------------------------------------------------------ entities

    async def create_entity(self, tenant: str, body: Any, ctx: ActiveContext) -> str:
        now = clock.now()
        if not isinstance(body, dict):
            # §5.6.1 / §6.4.3.1: the payload of Create Entity is an entity (a JSON object); anything else is
            # a malformed request, not an entity with bad data.
            raise InvalidRequest("the body of Create Entity must be a JSON object (an entity)")
        entity_id, types, attrs, scope = parse_entity(body, ctx.expand, clock.iso(now))

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            if await self.store.fetch(conn, tenant, [entity_id]):
                raise AlreadyExists(f"entity {entity_id} already exists")
            record = _new_record(entity_id, types, attrs, scope, now)
            return [Change(entity_id, None, record, set(attrs))], [record]

        await self._write(tenant, work)
        return entity_id

    async def retrieve(self, tenant: str, entity_id: str) -> EntityRecord:
        check_entity_id(entity_id)
        async with self.store.read() as conn:
            found = await self.store.fetch(conn, tenant, [entity_id])
            if entity_id not in found:
                await self._require_tenant(conn, tenant)
                raise ResourceNotFound(f"entity {entity_id} not found")
            return found[entity_id]

    async def retrieve_many(self, tenant: str, entity_ids: list[str]) -> dict[str, EntityRecord]:
        """The entities among `entity_ids` that exist (linked entities, §4.5.23); unknown ids are left out."""
        if not entity_ids:
            return {}
        async with self.store.read() as conn:
            return await self.store.fetch(conn, tenant, entity_ids)

    async def query(self, tenant: str, query: EntityQuery) -> tuple[list[EntityRecord], int | None]:
        async with self.store.read() as conn:
            await self._require_tenant(conn, tenant)
            return await self.store.query(conn, tenant, query)

    async def delete_entity(self, tenant: str, entity_id: str) -> None:
        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            return [Change(entity_id, record, None, set(record.attrs))], []

        await self._write(tenant, work, deleting=True)

    async def replace_entity(self, tenant: str, entity_id: str, body: Any, ctx: ActiveContext) -> None:
        now = clock.now()
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")
        check_body_id(body, entity_id)
        body = {**body, "id": entity_id}
        body.pop("@id", None)
        _id, types, attrs, scope = parse_entity(body, ctx.expand, clock.iso(now), require_type=False)

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            after = EntityRecord(entity_id, types or record.types, attrs, record.created_at, now, scope)
            stamp(after.attrs, clock.iso(now), record.attrs)
            return [Change(entity_id, record, after, set(record.attrs) | set(attrs))], []

        await self._write(tenant, work)

    async def merge_entity(self, tenant: str, entity_id: str, body: Any, ctx: ActiveContext) -> None:
        now = clock.now()
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")
        check_body_id(body, entity_id)
        fragment = parse_attributes(body, ctx.expand, clock.iso(now), allow_null=True)
        new_types = _types_of(body, ctx)

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            after = _copy(record, now)
            if new_types:
                after.types = sorted({*after.types, *new_types})
            changed = _merge_attrs(after.attrs, fragment, clock.iso(now))
            if "scope" in body:
                after.scope = None if body["scope"] == NULL_URI else body["scope"]
            return [Change(entity_id, record, after, changed)], []

        await self._write(tenant, work)

    # ------------------------------------------------------------------ attributes

    async def append_attrs(self, tenant: str, entity_id: str, body: Any, ctx: ActiveContext,
                           no_overwrite: bool) -> UpdateResult:
        now = clock.now()
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")
        check_body_id(body, entity_id)
        fragment = parse_attributes(body, ctx.expand, clock.iso(now))
        new_types = _types_of(body, ctx)
        new_scope = check_scope(body["scope"]) if "scope" in body else None
        result = UpdateResult()

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            # Instances are replaced, never changed in place: the stored ones can be shared.
            after = _shallow_copy(record, now)
            if new_types:
                after.types = sorted({*after.types, *new_types})
            if new_scope is not None:
                # §5.6.3 / §4.18: the scope is replaced, or with noOverwrite the new scopes are added.
                after.scope = merged_scope(record.scope, new_scope) if no_overwrite else new_scope
            changed: set[str] = set()
            for iri, instances in fragment.items():
                existing = {i.get("datasetId"): i for i in after.attrs.get(iri, [])}
                for inst in instances:
                    key = inst.get("datasetId")
                    if no_overwrite and key in existing:
                        result.not_updated.append({"attributeName": ctx.compact(iri),
                                                   "reason": "attribute exists and noOverwrite was given"})
                        continue
                    old = existing.get(key)
                    inst["createdAt"] = old.get("createdAt", clock.iso(now)) if old else clock.iso(now)
                    inst["modifiedAt"] = clock.iso(now)
                    existing[key] = inst
                    changed.add(iri)
                    result.updated.append(ctx.compact(iri))
                after.attrs[iri] = _ordered(existing)
            moved = changed or new_types or after.scope != record.scope
            return ([Change(entity_id, record, after, changed)] if moved else []), []

        await self._write(tenant, work)
        return result

    async def update_attrs(self, tenant: str, entity_id: str, body: Any, ctx: ActiveContext) -> UpdateResult:
        """Update Attributes, ETSI GS CIM 009 v1.9.1 §5.6.2: the attributes and datasetId instances the entity
        has are replaced (an NGSI-LD Null deletes one), the others appended. The appended ones are changes
        like any other (history, attributeCreated, the write guard); only the scope is not added (§4.18)."""
        now = clock.now()
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")
        check_body_id(body, entity_id)
        fragment = parse_attributes(body, ctx.expand, clock.iso(now), allow_null=True)
        new_types = _types_of(body, ctx)  # a type in the fragment is added to the entity's types (§5.6.2)
        new_scope = body.get("scope")
        if new_scope is not None and new_scope != NULL_URI:
            check_scope(new_scope)
        result = UpdateResult()

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            # Instances are replaced or dropped, never changed in place: the stored ones can be shared.
            after = _shallow_copy(record, now)
            added_types = set(new_types) - set(after.types)
            if added_types:
                after.types = sorted({*after.types, *added_types})
            if new_scope is not None:
                # §5.6.2: like an attribute, the scope is updated only where the entity has one.
                if record.scope is None:
                    result.not_updated.append({"attributeName": "scope", "reason": "the entity has no scope"})
                else:
                    after.scope = None if new_scope == NULL_URI else new_scope
                    result.updated.append("scope")
            changed: set[str] = set()
            for iri, instances in fragment.items():
                existing = {i.get("datasetId"): i for i in after.attrs.get(iri, [])}
                for inst in instances:
                    key = inst.get("datasetId")
                    if _is_null(inst):
                        if existing.pop(key, None) is None:
                            # Nothing to delete: a Null is no value to append either.
                            result.not_updated.append({"attributeName": ctx.compact(iri),
                                                       "reason": "attribute (or datasetId) does not exist"})
                            continue
                    else:
                        # v1.9.1 §5.6.2: an instance the entity has is replaced; one it lacks (a new
                        # attribute or datasetId) is appended, as Append Attributes (§5.6.3) would.
                        old = existing.get(key)
                        inst["createdAt"] = old.get("createdAt", clock.iso(now)) if old else clock.iso(now)
                        inst["modifiedAt"] = clock.iso(now)
                        existing[key] = inst
                    changed.add(iri)
                    result.updated.append(ctx.compact(iri))
                _set_or_drop(after.attrs, iri, existing)
            moved = changed or added_types or after.scope != record.scope
            return ([Change(entity_id, record, after, changed)] if moved else []), []

        await self._write(tenant, work)
        return result

    async def patch_attr(self, tenant: str, entity_id: str, attr: str, body: Any, ctx: ActiveContext) -> None:
        now = clock.now()
        iri = attribute_iri(attr, ctx.expand)
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            after = _shallow_copy(record, now)
            # Only this attribute's instances are merged in place: only they need a copy.
            existing = {i.get("datasetId"): i for i in _clone(after.attrs.get(iri, []))}
            key = body.get("datasetId")
            if key not in existing:
                raise ResourceNotFound(f"attribute {attr} (datasetId {key}) not found in {entity_id}")
            old = existing[key]
            merged_raw = _partial_fragment(old, body)
            inst = parse_attribute(attr, merged_raw, ctx.expand, clock.iso(now), allow_null=True)[0]
            if _is_null(inst):
                existing.pop(key)
            else:
                _merge_instance(old, inst)
                old["modifiedAt"] = clock.iso(now)
            _set_or_drop(after.attrs, iri, existing)
            return [Change(entity_id, record, after, {iri})], []

        await self._write(tenant, work)

    async def replace_attr(self, tenant: str, entity_id: str, attr: str, body: Any, ctx: ActiveContext) -> None:
        """Replace one attribute instance (§5.6.19): the instance with the body's datasetId must exist;
        its createdAt is kept, everything else is the body's."""
        now = clock.now()
        check_entity_id(entity_id)
        if attr.startswith("@") or attr in ENTITY_MEMBERS:
            raise BadRequestData(f"{attr!r} is not an attribute name")
        iri = ctx.expand(check_name(attr))
        if not isinstance(body, dict):
            raise BadRequestData("the body must be a JSON object")
        inst = parse_attribute(attr, body, ctx.expand, clock.iso(now))[0]

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            after = _shallow_copy(record, now)
            existing = {i.get("datasetId"): i for i in after.attrs.get(iri, [])}
            key = inst.get("datasetId")
            if key not in existing:
                raise ResourceNotFound(f"attribute {attr} (datasetId {key}) not found in {entity_id}")
            inst["createdAt"] = existing[key].get("createdAt", clock.iso(now))
            inst["modifiedAt"] = clock.iso(now)
            existing[key] = inst
            after.attrs[iri] = _ordered(existing)
            return [Change(entity_id, record, after, {iri})], []

        await self._write(tenant, work)

    async def delete_attr(self, tenant: str, entity_id: str, attr: str, ctx: ActiveContext,
                          dataset_id: str | None, delete_all: bool) -> None:
        now = clock.now()
        iri = ctx.expand(check_name(attr))

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            record = await self._load(conn, tenant, entity_id)
            after = _copy(record, now)
            if attr == "scope":  # §4.18, §5.6.5: the scope is deleted like an attribute
                if record.scope is None:
                    raise ResourceNotFound(f"entity {entity_id} has no scope")
                after.scope = None
                return [Change(entity_id, record, after, set())], []
            instances = after.attrs.get(iri)
            if not instances:
                raise ResourceNotFound(f"attribute {attr} not found in {entity_id}")
            if delete_all:
                after.attrs.pop(iri)
            else:
                kept = [i for i in instances if i.get("datasetId") != dataset_id]
                if len(kept) == len(instances):
                    raise ResourceNotFound(f"attribute {attr} with datasetId {dataset_id} not found in {entity_id}")
                _set_or_drop(after.attrs, iri, {i.get("datasetId"): i for i in kept})
            return [Change(entity_id, record, after, {iri})], []

        await self._write(tenant, work)

    # ------------------------------------------------------------------ batch

    async def batch_write(self, tenant: str, bodies: Any, ctx: ActiveContext, mode: str,
                          options: set[str]) -> BatchResult:
        """mode: create | upsert | update | merge. One transaction for the whole batch."""
        if not isinstance(bodies, list):
            raise BadRequestData("a batch body must be a JSON array of entities")
        now = clock.now()
        result = BatchResult()
        parsed: dict[str, tuple[list[str], Attrs, Any, dict[str, Any]]] = {}
        for body in bodies:
            try:
                entity_id, types, attrs, scope = parse_entity(
                    body, ctx.expand, clock.iso(now), require_type=mode in ("create", "upsert"),
                    allow_null=mode in ("update", "merge"))
            except ProblemError as exc:
                result.fail(body.get("id") if isinstance(body, dict) else None, exc)
                continue
            if entity_id in parsed:
                if mode == "create":
                    result.fail(entity_id, AlreadyExists(f"entity {entity_id} appears twice in the batch"))
                    continue
                prev_types, prev_attrs, _, prev_body = parsed[entity_id]
                _merge_attrs(prev_attrs, attrs, clock.iso(now))
                parsed[entity_id] = (sorted({*prev_types, *types}), prev_attrs, scope, prev_body)
                continue
            parsed[entity_id] = (types, attrs, scope, body)
        parse_errors = list(result.errors)
        guard = write_guard.get()
        iso_now = clock.iso(now)
        attempts = [0]

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            result.success.clear()
            result.created.clear()
            result.errors[:] = parse_errors
            # The first attempt may consume the parsed attributes: a change only adds createdAt and
            # modifiedAt to them, which a retry (from a fresh read) sets again on its own copy.
            retry = attempts[0] > 0
            attempts[0] += 1
            existing = await self.store.fetch(conn, tenant, list(parsed), for_update=True)
            changes: list[Change] = []
            created: list[EntityRecord] = []
            for entity_id, (types, attrs, scope, _body) in parsed.items():
                before = existing.get(entity_id)
                change = self._batch_change(mode, options, entity_id, before, types,
                                            _clone(attrs) if retry else attrs, scope, now, result, iso_now)
                if change is None:
                    continue
                reason = guard("entity.write", change) if guard is not None else None
                if reason is not None:
                    result.fail(entity_id, AccessDenied(f"{entity_id}: {reason}"))
                    continue
                changes.append(change)
                result.success.append(entity_id)
                if before is None and change.after is not None:
                    created.append(change.after)
                    result.created.append(entity_id)
            return changes, created

        await self._write(tenant, work)
        return result

    def _batch_change(self, mode: str, options: set[str], entity_id: str, before: EntityRecord | None,
                      types: list[str], attrs: Attrs, scope: Any, now: Any, result: BatchResult,
                      iso_now: str) -> Change | None:
        if mode == "create":
            if before is not None:
                result.fail(entity_id, AlreadyExists(f"entity {entity_id} already exists"))
                return None
            return Change(entity_id, None, _new_record(entity_id, types, attrs, scope, now, iso_now), set(attrs))
        if before is None:
            if mode in ("update", "merge"):
                result.fail(entity_id, ResourceNotFound(f"entity {entity_id} not found"))
                return None
            return Change(entity_id, None, _new_record(entity_id, types, attrs, scope, now, iso_now), set(attrs))
        if mode == "upsert" and "update" not in options:
            # Replace: the stored attributes are discarded, so they need no copy.
            after = EntityRecord(entity_id, types or list(before.types), attrs, before.created_at, now, scope)
            _stamp(after.attrs, iso_now, before.attrs)
            return Change(entity_id, before, after, before.attrs.keys() | attrs.keys())
        after = _copy(before, now)
        if types:
            after.types = sorted({*after.types, *types})
        if mode == "update" and "noOverwrite" in options:
            kept = {iri: inst for iri, inst in attrs.items() if iri not in before.attrs}
            if len(kept) < len(attrs):
                # The entity is updated with what is new, and the batch says what was left alone (207).
                result.fail(entity_id, BadRequestData(f"{len(attrs) - len(kept)} attribute(s) exist and "
                                                      "noOverwrite was given"))
            attrs = kept
        changed = _merge_attrs(after.attrs, attrs, iso_now, replace_instances=mode != "merge")
        return Change(entity_id, before, after, changed)

    async def batch_delete(self, tenant: str, ids: Any) -> BatchResult:
        if not isinstance(ids, list):
            raise BadRequestData("a batch delete body must be a JSON array of entity ids")
        result = BatchResult()
        wanted: list[str] = []
        for entity_id in ids:
            try:
                wanted.append(check_entity_id(entity_id))
            except ProblemError as exc:
                result.fail(entity_id, exc)

        parse_errors = list(result.errors)
        guard = write_guard.get()

        async def work(conn: AsyncConnection) -> tuple[list[Change], list[EntityRecord]]:
            result.success.clear()
            result.errors[:] = parse_errors
            existing = await self.store.fetch(conn, tenant, wanted, for_update=True)
            changes = []
            seen: set[str] = set()
            for entity_id in wanted:
                if entity_id in seen:
                    result.fail(entity_id, ResourceNotFound(f"entity {entity_id} is deleted earlier in this batch"))
                    continue
                seen.add(entity_id)
                if entity_id not in existing:
                    result.fail(entity_id, ResourceNotFound(f"entity {entity_id} not found"))
                    continue
                record = existing[entity_id]
                change = Change(entity_id, record, None, set(record.attrs))
                reason = guard("entity.delete", change) if guard is not None else None
                if reason is not None:
                    result.fail(entity_id, AccessDenied(f"{entity_id}: {reason}"))
                    continue
                changes.append(change)
                result.success.append(entity_id)
            return changes, []

        await self._write(tenant, work, deleting=True)
        return result

    # ------------------------------------------------------------------ discovery

    async def discovery(self, tenant: str) -> tuple[list[tuple[str, str, str, int]], dict[str, int]]:
        async with self.store.read() as conn:
            await self._require_tenant(conn, tenant)
            pairs = await self.store.type_attribute_pairs(conn, tenant)
            counts = await self.store.type_counts(conn, tenant)
            return pairs, counts


# ---------------------------------------------------------------------- helpers


def _side_changes(changes: list[Change]) -> SideTableChanges:
    """Only entities whose types or geometries really changed get their side tables rewritten."""
    dirty = SideTableChanges()
    for change in changes:
        before, after = change.before, change.after
        if before is None or after is None or before.types != after.types:
            dirty.types.add(change.entity_id)
        if before is None or after is None or geometries(before.attrs) != geometries(after.attrs):
            dirty.geometries.add(change.entity_id)
    return dirty


def _new_record(entity_id: str, types: list[str], attrs: Attrs, scope: Any, now: Any,
                iso_now: str | None = None) -> EntityRecord:
    _stamp(attrs, iso_now or clock.iso(now))
    return EntityRecord(entity_id, types, attrs, now, now, scope)


def _stamp(attrs: Attrs, now: str, previous: Attrs | None = None) -> None:
    """`model.stamp` with fast paths for the common cases (no previous instances, or one)."""
    for iri, instances in attrs.items():
        prev = previous.get(iri) if previous else None
        if not prev:
            for inst in instances:
                inst["createdAt"] = now
                inst["modifiedAt"] = now
        elif len(prev) == 1:
            only = prev[0]
            key = only.get("datasetId")
            for inst in instances:
                inst["createdAt"] = only.get("createdAt", now) if inst.get("datasetId") == key else now
                inst["modifiedAt"] = now
        else:
            stamp({iri: instances}, now, previous)


def _copy(record: EntityRecord, now: Any) -> EntityRecord:
    return EntityRecord(record.id, list(record.types), _clone(record.attrs), record.created_at, now,
                        _clone(record.scope))


def _shallow_copy(record: EntityRecord, now: Any) -> EntityRecord:
    """A copy whose attribute map and type list are new but whose instances are the stored ones:
    for changes that replace instances rather than modify them."""
    return EntityRecord(record.id, list(record.types), dict(record.attrs), record.created_at, now, record.scope)


def _clone(value: Any) -> Any:
    """A deep copy of a JSON document; an orjson round trip is an order of magnitude faster than deepcopy."""
    return orjson.loads(orjson.dumps(value)) if value is not None else None


def _types_of(body: dict[str, Any], ctx: ActiveContext) -> list[str]:
    raw = body.get("type")
    if raw is None:
        return []
    from cityos.hub.model import expand_types

    return expand_types(raw, ctx.expand)


def _is_null(inst: dict[str, Any]) -> bool:
    return any(inst.get(k) == NULL_URI for k in ("value", "object", "languageMap", "vocab", "json", "valueList",
                                                 "objectList"))


def _ordered(by_dataset: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(by_dataset.values(), key=lambda inst: inst.get("datasetId") is not None)


def _set_or_drop(attrs: Attrs, iri: str, by_dataset: dict[Any, dict[str, Any]]) -> None:
    if by_dataset:
        attrs[iri] = _ordered(by_dataset)
    else:
        attrs.pop(iri, None)


def _merge_instance(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge-patch one instance: the new members win, sub-attributes merge, NULL_URI removes."""
    if new.get("type") != old.get("type"):
        for key in ("value", "object", "languageMap", "vocab", "json", "valueList", "objectList"):
            old.pop(key, None)
    if "observedAt" in new:
        old.pop(WRITTEN_OBSERVED_AT, None)  # the new spelling, if any, comes with the new value
    for key, value in new.items():
        if key in ("createdAt", "modifiedAt"):
            continue
        if isinstance(value, dict) and value.get("value") == NULL_URI:
            old.pop(key, None)
        elif isinstance(value, dict) and isinstance(old.get(key), dict) and ":" in key:
            _merge_instance(old[key], value)
        else:
            old[key] = value


def _merge_attrs(target: Attrs, fragment: Attrs, now: str, replace_instances: bool = False) -> set[str]:
    changed: set[str] = set()
    for iri, instances in fragment.items():
        existing = {i.get("datasetId"): i for i in target.get(iri, [])}
        for inst in instances:
            key = inst.get("datasetId")
            if _is_null(inst):
                existing.pop(key, None)
            elif key in existing and not replace_instances:
                _merge_instance(existing[key], inst)
                existing[key]["modifiedAt"] = now
            else:
                old = existing.get(key)
                inst["createdAt"] = old.get("createdAt", now) if old else now
                inst["modifiedAt"] = now
                existing[key] = inst
        _set_or_drop(target, iri, existing)
        changed.add(iri)
    return changed


def _partial_fragment(old: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A partial attribute update may omit the type and even the value (only a sub-attribute or
    observedAt, say): it keeps those of the attribute it updates (§5.6.4)."""
    kind = body.get("type", old.get("type", "Property"))
    merged = {"type": kind, **body}
    value_key = VALUE_KEY.get(kind, "value")
    if kind == old.get("type") and value_key not in merged and value_key in old:
        merged[value_key] = old[value_key]
    return merged


def _history(changes: list[Change]) -> list[HistoryRow]:
    rows: list[HistoryRow] = []
    for change in changes:
        source = change.after or change.before
        assert source is not None
        entity_type = source.types[0]
        modified = change.after.modified_at if change.after else clock.now()
        after_attrs = change.after.attrs if change.after else {}
        before_attrs = change.before.attrs if change.before else {}
        for iri in sorted(change.changed_attrs):
            new = after_attrs.get(iri, ())
            old = before_attrs.get(iri)
            if not old:
                rows.extend(HistoryRow(change.entity_id, entity_type, iri, inst, modified) for inst in new)
                continue
            for inst in new:
                if inst in old:
                    continue
                rows.append(HistoryRow(change.entity_id, entity_type, iri, inst, modified))
            new_keys = {i.get("datasetId") for i in new}
            for inst in old:
                if inst.get("datasetId") not in new_keys:
                    rows.append(HistoryRow(change.entity_id, entity_type, iri,
                                           {**inst, "deletedAt": clock.iso(modified)}, modified, deleted=True))
    return rows

