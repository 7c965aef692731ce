"""Subscriptions: CRUD, matching changes against subscriptions, and writing the notification outbox.

The matcher is a HubService change listener: it runs inside the write transaction of the change,
so the outbox rows commit (or roll back) together with the change itself. Matching reads an
in-memory cache of each tenant's subscriptions, checked against the tenant's version token in
the same transaction, so a subscription committed by any process is seen by the next write.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.errors import AlreadyExists, BadRequestData, NonexistentTenant, ResourceNotFound
from cityos.core.events import Event
from cityos.core.outbound import Outbound, OutboundRefused
from cityos.hub import geoquery, typesel
from cityos.hub.jsonld import ActiveContext, ContextResolver
from cityos.hub.linked import JOINS, Linker
from cityos.hub.model import VALUE_KEY, check_entity_id, render_entity
from cityos.hub.projection import project_rendered
from cityos.hub.qlang import QExpr, evaluate_q, parse_q
from cityos.hub.service import AccessDenied, Change
from cityos.hub.store import EntityRecord, HubStore, pg_driver, prefetched_subscription_version
from cityos.hub.subscriptions.deletions import (
    PREVIOUS_KEY,
    add_nulls,
    deleted_entity,
    deleted_instances,
    previous_value,
)
from cityos.hub.subscriptions.inflight import InFlight
from cityos.hub.subscriptions.models import (
    NotifySettings,
    outbox,
    subscription_versions,
    subscriptions,
)
from cityos.hub.subscriptions.rights import (
    OWNER_KEY,
    VERIFIED_KEY,
    EntityCheck,
    FilterCheck,
    OwnerAbsent,
    OwnerRights,
    principal_of_owner,
)
from cityos.hub.subscriptions.spec import (
    Spec,
    apply_update,
    dataset_filter,
    parse_members,
    parse_subscription,
    render_subscription,
    selector_types,
    triggers_of,
)
from cityos.hub.typesel import Selection

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "cityos_outbox"

# ---------------------------------------------------------------------- compiled subscriptions


@dataclass
class Compiled:
    """A subscription ready for matching: selectors compiled, q and geoQ parsed, @context resolved."""

    tenant: str
    id: str
    spec: Spec
    endpoint: str
    ctx: ActiveContext
    expires_at: datetime | None
    q: QExpr | None = None
    q_terms: dict[str, str] = field(default_factory=dict)
    geo: geoquery.GeoQuery | None = None
    patterns: list[tuple[Selection, str | None, re.Pattern[str] | None]] = field(default_factory=list)
    watched: frozenset[str] | None = None
    triggers: frozenset[str] = frozenset()

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.spec["notification"]
        return params

    @property
    def periodic(self) -> bool:
        return "timeInterval" in self.spec

    def live(self, now: datetime) -> bool:
        return self.spec.get("isActive", True) and (self.expires_at is None or self.expires_at > now)

    def expand(self, name: str) -> str:
        return self.q_terms.get(name) or self.ctx.expand(name)

    def selects(self, record: EntityRecord) -> bool:
        if not self.patterns:
            return True
        return any(typesel.matches(types, record.types) and (eid is None or eid == record.id)
                   and (pattern is None or pattern.search(record.id) is not None)
                   for types, eid, pattern in self.patterns)

    def filters(self, record: EntityRecord) -> bool:
        if self.q is not None and not evaluate_q(self.q, record.attrs, self.expand):
            return False
        if self.geo is not None:
            geometry = _geometry_of(record, self.geo.geoproperty)
            if geometry is None or not geoquery.evaluate_geo(self.geo, geometry):
                return False
        return True

    def fired(self, change: Change) -> bool:
        """Does the change trigger this subscription (notificationTrigger and watchedAttributes)?"""
        if change.before is None or change.after is None:
            trigger = "entityCreated" if change.before is None else "entityDeleted"
            state = change.after or change.before
            assert state is not None
            if trigger in self.triggers and (self.watched is None or bool(self.watched & set(state.attrs))):
                return True
            # Creating an entity creates its attributes: attributeCreated fires for those (watched) ones.
            if trigger == "entityCreated" and "attributeCreated" in self.triggers:
                return bool(set(state.attrs) if self.watched is None else self.watched & set(state.attrs))
            # Deleting an entity deletes its attributes (v1.8.1 §5.8.6: attributeDeleted fires for them).
            return (trigger == "entityDeleted" and "attributeDeleted" in self.triggers
                    and bool(set(state.attrs) if self.watched is None else self.watched & set(state.attrs)))
        changed = set(change.changed_attrs)
        if self.watched is not None:
            changed &= self.watched
            if not changed:
                return False
        if "entityUpdated" in self.triggers:
            return True
        return any(_attribute_trigger(change, iri) in self.triggers for iri in changed)

    def matches(self, change: Change, now: datetime) -> bool:
        state = change.after or change.before
        assert state is not None
        return (not self.periodic and self.live(now) and self.selects(state) and self.fired(change)
                and self.filters(state))


def _attribute_trigger(change: Change, iri: str) -> str:
    assert change.before is not None and change.after is not None
    if iri not in change.before.attrs:
        return "attributeCreated"
    if iri not in change.after.attrs:
        return "attributeDeleted"
    # An attribute losing one of its instances (by datasetId) had that instance deleted.
    kept = {inst.get("datasetId") for inst in change.after.attrs[iri]}
    if any(inst.get("datasetId") not in kept for inst in change.before.attrs[iri]):
        return "attributeDeleted"
    return "attributeUpdated"


def _geometry_of(record: EntityRecord, iri: str) -> dict[str, Any] | None:
    for inst in record.attrs.get(iri, []):
        if inst.get("type") == "GeoProperty" and "datasetId" not in inst and isinstance(inst.get("value"), dict):
            value: dict[str, Any] = inst["value"]
            return value
    return None


def _identity(name: str) -> str:
    return name


async def compile_row(row: Any, resolver: ContextResolver) -> Compiled:
    spec: Spec = row.spec
    try:
        ctx = await resolver.resolve(row.context)
    except Exception as exc:  # a context that cannot be fetched must not stop notifications
        log.warning("subscription %s: @context unavailable (%s); notifying with the core context", spec["id"], exc)
        ctx = resolver.core
    compiled = Compiled(tenant=row.tenant, id=spec["id"], spec=spec, endpoint=row.endpoint, ctx=ctx,
                        expires_at=as_utc_or_none(row.expires_at))
    if "q" in spec:
        compiled.q = parse_q(spec["q"]["text"])
        compiled.q_terms = dict(spec["q"]["terms"])
    if "geoQ" in spec:
        geo = spec["geoQ"]
        # The stored geoproperty is already an IRI: expansion is the identity.
        compiled.geo = geoquery.parse_geoquery(geo["georel"], geo["geometry"], geo["coordinates"],
                                               geo["geoproperty"], _identity)
    compiled.patterns = [(selector_types(s), s.get("id"), re.compile(s["idPattern"]) if "idPattern" in s else None)
                         for s in spec.get("entities", [])]
    if "watchedAttributes" in spec:
        compiled.watched = frozenset(spec["watchedAttributes"])
    compiled.triggers = frozenset(triggers_of(spec))
    return compiled


_CREATION_ORDER = (subscriptions.c.created_at, subscriptions.c.id)
_VERSION = select(subscription_versions.c.version).where(subscription_versions.c.tenant == bindparam("tenant"))
_PG_VERSION = "SELECT version FROM hub_subscription_versions WHERE tenant = $1"


async def _version_of(conn: AsyncConnection, tenant: str) -> str:
    """The tenant's subscription version token; it is read on every write, so on PostgreSQL it is a
    statement asyncpg prepares once per connection."""
    if conn.dialect.name == "postgresql":
        prefetched = prefetched_subscription_version(conn, tenant)
        if prefetched is not None:  # read by the statement that wrote the entity (`HubStore.update_one`)
            return prefetched
        driver = await pg_driver(conn)
        return await driver.fetchval(_PG_VERSION, tenant) or ""
    return (await conn.execute(_VERSION, {"tenant": tenant})).scalar_one_or_none() or ""


class SubscriptionCache:
    """Each tenant's compiled subscriptions, keyed by the tenant's version token in the database."""

    def __init__(self, resolver: ContextResolver) -> None:
        self.resolver = resolver
        self._by_tenant: dict[str, tuple[str, list[Compiled]]] = {}

    async def get(self, conn: AsyncConnection, tenant: str) -> list[Compiled]:
        version = await _version_of(conn, tenant)
        cached = self._by_tenant.get(tenant)
        if cached is not None and cached[0] == version:
            return cached[1]
        compiled: list[Compiled] = []
        if version:
            rows = await conn.execute(select(subscriptions).where(subscriptions.c.tenant == tenant)
                                      .order_by(subscriptions.c.id))
            compiled = [await compile_row(row, self.resolver) for row in rows]
        self._by_tenant[tenant] = (version, compiled)
        return compiled

    async def find(self, conn: AsyncConnection, tenant: str, sub_id: str) -> Compiled | None:
        return next((c for c in await self.get(conn, tenant) if c.id == sub_id), None)


# ---------------------------------------------------------------------- rendering notifications


# (subscription, record) → the record as the subscriber may see it (masked by data class), or None.
Masker = Callable[["Compiled", EntityRecord], EntityRecord | None]


def owner_claims(principal: Any) -> dict[str, Any] | None:
    """What a subscription keeps of its creator, so its notifications are masked for them."""
    if principal is None:
        return None
    return {"id": principal.id, "kind": principal.kind, "role": principal.role, "tenant": principal.tenant,
            "username": principal.username, "department": principal.department,
            "departments": sorted(principal.departments), "districts": sorted(principal.districts)}


def render_data(sub: Compiled, change: Change, now: datetime, masker: Masker | None = None) -> dict[str, Any] | None:
    """One entity of a notification's data, in the subscription's format, attributes and @context."""
    seen = masked_change(sub, change, masker)
    return render_seen(sub, seen, now) if seen is not None else None


def masked_change(sub: Compiled, change: Change, masker: Masker | None) -> Change | None:
    """The change as the subscription's owner may see it (each state masked once: the masker audits what
    it reveals), or None when it may see none of it."""
    before, after = change.before, change.after
    if masker is not None:
        if after is not None:
            after = masker(sub, after)
            if after is None:
                return None
        if before is not None:
            before = masker(sub, before)
            if before is None and change.after is None:
                return None
    return Change(change.entity_id, before, after, change.changed_attrs)


def render_seen(sub: Compiled, change: Change, now: datetime) -> dict[str, Any]:
    """A masked change (`masked_change`) rendered as one entity of a notification's data."""
    before, after = change.before, change.after
    if after is None:
        assert before is not None
        return render_deleted(sub, before, now)
    return render_record(sub, after, before, deleted_at=clock.iso(now))


