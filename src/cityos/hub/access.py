"""Access control on the hub's API: who is calling, in which tenant, what they may change, what they see.

Every hub handler starts with ``access = await access_of(request)`` (after the router's
``require(action)`` gate has authenticated the caller and checked the tenant header). Then:

- reads pass every record through ``access.view(record)``: attributes are hidden or masked by data
  class (`cityos.security.classes`), and a record none of whose attributes the caller may see is
  withheld; sensitive/confidential attributes shown in clear are audited (``access.finish()``);
- writes run with ``access.guarding()`` set, so the hub service checks each changed entity against
  the caller's department / ownership scope (inside the transaction, in memory), and are audited
  after the commit with ``access.audited(...)``; a refusal is audited too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.hub.models import entities
from cityos.hub.qlang import And, Comparison, Exists, Or, QExpr
from cityos.hub.service import AccessDenied, Change, write_guard
from cityos.hub.sources import SourcePolicies, source_guard
from cityos.hub.store import EntityQuery, EntityRecord, HubStore
from cityos.hub.temporal.service import TemporalEntity
from cityos.security.api import client_ip, current_principal, request_tenant, security_of
from cityos.security.audit import AuditEvent
from cityos.security.audit_intents import Intent, announce
from cityos.security.classes import ClassRegistry, TypeClasses, class_registry
from cityos.security.masking import _mask_instance
from cityos.security.policy import Principal, Resource, Scope, Visibility, authorize, role_of, scope_for, visible_class

T = TypeVar("T")
MAX_IDS_AUDITED = 100

# What a query filter needs of an attribute: its value in clear (q comparisons, geo-queries), or only
# that the caller sees it at all, masked or not (q existence tests, attrs=).
NEED_VALUE = "value"
NEED_PRESENT = "present"
# How far a caller sees (a type's entities, an attribute's values) over the owning departments an
# entity may have: always, never, or depending on the entity's department.
ALWAYS, NEVER, SOME = "always", "never", "some"
_OUTSIDE = "\x00outside"  # a department that is nobody's
_NOT_ATTRIBUTES = frozenset({"id", "type", "createdAt", "modifiedAt", "deletedAt", "scope"})


def _ownership(resource: Resource) -> tuple[str | None, str | None, str | None]:
    return resource.department, resource.owner, resource.district


def _q_refs(expr: QExpr, expand: Any, out: dict[str, str]) -> None:
    if isinstance(expr, And | Or):
        for child in expr.children:
            _q_refs(child, expand, out)
    elif isinstance(expr, Comparison | Exists) and expr.path.attr not in _NOT_ATTRIBUTES:
        iri = expand(expr.path.attr) if expand is not None else expr.path.attr
        if isinstance(expr, Comparison):
            out[iri] = NEED_VALUE
        else:
            out.setdefault(iri, NEED_PRESENT)


@dataclass
class QueryPlan:
    """A query as the caller may run it (see `Access.plan_query`)."""

    query: EntityQuery
    # The store's count is what the caller sees: no matching entity is withheld or dropped.
    exact: bool = True
    # Attributes filtered on whose visibility depends on the entity's owning department: an entity
    # whose value the caller may not see there is treated as not matching.
    checks: dict[str, str] = field(default_factory=dict)
    empty: bool = False  # nothing of the queried types is ever shown to the caller


async def refresh_classes(registry: ClassRegistry, store: HubStore, conn: AsyncConnection | None,
                          tenant: str) -> None:
    """Re-read `tenant`'s DataClassPolicy entities when the cached copy is older than the refresh time."""
    if not registry.needs_refresh(tenant):
        return
    # One refresh per tenant at a time: the requests that find the copy stale together wait for it
    # rather than each reading the policies on a connection of its own (connection churn under load).
    async with registry.refresh_lock(tenant):
        if not registry.needs_refresh(tenant):
            return
        query = EntityQuery(types=[registry.policy_type], limit=10_000)
        if conn is not None:
            records, _ = await store.query(conn, tenant, query)
        else:
            async with store.read() as own:
                records, _ = await store.query(own, tenant, query)
        registry.set_tenant(tenant, records)


