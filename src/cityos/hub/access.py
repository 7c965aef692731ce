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

from cityos.hub.service import AccessDenied, Change, write_guard
from cityos.hub.store import EntityQuery, EntityRecord, HubStore
from cityos.hub.temporal.service import TemporalEntity
from cityos.security.api import client_ip, current_principal, request_tenant, security_of
from cityos.security.audit import AuditEvent
from cityos.security.classes import ClassRegistry, TypeClasses, class_registry
from cityos.security.masking import _mask_instance
from cityos.security.policy import Principal, Resource, Scope, Visibility, authorize, role_of, scope_for, visible_class

T = TypeVar("T")
MAX_IDS_AUDITED = 100


async def refresh_classes(registry: ClassRegistry, store: HubStore, conn: AsyncConnection | None,
                          tenant: str) -> None:
    """Re-read `tenant`'s DataClassPolicy entities when the cached copy is older than the refresh time."""
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

    def view_temporal(self, entity: TemporalEntity) -> TemporalEntity | None:
        classes = self.registry.for_types(self.tenant, entity.types)
        if self.registry.all_clear(self.principal, classes.levels):
            return entity
        latest = {iri: [rows[-1].instance] for iri, rows in entity.instances.items() if rows}
        dept = self.registry.department_of(latest, classes)
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
        if scope_for(role_of(self.principal), action) in (Scope.TENANT, Scope.ALL):
            return None
        for state in states:
            decision = authorize(self.principal, action, self._resource(state))
            if not decision:
                return decision.reason
        return None

    @contextlib.contextmanager
    def guarding(self) -> Iterator[None]:
        token = write_guard.set(self.guard)
        try:
            yield
        finally:
            write_guard.reset(token)

    async def audited(self, action: str, resource: str, work: Awaitable[T], **detail: Any) -> T:
        """Run a write with the guard set; audit its refusal or (after the commit) its success."""
        try:
            with self.guarding():
                result = await work
        except AccessDenied as exc:
            await self.record(action, resource, "denied", reason=exc.detail)
            raise
        await self.record(action, resource, **detail)
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

    def guard(self, action: str, change: Change) -> str | None:
        return None

    @contextlib.contextmanager
    def guarding(self) -> Iterator[None]:
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
                    state=getattr(app.state, "security", None))
    request.state.hub_access = access
    return access


def batch_audit_detail(ok: list[str], errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ids": ok[:MAX_IDS_AUDITED], "count": len(ok), "errors": len(errors)}


def denied_in(errors: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("entityId")) for e in errors if e.get("error", {}).get("status") == 403]


__all__ = ["Access", "TypeClasses", "access_of", "refresh_classes", "security_of"]