def render_deleted(sub: Compiled, before: EntityRecord, now: datetime) -> dict[str, Any]:
    """A deleted entity: id, type and deletedAt; its attributes as NGSI-LD Null when the subscriber
    asked for deletions of attributes (attributeDeleted without entityDeleted) or for showChanges."""
    params = sub.params
    sys_attrs = bool(params.get("sysAttrs"))
    deleted_at = clock.iso(now)
    out = deleted_entity(before, sub.ctx.compact, deleted_at=deleted_at, sys_attrs=sys_attrs,
                         created_at=clock.iso(before.created_at), modified_at=clock.iso(before.modified_at))
    show_changes = bool(params.get("showChanges"))
    if show_changes or "entityDeleted" not in sub.triggers:
        wanted = set(params.get("attributes") or before.attrs)
        if sub.watched is not None and not show_changes:
            wanted &= sub.watched
        add_nulls(out, deleted_instances(before, None, wanted), sub.ctx.compact, fmt=params["format"],
                  sys_attrs=sys_attrs, show_changes=show_changes, deleted_at=deleted_at)
    if "pick" in params or "omit" in params:
        pick = frozenset(params["pick"]) if "pick" in params else None
        out = project_rendered(out, pick, frozenset(params.get("omit", ())), sub.ctx.expand)
    return out