@dataclass
class Access:
    principal: Principal | None
    tenant: str
    registry: ClassRegistry
    ip: str = ""
    path: str = ""
    revealed: list[tuple[str, list[str]]] = field(default_factory=list)
    state: Any = None
    intents: list[Intent] = field(default_factory=list)
    sources: SourcePolicies | None = None  # 一数一源 (the hub service's declared sources)

    # ------------------------------------------------------------------ reads

    def view(self, record: EntityRecord) -> EntityRecord | None:
        """`record` as the caller may see it; None when it may see none of it."""
        result, classes, dept = self.registry.mask_attrs(self.tenant, record.types, record.attrs, self.principal)
        if result is None:
            return record
        if self.registry.invisible(self.principal, classes, dept):
            return None
        if result.revealed:
            self.revealed.append((record.id, result.revealed))
        if not result.hidden and not result.masked:
            return record
        return EntityRecord(record.id, record.types, result.entity, record.created_at, record.modified_at,
                            record.scope)

    def view_all(self, records: list[EntityRecord]) -> list[EntityRecord]:
        return [seen for seen in (self.view(r) for r in records) if seen is not None]

    def temporal_department(self, entity: TemporalEntity, classes: TypeClasses) -> str | None:
        """The owning department a temporal answer is shown for: the entity's *current* state in the
        store, exactly as the entity API decides it. History never decides it (a past or future-dated
        instance of owningDepartment must not open the entity to another department). An entity
        without a current state belongs to no caller's department: department-bound roles see its
        sensitive history masked and its confidential history not at all."""
        if entity.current_attrs is None:
            return _OUTSIDE
        return self.registry.department_of(entity.current_attrs, classes)

    def view_temporal(self, entity: TemporalEntity) -> TemporalEntity | None:
        classes = self.registry.for_types(self.tenant, entity.types)
        if self.registry.all_clear(self.principal, classes.levels):
            return entity
        dept = self.temporal_department(entity, classes)
        if self.registry.invisible(self.principal, classes, dept):
            return None
        instances: dict[str, Any] = {}
        buckets: dict[str, Any] = {}
        revealed: list[str] = []
        for iri in {*entity.instances, *entity.buckets}:
            data_class = classes.attrs.get(iri, classes.default)
            seen = visible_class(self.principal, data_class, dept)
            if seen is Visibility.HIDDEN:
                continue
            if seen is Visibility.MASKED:
                if iri in entity.instances:
                    instances[iri] = [dataclasses.replace(r, instance=_mask_instance(r.instance))
                                      for r in entity.instances[iri]]
                continue  # aggregates of masked values are not shown
            if data_class in ("sensitive", "confidential"):
                revealed.append(iri)
            if iri in entity.instances:
                instances[iri] = entity.instances[iri]
            if iri in entity.buckets:
                buckets[iri] = entity.buckets[iri]
        if revealed:
            self.revealed.append((entity.id, revealed))
        return dataclasses.replace(entity, instances=instances, buckets=buckets,
                                   attr_types={k: v for k, v in entity.attr_types.items()
                                               if k in instances or k in buckets})

    def matches_temporal(self, plan: QueryPlan, entity: TemporalEntity) -> bool:
        """`matches` for a temporal answer: the filters are judged on the entity's current ownership."""
        if not plan.checks:
            return True
        classes = self.registry.for_types(self.tenant, entity.types)
        dept = self.temporal_department(entity, classes)
        return all(self._sees(classes.attrs.get(iri, classes.default), need, dept)
                   for iri, need in plan.checks.items())

    # ------------------------------------------------------------------ query filters and counts

    def _departments(self) -> tuple[str | None, ...]:
        if self.principal is None:
            return (None,)
        inside = tuple(sorted(self.principal.departments)[:1])
        return (None, _OUTSIDE, *inside)

    def _reach(self, checks: list[bool]) -> str:
        return ALWAYS if all(checks) else NEVER if not any(checks) else SOME

    def _sees(self, data_class: str, need: str, dept: str | None) -> bool:
        seen = visible_class(self.principal, data_class, dept)
        return seen is Visibility.CLEAR if need == NEED_VALUE else seen is not Visibility.HIDDEN

    def attr_reach(self, classes: TypeClasses, iri: str, need: str) -> str:
        data_class = classes.attrs.get(iri, classes.default)
        return self._reach([self._sees(data_class, need, d) for d in self._departments()])

    def type_reach(self, classes: TypeClasses) -> str:
        """Does the caller see something of entities with these classes: always, never, or by department?"""
        key = ("type", self.principal.role if self.principal else None,
               self.principal.departments if self.principal else None, tuple(sorted(classes.attrs.items())),
               classes.default, classes.department)
        found: str | None = self.registry.view_cache.get(key)
        if found is None:
            found = self._reach([not self.registry.invisible(self.principal, classes, d)
                                 for d in self._departments()])
            if len(self.registry.view_cache) > 10_000:
                self.registry.view_cache.clear()
            self.registry.view_cache[key] = found
        return found

    def _candidates(self) -> tuple[dict[str, TypeClasses], dict[str, str], str]:
        """The tenant's declared types, how far the caller sees each, and how far undeclared ones."""
        key = ("untyped", self.tenant, self.principal.role if self.principal else None,
               self.principal.departments if self.principal else None)
        found: tuple[dict[str, TypeClasses], dict[str, str], str] | None = self.registry.view_cache.get(key)
        if found is None:
            declared = self.registry.describe(self.tenant)
            found = declared, {t: self.type_reach(tc) for t, tc in declared.items()}, self.type_reach(TypeClasses())
            self.registry.view_cache[key] = found
        return found

    async def refuse(self, detail: str) -> AccessDenied:
        await self.record("entity.query", self.path, "denied", reason=detail)
        return AccessDenied(detail)

    async def plan_query(self, query: EntityQuery, restrict_sql: bool = True,
                         watched: list[str] | None = None) -> QueryPlan:
        """Fit `query` to what the caller may see, or refuse it (403).

        - Entities of types the caller never sees anything of are left out in SQL (``restrict_sql``),
          so that the count and the pages hold only what is shown.
        - A filter (q, attrs=, geoproperty) on an attribute the caller may not see (or, for a value
          filter, not see in clear) for a queried type is refused: its matches would tell the value.
          Where that depends on each entity's owning department, the entity is checked one by one
          and treated as not matching.
        - ``exact`` is False when some matching entity may still be withheld or dropped: the caller
          then gets no NGSILD-Results-Count (a count of what it cannot see would leak).
        """
        plan, refusal = self.fit_query(query, restrict_sql, watched)
        if refusal is not None:
            raise await self.refuse(refusal)
        return plan

    def fit_query(self, query: EntityQuery, restrict_sql: bool = True,
                  watched: list[str] | None = None) -> tuple[QueryPlan, str | None]:
        """`plan_query` without I/O: the plan, or the reason of the refusal. Also used where no
        request is at hand (a subscription's filters, re-checked at each notification with its
        owner's current rights). `watched` (a subscription's watchedAttributes) are attributes whose
        changes would tell of their values: they need the value in clear, like a q comparison."""
        if isinstance(self, _Unenforced):
            return QueryPlan(query), None
        refs: dict[str, str] = {}
        for iri in watched or ():
            refs[iri] = NEED_VALUE
        if query.q is not None:
            _q_refs(query.q, query.expand, refs)
        for iri in query.attrs or ():
            refs.setdefault(iri, NEED_PRESENT)
        if query.geo is not None:
            refs[query.geo.geoproperty] = NEED_VALUE
        plan = QueryPlan(query)
        # (type classes, the type explicitly queried or declaring the attribute)
        if query.types:
            reach = {t: self.type_reach(self.registry.for_types(self.tenant, [t])) for t in query.types}
            keep = [t for t in query.types if reach[t] != NEVER]
            if not keep:
                plan.empty = True
                return plan, None
            if len(keep) < len(query.types):
                plan.query = dataclasses.replace(query, types=keep)
            plan.exact = all(reach[t] == ALWAYS for t in keep)
            typed = [(self.registry.for_types(self.tenant, [t]), True) for t in keep]
        else:
            declared, reach, default_reach = self._candidates()
            seen = [t for t in declared if reach[t] != NEVER]
            never = [t for t in declared if reach[t] == NEVER]
            typed = [(declared[t], False) for t in seen]
            if default_reach == NEVER:
                if restrict_sql:
                    if not seen:
                        plan.empty = True
                        return plan, None
                    plan.query = dataclasses.replace(query, extra=[*query.extra, entities.c.type.in_(seen)])
                plan.exact = restrict_sql and all(reach[t] == ALWAYS for t in seen)
            else:
                typed.append((TypeClasses(), False))
                if never and restrict_sql:
                    plan.query = dataclasses.replace(query, extra=[*query.extra, entities.c.type.not_in(never)])
                plan.exact = ((restrict_sql or not never) and default_reach == ALWAYS
                              and all(reach[t] == ALWAYS for t in seen))
        for iri, need in refs.items():
            for classes, explicit in typed:
                how = self.attr_reach(classes, iri, need)
                if how == ALWAYS:
                    continue
                if how == NEVER and (explicit or iri in classes.attrs):
                    what = "filter on the value of" if need == NEED_VALUE else "filter on"
                    return plan, (f"you may not {what} the attribute {iri}: its data class is "
                                  f"{classes.attrs.get(iri, classes.default)}")
                plan.checks[iri] = NEED_VALUE if NEED_VALUE in (need, plan.checks.get(iri)) else need
                plan.exact = False
        return plan, None

    def matches(self, plan: QueryPlan, record: EntityRecord) -> bool:
        """Does `record` still match once the filters the caller may not use on it are taken away?"""
        return self.matches_attrs(plan, record.types, record.attrs)

    def matches_attrs(self, plan: QueryPlan, types: list[str], attrs: dict[str, Any]) -> bool:
        if not plan.checks:
            return True
        classes = self.registry.for_types(self.tenant, types)
        dept = self.registry.department_of(attrs, classes)
        return all(self._sees(classes.attrs.get(iri, classes.default), need, dept)
                   for iri, need in plan.checks.items())

    def visible_attr(self, type_iri: str, attr_iri: str) -> bool:
        """Discovery: may the caller see `attr_iri` on some entity of `type_iri`?"""
        classes = self.registry.for_types(self.tenant, [type_iri])
        return self.attr_reach(classes, attr_iri, NEED_PRESENT) != NEVER

    def visible_type(self, type_iri: str) -> bool:
        return self.type_reach(self.registry.for_types(self.tenant, [type_iri])) != NEVER

    async def finish(self) -> None:
        """Audit the sensitive or confidential values this request showed in clear."""
        if not self.revealed:
            return
        ids = [entity_id for entity_id, _ in self.revealed]
        attrs = sorted({a for _, names in self.revealed for a in names})
        self.revealed = []
        await self.record("entity.read.sensitive", ids[0] if len(ids) == 1 else f"{len(ids)} entities",
                          ids=ids[:MAX_IDS_AUDITED], attrs=attrs)

    # ------------------------------------------------------------------ writes

    def _resource(self, state: EntityRecord) -> Resource:
        classes = self.registry.for_types(self.tenant, state.types)
        return Resource("entity", self.tenant, id=state.id, department=self.registry.department_of(state.attrs,
                                                                                                   classes),
                        district=self.registry.district_of(state.attrs), owner=self.registry.owner_of(state.attrs))

    def guard(self, action: str, change: Change) -> str | None:
        policy = self.registry.policy_type
        states = [s for s in (change.before, change.after) if s is not None]
        if any(policy in s.types for s in states) and not authorize(
                self.principal, "tenant.manage", Resource("tenant", self.tenant)):
            return "data-class policies are changed with tenant.manage"
        scope = scope_for(role_of(self.principal), action)
        if scope in (Scope.TENANT, Scope.ALL):
            return self._source_check(change)  # a tenant-wide role is still not every item's source
        if not states:
            # A temporal write to an entity without a current state: no department or owner to check.
            return "the history of an entity without a current state needs a tenant-wide role"
        resources = [self._resource(state) for state in states]
        for resource in resources:
            decision = authorize(self.principal, action, resource)
            if not decision:
                return decision.reason
        if scope is Scope.OWN and len(resources) == 2 and _ownership(resources[0]) != _ownership(resources[1]):
            # Who owns an entity decides who reads its sensitive and confidential values: a caller whose
            # right reaches only its own records (a citizen) may not hand one to a department or district.
            return "only the owning department or a tenant-wide role may change who owns an entity"
        return self._source_check(change)

    def _source_check(self, change: Change) -> str | None:
        return self.sources.check(self.tenant, self.principal, change) if self.sources is not None else None

    def check_sources(self, change: Change) -> str | None:
        """一数一源 alone (SourceGuard), for history writes: the scope was judged on the current state."""
        return self._source_check(change)

    def sources_committed(self, entity_ids: set[str]) -> None:
        if self.sources is not None:
            self.sources.settle_flagged(entity_ids)

    @contextlib.contextmanager
    def guarding(self, action: str | None = None, resource: str = "") -> Iterator[None]:
        """Writes in this block are checked against the caller's scope; with `action`, their audit record
        is announced to the write transactions (`security.audit_intents`), settled by `settle()` once
        the full record is chained."""
        token = write_guard.set(self.guard)
        sources_token = source_guard.set(self)
        try:
            if action is None:
                yield
            else:
                with announce(AuditEvent.of(self.principal, action, resource[:1024], ip=self.ip,
                                            tenant=self.tenant)) as intent:
                    self.intents.append(intent)
                    yield
        finally:
            source_guard.reset(sources_token)
            write_guard.reset(token)

    async def settle(self) -> None:
        """The records of this request's writes are chained: drop their intents."""
        intents, self.intents = self.intents, []
        keeper = getattr(self.state, "intents", None) if self.state is not None else None
        if keeper is not None:
            for intent in intents:
                await keeper.settle(intent)

    async def audited(self, action: str, resource: str, work: Awaitable[T], **detail: Any) -> T:
        """Run a write with the guard set; audit its refusal or (after the commit) its success."""
        try:
            with self.guarding(action, resource):
                result = await work
        except AccessDenied as exc:
            await self.record(action, resource, "denied", reason=exc.detail)
            raise
        await self.record(action, resource, **detail)
        await self.settle()
        return result

    async def record(self, action: str, resource: str, outcome: str = "success", **detail: Any) -> None:
        if self.state is None:
            return
        await self.state.service.record(AuditEvent.of(self.principal, action, resource, outcome, ip=self.ip,
                                                      tenant=self.tenant, **detail))