def render_record(sub: Compiled, record: EntityRecord, before: EntityRecord | None = None,
                  deleted_at: str | None = None) -> dict[str, Any]:
    """An entity as notified; with `before`, its deleted instances as NGSI-LD Null and, with
    showChanges, the previous values of what changed."""
    params = sub.params
    datasets = dataset_filter(sub.spec)
    if datasets is not None:
        record = _only_datasets(record, datasets)
        before = _only_datasets(before, datasets) if before is not None else None
    out = render_entity(record.id, record.types, record.attrs, sub.ctx.compact, fmt=params["format"],
                        sys_attrs=bool(params.get("sysAttrs")), created_at=clock.iso(record.created_at),
                        modified_at=clock.iso(record.modified_at), only=params.get("attributes"),
                        scope=record.scope, lang=sub.spec.get("lang"))
    if params.get("sysAttrs") and params["format"] == "keyValues":
        # notification.sysAttrs (§5.2.14) asks for createdAt and modifiedAt whatever the format: in keyValues
        # an attribute is its value alone, but the entity's own system DateTimes are plain members.
        out["createdAt"] = clock.iso(record.created_at)
        out["modifiedAt"] = clock.iso(record.modified_at)
    show_changes = bool(params.get("showChanges"))
    if before is not None:
        if show_changes and params["format"] != "keyValues":
            _add_previous(out, record, before, sub.ctx.compact)
        gone = deleted_instances(before, record, params.get("attributes"))
        if gone:
            add_nulls(out, gone, sub.ctx.compact, fmt=params["format"], sys_attrs=bool(params.get("sysAttrs")),
                      show_changes=show_changes, deleted_at=deleted_at or clock.iso(clock.now()), after=record)
    if "pick" in params or "omit" in params:
        pick = frozenset(params["pick"]) if "pick" in params else None
        out = project_rendered(out, pick, frozenset(params.get("omit", ())), sub.ctx.expand)
    return out


def render_linked(sub: Compiled, record: EntityRecord) -> dict[str, Any]:
    """An entity a notified one links to (`notification.join`, §4.5.23): the subscription's format, sysAttrs
    and language, with all its attributes (`notification.attributes` selects the notified entity's)."""
    params = sub.params
    return render_entity(record.id, record.types, record.attrs, sub.ctx.compact, fmt=params["format"],
                         sys_attrs=bool(params.get("sysAttrs")), created_at=clock.iso(record.created_at),
                         modified_at=clock.iso(record.modified_at), scope=record.scope, lang=sub.spec.get("lang"))


async def join_linked(sub: Compiled, notified: list[tuple[EntityRecord | None, dict[str, Any]]],
                      load: Callable[[list[str]], Awaitable[dict[str, EntityRecord]]]) -> list[dict[str, Any]]:
    """The notification's data with the entities its entities link to, as `notification.join` asks (v1.8.1
    §5.2.14, §4.5.23): under each relationship (`inline`) or after the notified entities, each once (`flat`),
    `joinLevel` hops deep. `notified` pairs each rendered entity with the (masked) state it was rendered
    from (None for a deleted entity: it links to nothing). `load` reads the linked entities as the
    subscription's owner may see them."""
    outs = [out for _, out in notified]
    join, level = sub.params.get("join"), int(sub.params.get("joinLevel", 1))
    if join not in JOINS:
        return outs
    linker: Linker[None] = Linker(load, lambda record, _view: render_linked(sub, record), lambda _view, _iri: None,
                                  lambda _view, _iri: True, sub.ctx.compact)
    states = [(_shown(sub, record, out), out) for record, out in notified if record is not None]
    if join == "flat":
        linked = await linker.flat([r for r, _ in states], [o for _, o in states], None, level)
        return outs + linked[len(states):]
    for record, out in states:
        await linker.inline(record, out, None, sub.params["format"], level)
    return outs


def _shown(sub: Compiled, record: EntityRecord, out: dict[str, Any]) -> EntityRecord:
    """The record as far as its notification shows it (datasetId, attributes, pick/omit): only the
    relationships a subscriber sees are followed."""
    datasets = dataset_filter(sub.spec)
    if datasets is not None:
        record = _only_datasets(record, datasets)
    return dataclasses.replace(record, attrs={iri: instances for iri, instances in record.attrs.items()
                                              if sub.ctx.compact(iri) in out})


def _only_datasets(record: EntityRecord, datasets: frozenset[str]) -> EntityRecord:
    """The record with only the instances of the subscription's datasetIds ("@none": the default)."""
    kept = {iri: [i for i in instances if i.get("datasetId", "@none") in datasets]
            for iri, instances in record.attrs.items()}
    return dataclasses.replace(record, attrs={iri: instances for iri, instances in kept.items() if instances})


def _add_previous(out: dict[str, Any], record: EntityRecord, before: EntityRecord,
                  compact: Callable[[str], str]) -> None:
    """showChanges: the previous value of each attribute whose default instance changed."""
    for iri, instances in before.attrs.items():
        rendered = out.get(compact(iri))
        old = next((i for i in instances if "datasetId" not in i), None)
        new = next((i for i in record.attrs.get(iri, []) if "datasetId" not in i), None)
        if old is None or new is None or not isinstance(rendered, dict) or old.get("type") not in PREVIOUS_KEY:
            continue
        value_key = VALUE_KEY[old["type"]]
        if old.get(value_key) != new.get(value_key):
            rendered[PREVIOUS_KEY[old["type"]]] = previous_value(old, compact)