class _Unenforced(Access):
    """Benchmarks only (`disable_for_benchmark`): the hub as it was before access control."""

    def view(self, record: EntityRecord) -> EntityRecord | None:
        return record

    def view_temporal(self, entity: TemporalEntity) -> TemporalEntity | None:
        return entity

    def matches_attrs(self, plan: QueryPlan, types: list[str], attrs: dict[str, Any]) -> bool:
        return True

    def visible_attr(self, type_iri: str, attr_iri: str) -> bool:
        return True

    def visible_type(self, type_iri: str) -> bool:
        return True

    def guard(self, action: str, change: Change) -> str | None:
        return None

    @contextlib.contextmanager
    def guarding(self, action: str | None = None, resource: str = "") -> Iterator[None]:
        yield

    async def record(self, action: str, resource: str, outcome: str = "success", **detail: Any) -> None:
        return None


def disable_for_benchmark(app: Any) -> None:
    """Turn the hub's access control off on THIS app object (the `require` gates of the hub routes,
    masking, auditing), so a benchmark can measure its cost against the same app without it.
    Reachable only from Python, never from configuration."""
    app.state.hub_access_unenforced = True


async def access_of(request: Request) -> Access:
    """The caller's access for this request (the router's `require` has run: 401/403 are already raised)."""
    cached: Access | None = getattr(request.state, "hub_access", None)
    if cached is not None:
        return cached
    if getattr(request.app.state, "hub_access_unenforced", False):
        from cityos.hub.http import tenant_of

        unenforced = _Unenforced(None, tenant_of(request), class_registry(request.app))
        request.state.hub_access = unenforced
        return unenforced
    principal = await current_principal(request)
    tenant = request_tenant(request, principal)
    app = request.app
    registry = class_registry(app)
    if registry.needs_refresh(tenant):
        await refresh_classes(registry, app.state.hub.service.store, None, tenant)
    access = Access(principal, tenant, registry, client_ip(request), request.url.path,
                    state=getattr(app.state, "security", None), sources=app.state.hub.service.sources)
    request.state.hub_access = access
    return access


def batch_audit_detail(ok: list[str], errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ids": ok[:MAX_IDS_AUDITED], "count": len(ok), "errors": len(errors)}


def denied_in(errors: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("entityId")) for e in errors if e.get("error", {}).get("status") == 403]


__all__ = ["Access", "QueryPlan", "TypeClasses", "access_of", "refresh_classes", "security_of"]