def notification(sub: Compiled, data: list[dict[str, Any]]) -> dict[str, Any]:
    """A notification without notifiedAt (the sender sets it when it sends)."""
    body: dict[str, Any] = {"id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}", "type": "Notification",
                            "subscriptionId": sub.id, "data": data}
    if sub.params["endpoint"].get("accept") == "application/ld+json":
        # JSON-LD: the @context on the notification and on each entity, which a receiver may pass on
        # by itself (§5.8.6; ETSI suite 046_14, 046_19).
        context = sub.ctx.response_context
        body = {"@context": context, **body, "data": [{**entity, "@context": context} for entity in data]}
    return body


def outbox_row(sub: Compiled, data: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    payload = notification(sub, data)
    return {"tenant": sub.tenant, "subscription_id": sub.id, "endpoint": sub.endpoint,
            "notification_id": payload["id"], "payload": payload, "created_at": now, "state": "pending",
            "attempts": 0}


Item = TypeVar("Item")


def _chunks(items: list[Item], size: int) -> Iterable[list[Item]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


# ---------------------------------------------------------------------- the service


class SubscriptionService:
    def __init__(self, store: HubStore, resolver: ContextResolver, settings: NotifySettings | None = None,
                 outbound: Outbound | None = None) -> None:
        self.store = store
        self.resolver = resolver
        self.settings = settings or NotifySettings()
        # The outbound policy endpoints must pass (the app's, set by `start_subscriptions`).
        self.outbound = outbound or resolver.store.outbound
        self.cache = SubscriptionCache(resolver)
        # Set by the sender: called after a commit with the endpoints that got new outbox rows.
        self.wake: Callable[[set[str]], None] | None = None
        # Set by `start_subscriptions`: masks each notified entity for the subscription's creator.
        self.masker: Masker | None = None
        self.prepare_masking: Callable[[AsyncConnection, str], Awaitable[None]] | None = None
        self._touched: dict[int, tuple[float, set[str]]] = {}
        # Set by `start_subscriptions`: the owners' current rights, and the data-class checks of filters.
        self.owners = OwnerRights()
        self.filter_refused: FilterCheck | None = None
        self.filter_allowed: EntityCheck | None = None
        # Deliveries sent but not yet recorded: a retrieval waits for them (see inflight).
        self.in_flight = InFlight()

    @property
    def dialect(self) -> str:
        return self.store.dialect

    # ------------------------------------------------------------------ matching (inside the write)

    async def on_changes(self, conn: AsyncConnection, tenant: str, changes: list[Change]) -> None:
        """HubService listener: outbox rows for every subscription the changes trigger."""
        subs = await self.cache.get(conn, tenant)
        if not subs:
            return
        if self.prepare_masking is not None:
            await self.prepare_masking(conn, tenant)
        await self.owners.refresh((sub.spec.get(OWNER_KEY) for sub in subs), conn)
        now = clock.now()
        rows: list[dict[str, Any]] = []
        for sub in subs:
            if not self.may_notify(sub):
                continue
            matched = [change for change in changes
                       if sub.matches(change, now) and self.filters_allowed(sub, change.after or change.before)]
            size = self.settings.max_entities_per_notification
            if "join" in sub.params:
                # The entities are split first and each part joined: a linked entity goes in the
                # notification of the entity linking to it (flat), never alone in one of its own.
                parts = [await self._joined(conn, tenant, sub, part, now) for part in _chunks(matched, size)]
            else:
                rendered = (render_data(sub, change, now, self.masker) for change in matched)
                parts = list(_chunks([item for item in rendered if item is not None], size))
            rows.extend(outbox_row(sub, chunk, now) for chunk in parts if chunk)
        if rows:
            await self.enqueue(conn, rows)
            self._remember(changes, {row["endpoint"] for row in rows})

    async def _joined(self, conn: AsyncConnection, tenant: str, sub: Compiled, changes: list[Change],
                      now: datetime) -> list[dict[str, Any]]:
        """The rendered changes with their linked entities (`notification.join`)."""
        notified: list[tuple[EntityRecord | None, dict[str, Any]]] = []
        for change in changes:
            seen = masked_change(sub, change, self.masker)
            if seen is not None:
                notified.append((seen.after, render_seen(sub, seen, now)))
        return await join_linked(sub, notified, self.visible_loader(conn, tenant, sub))

    def visible_loader(self, conn: AsyncConnection, tenant: str,
                       sub: Compiled) -> Callable[[list[str]], Awaitable[dict[str, EntityRecord]]]:
        """Reads entities as the subscription's owner may see them (masked; left out when it sees none)."""
        async def load(ids: list[str]) -> dict[str, EntityRecord]:
            found = await self.store.fetch(conn, tenant, ids)
            if self.masker is None:
                return found
            masked = {entity_id: self.masker(sub, record) for entity_id, record in found.items()}
            return {entity_id: record for entity_id, record in masked.items() if record is not None}

        return load

    def may_notify(self, sub: Compiled) -> bool:
        """Not suspended (its owner exists and is enabled), and its filters are still the owner's to use."""
        owner = self.owners.now(sub.spec.get(OWNER_KEY))
        if owner.suspended:
            return False
        return self.filter_refused is None or self.filter_refused(sub.tenant, sub.spec, owner.principal) is None

    def filters_allowed(self, sub: Compiled, state: EntityRecord | None) -> bool:
        """May the subscription's filters be evaluated on this entity for its owner (by data class, for
        the entity's owning department)? If not, the entity does not match: its match would tell."""
        if self.filter_allowed is None or state is None:
            return True
        return self.filter_allowed(sub.tenant, sub.spec, self.owners.now(sub.spec.get(OWNER_KEY)).principal, state)

    def _check_filters(self, tenant: str, spec: Spec, owner: dict[str, Any] | None) -> None:
        if self.filter_refused is None:
            return
        reason = self.filter_refused(tenant, spec, principal_of_owner(owner))
        if reason is not None:
            raise AccessDenied(f"subscription filter refused: {reason}")

    async def _verified(self, owner: dict[str, Any] | None) -> dict[str, Any] | None:
        """The owner's claims, marked when they belong to a principal stored in the security tables."""
        if owner is None or self.owners.lookup is None or not isinstance(owner.get("id"), str):
            return owner
        self.owners.forget(owner["id"])
        try:
            await self.owners.lookup(owner["id"], None)
        except OwnerAbsent:
            return {**owner, VERIFIED_KEY: False}
        except LookupError:
            return owner
        return {**owner, VERIFIED_KEY: True}

    async def enqueue(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await conn.execute(insert(outbox), rows)
        if self.dialect == "postgresql":
            # Delivered at commit, to every sender process: they wake at once instead of polling.
            for endpoint in sorted({row["endpoint"] for row in rows}):
                await conn.execute(text("SELECT pg_notify(:channel, :endpoint)"),
                                   {"channel": NOTIFY_CHANNEL, "endpoint": endpoint[:7000]})

    def _remember(self, changes: list[Change], endpoints: set[str]) -> None:
        """Keep the endpoints until the hub publishes the change, which it does only after the commit."""
        stamp = time.monotonic()
        for change in changes:
            self._touched[id(change)] = (stamp, endpoints)
        if len(self._touched) > 10_000:
            # Rolled-back writes are never published; drop what is surely stale.
            self._touched = {k: v for k, v in self._touched.items() if stamp - v[0] < 60}

    async def after_commit(self, event: Event) -> None:
        """Event-bus handler (hub.entity.changed): the outbox rows of this change are now visible."""
        touched = self._touched.pop(id(event.payload.get("change")), None)
        if touched is not None and self.wake is not None:
            self.wake(touched[1])

    # ------------------------------------------------------------------ CRUD

    async def _bump(self, conn: AsyncConnection, tenant: str) -> None:
        stmt = self.store._insert(subscription_versions).values(tenant=tenant, version=uuid.uuid4().hex)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["tenant"],
                                                      set_={"version": stmt.excluded.version}))

    async def _require_tenant(self, conn: AsyncConnection, tenant: str) -> None:
        if not await self.store.tenant_exists(conn, tenant):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")

    async def _row(self, conn: AsyncConnection, tenant: str, sub_id: str, for_update: bool = False) -> Any:
        check_entity_id(sub_id)
        stmt = select(subscriptions).where(subscriptions.c.tenant == tenant, subscriptions.c.id == sub_id)
        if for_update and self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        if row is None:
            await self._require_tenant(conn, tenant)
            raise ResourceNotFound(f"subscription {sub_id} not found")
        return row

    async def create(self, tenant: str, body: Any, ctx: ActiveContext, owner: dict[str, Any] | None = None) -> str:
        spec = parse_subscription(body, ctx)
        spec.pop(OWNER_KEY, None)
        self._check_filters(tenant, spec, owner)
        owner = await self._verified(owner)
        if owner is not None:
            spec[OWNER_KEY] = owner
        context = spec.get("jsonldContext", ctx.source)
        await self.check_endpoint(spec)
        await self.resolver.resolve(context)  # fails now (503) rather than at every notification
        now = clock.now()
        values = {"tenant": tenant, "id": spec["id"], "created_at": now, **_columns(spec, context, now)}
        async with self.store.write() as conn:
            await self.store.ensure_tenant(conn, tenant)
            exists = (await conn.execute(select(subscriptions.c.id).where(
                subscriptions.c.tenant == tenant, subscriptions.c.id == spec["id"]))).first()
            if exists:
                raise AlreadyExists(f"subscription {spec['id']} already exists")
            await conn.execute(insert(subscriptions).values(**values))
            await self._bump(conn, tenant)
        return str(spec["id"])

    async def check_endpoint(self, spec: dict[str, Any]) -> None:
        """400 for an endpoint the outbound policy refuses (loopback, private, … unless allow-listed).

        Checked again at every delivery: a name may resolve elsewhere by then. A name that does not
        resolve now is accepted (its receiver may not be up yet) and checked when used.
        """
        uri = str(spec.get("notification", {}).get("endpoint", {}).get("uri", ""))
        try:
            await self.outbound.check_url(uri, schemes=("http", "https", "mqtt", "mqtts"), unresolved_ok=True)
        except OutboundRefused as exc:
            raise BadRequestData(f"notification.endpoint.uri: {exc.reason}") from exc

    async def retrieve(self, tenant: str, sub_id: str, compact: Callable[[str], str],
                       viewer: str | None = None) -> dict[str, Any]:
        """The subscription as `viewer` (a principal id) sees it: its secrets only if it is the owner.

        Notifications being sent are counted: their outcome is waited for, up to 2 s, so a receiver that
        reads its subscription as soon as a notification arrives sees it (§5.2.14 lastNotification)."""
        await self.in_flight.settle((tenant, sub_id), 2.0)
        async with self.store.read() as conn:
            row = await self._row(conn, tenant, sub_id)
            await self.owners.refresh([(row.spec or {}).get(OWNER_KEY)], conn)
        return self._render(row, compact, clock.now(), viewer)

    def _render(self, row: Any, compact: Callable[[str], str], now: datetime, viewer: str | None) -> dict[str, Any]:
        owner = (row.spec or {}).get(OWNER_KEY)
        mine = viewer is not None and isinstance(owner, dict) and owner.get("id") == viewer
        return render_subscription(row.spec, row, compact, now, suspended=self.owners.now(owner).suspended,
                                   secrets=mine)

    async def owner(self, tenant: str, sub_id: str) -> dict[str, Any] | None:
        """The stored claims of the subscription's creator (or last updater); 404 when there is none."""
        async with self.store.read() as conn:
            row = await self._row(conn, tenant, sub_id)
        found = (row.spec or {}).get(OWNER_KEY)
        return found if isinstance(found, dict) else None

    async def query(self, tenant: str, compact: Callable[[str], str], limit: int, offset: int,
                    count: bool, visible: Callable[[dict[str, Any] | None], bool] | None = None,
                    viewer: str | None = None) -> tuple[list[dict[str, Any]], int | None, bool]:
        """A page of subscriptions in the order they were created (ids break ties), the total with
        `count`, and whether more follow."""
        async with self.store.read() as conn:
            await self._require_tenant(conn, tenant)
            total = None
            if visible is not None:
                # Department-scoped callers: only the subscriptions their scope owns, counted and paged
                # after that filter (a tenant holds few subscriptions; the filter runs in Python).
                mine = [row for row in await conn.execute(select(subscriptions).where(
                    subscriptions.c.tenant == tenant).order_by(*_CREATION_ORDER))
                    if visible((row.spec or {}).get(OWNER_KEY))]
                rows = mine[offset:offset + limit + 1]
                total = len(mine) if count else None
            else:
                if count:
                    total = (await conn.execute(select(func.count()).select_from(subscriptions)
                                                .where(subscriptions.c.tenant == tenant))).scalar_one()
                # One row past the page tells whether a next page exists (no next link after the last one).
                rows = list(await conn.execute(select(subscriptions).where(subscriptions.c.tenant == tenant)
                                               .order_by(*_CREATION_ORDER).limit(limit + 1).offset(offset)))
            more = len(rows) > limit
            rows = rows[:limit]
            await self.owners.refresh([(row.spec or {}).get(OWNER_KEY) for row in rows], conn)
        now = clock.now()
        return [self._render(row, compact, now, viewer) for row in rows], total, more

    async def update(self, tenant: str, sub_id: str, body: Any, ctx: ActiveContext,
                     owner: dict[str, Any] | None = None) -> None:
        members = parse_members(body, ctx, allow_null=True)
        if members.get("notification"):  # replaced whole; checked before the write (DNS may take a while)
            await self.check_endpoint(members)
        if members.get("jsonldContext"):
            await self.resolver.resolve(members["jsonldContext"])
        owner = await self._verified(owner)
        now = clock.now()
        async with self.store.write() as conn:
            row = await self._row(conn, tenant, sub_id, for_update=True)
            spec = apply_update(row.spec, body, members)
            if owner is not None:
                previous = (row.spec or {}).get(OWNER_KEY)
                if "notification" not in members and (not isinstance(previous, dict)
                                                       or previous.get("id") != owner.get("id")):
                    # The endpoint's secrets were given by the previous owner: they do not pass to
                    # whoever takes the subscription over (who would then be shown them).
                    endpoint = spec["notification"]["endpoint"]
                    spec["notification"] = {**spec["notification"], "endpoint": {
                        k: v for k, v in endpoint.items() if k != "receiverInfo"}}
                spec[OWNER_KEY] = owner  # whoever changes it last is who it now notifies for
            self._check_filters(tenant, spec, owner)
            context = _context_after_update(row, spec, members, ctx)
            values = _columns(spec, context, now)
            if "timeInterval" not in members and row.next_periodic_at is not None:
                values["next_periodic_at"] = row.next_periodic_at
            # An update is how an operator answers a failed subscription: its parked notifications go out again.
            values.update(status="ok", consecutive_failures=0)
            await conn.execute(update(subscriptions).where(subscriptions.c.tenant == tenant,
                                                           subscriptions.c.id == sub_id).values(**values))
            await conn.execute(update(outbox).where(outbox.c.tenant == tenant, outbox.c.subscription_id == sub_id)
                               .values(endpoint=values["endpoint"], state="pending", attempts=0))
            await self._bump(conn, tenant)
        if self.wake is not None:
            self.wake({values["endpoint"]})

    async def delete(self, tenant: str, sub_id: str) -> None:
        async with self.store.write() as conn:
            await self._row(conn, tenant, sub_id, for_update=True)
            await conn.execute(delete(subscriptions).where(subscriptions.c.tenant == tenant,
                                                           subscriptions.c.id == sub_id))
            # Notifications of a deleted subscription are no longer wanted by anyone.
            await conn.execute(delete(outbox).where(outbox.c.tenant == tenant, outbox.c.subscription_id == sub_id))
            await self._bump(conn, tenant)


def _columns(spec: Spec, context: Any, now: datetime) -> dict[str, Any]:
    """The columns derived from a spec: what the sender and the scheduler filter on."""
    interval = spec.get("timeInterval")
    expires = spec.get("expiresAt")
    return {"spec": spec, "context": context, "endpoint": spec["notification"]["endpoint"]["uri"],
            "is_active": 1 if spec.get("isActive", True) else 0,
            "expires_at": clock.parse_iso(expires) if expires else None,
            "time_interval": interval, "throttling": spec.get("throttling"),
            # A periodic subscription notifies at once, then every timeInterval seconds.
            "next_periodic_at": now if interval else None, "modified_at": now}


def _context_after_update(row: Any, spec: Spec, members: Spec, ctx: ActiveContext) -> Any:
    """jsonldContext set: that URL; removed: the @context of this update; untouched: the stored one."""
    if "jsonldContext" not in members:
        return row.context
    return spec.get("jsonldContext", ctx.source)


def next_due(now: datetime, interval: float) -> datetime:
    return now + timedelta(seconds=interval)
