"""What a subscription may still do: its owner's *current* rights, and filters that do not tell
hidden values.

A subscription keeps the claims of whoever created (or last changed) it. Those claims age: the
owner may be disabled, lose a role or move to another department. So at each notification the
owner's current claims are read back (`SecurityService.current_owner_claims`, cached a few seconds
per owner) and

- a subscription whose owner is gone or disabled is *suspended*: it matches nothing and its
  queued notifications are not sent;
- masking and the filter check use the owner's current role and departments.

A filter (q, geoQ, watchedAttributes) on an attribute the owner may not read in clear is an
oracle: the notification says whether the hidden value matched. Such filters are refused when the
subscription is created or changed (403, as `Access.plan_query` refuses them on queries), and
re-checked at each notification, entity by entity where the answer depends on the entity's owning
department.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.hub import geoquery, typesel
from cityos.hub.qlang import parse_q
from cityos.hub.store import EntityQuery, EntityRecord
from cityos.hub.subscriptions.spec import selector_types
from cityos.security.policy import Principal, PrincipalKind

# (owner id, a connection to read on or None) → the owner's current claims, None when it is disabled;
# OwnerAbsent when no such principal is stored; LookupError when nothing can be known (no security
# service): the stored claims are used.
Lookup = Callable[[str, AsyncConnection | None], Awaitable[dict[str, Any] | None]]
OWNER_KEY = "_owner"
# Set in the stored owner when its claims were found in the user (or client) table when it was stored:
# only then does a missing row mean "deleted". A token whose subject was never a stored principal
# (minted outside the login, as tests do) keeps its stored claims.
VERIFIED_KEY = "verified"
TTL_SECONDS = 5.0


class OwnerAbsent(LookupError):
    """No user or client with this id is stored (deleted, or never stored)."""

MAX_CACHED = 10_000


def principal_of_owner(owner: Any) -> Principal | None:
    """A subscription owner's claims as a principal; None (anonymous: fail closed) if unknown."""
    if not isinstance(owner, dict) or not isinstance(owner.get("role"), str):
        return None
    kind: PrincipalKind = "service" if owner.get("kind") == "service" else "user"
    return Principal(id=str(owner.get("id")), kind=kind, role=owner["role"], tenant=str(owner.get("tenant") or ""),
                     username=owner.get("username"), department=owner.get("department"),
                     departments=frozenset(str(d) for d in owner.get("departments") or []),
                     districts=frozenset(str(d) for d in owner.get("districts") or []))


@dataclass(frozen=True)
class OwnerNow:
    suspended: bool
    principal: Principal | None
    claims: dict[str, Any] | None


class OwnerRights:
    """Current claims of subscription owners, cached per owner for `ttl` seconds."""

    def __init__(self, lookup: Lookup | None = None, ttl: float = TTL_SECONDS) -> None:
        self.lookup = lookup
        self.ttl = ttl
        # owner id → (valid until, state, claims, their principal); state is "found" (claims, or None when
        # disabled), "absent" (no such principal stored) or "unknown" (nothing could be known).
        self._cache: dict[str, tuple[float, str, dict[str, Any] | None, Principal | None]] = {}

    @staticmethod
    def _id(stored: Any) -> str | None:
        owner_id = stored.get("id") if isinstance(stored, dict) else None
        return owner_id if isinstance(owner_id, str) and owner_id else None

    async def refresh(self, owners: Iterable[Any], conn: AsyncConnection | None = None) -> None:
        """Read the current claims of the owners whose cached copy is older than the TTL."""
        if self.lookup is None:
            return
        now = time.monotonic()
        for owner_id in {i for i in (self._id(o) for o in owners) if i is not None}:
            cached = self._cache.get(owner_id)
            if cached is not None and cached[0] > now:
                continue
            try:
                claims, found = await self.lookup(owner_id, conn), "found"
            except OwnerAbsent:
                claims, found = None, "absent"
            except LookupError:
                claims, found = None, "unknown"
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[owner_id] = (now + self.ttl, found, claims, principal_of_owner(claims))

    def forget(self, owner_id: str | None = None) -> None:
        """Drop the cached claims (of one owner): the next refresh reads them again."""
        if owner_id is None:
            self._cache.clear()
        else:
            self._cache.pop(owner_id, None)

    def now(self, stored: Any) -> OwnerNow:
        """The owner as it is now (after `refresh`): suspended, or the principal to act for."""
        owner_id = self._id(stored)
        if self.lookup is None or owner_id is None:
            return OwnerNow(False, principal_of_owner(stored), stored if isinstance(stored, dict) else None)
        cached = self._cache.get(owner_id)
        if cached is None or cached[1] == "unknown":
            # Not refreshed, or nothing could be known: act on the stored claims.
            return OwnerNow(False, principal_of_owner(stored), stored)
        _until, state, claims, principal = cached
        if state == "absent" and not stored.get(VERIFIED_KEY):
            return OwnerNow(False, principal_of_owner(stored), stored)  # never a stored principal
        if claims is None:
            return OwnerNow(True, None, None)  # disabled, or deleted since the subscription was stored
        return OwnerNow(False, principal, claims)


def filter_query(spec: dict[str, Any]) -> tuple[EntityQuery, list[str]] | None:
    """A subscription's filters as a query (types, q, geoQ) plus its watchedAttributes; None when
    it has no filter on attribute values."""
    if not any(k in spec for k in ("q", "geoQ", "watchedAttributes")):
        return None
    terms: dict[str, str] = dict(spec["q"]["terms"]) if "q" in spec else {}

    def expand(name: str) -> str:
        return terms.get(name, name)

    geo = None
    if "geoQ" in spec:
        g = spec["geoQ"]
        geo = geoquery.parse_geoquery(g["georel"], g["geometry"], g["coordinates"], g["geoproperty"], lambda n: n)
    types = sorted({t for s in spec.get("entities") or [] for t in typesel.all_types(selector_types(s))}) or None
    query = EntityQuery(types=types, q=parse_q(spec["q"]["text"]) if "q" in spec else None, geo=geo,
                        expand=expand)
    return query, list(spec.get("watchedAttributes") or [])


# (tenant, spec, principal) → the reason the filters are refused, or None.
FilterCheck = Callable[[str, dict[str, Any], Principal | None], str | None]
# (tenant, spec, principal, entity) → may the subscription's filters be evaluated on this entity?
EntityCheck = Callable[[str, dict[str, Any], Principal | None, EntityRecord], bool]


def filter_checks(app: Any) -> tuple[FilterCheck, EntityCheck]:
    """The data-class checks of subscription filters for `app` (its class registry)."""
    from cityos.hub.access import Access, QueryPlan
    from cityos.security.classes import class_registry

    registry = class_registry(app)

    def plan_of(tenant: str, spec: dict[str, Any], principal: Principal | None) -> tuple[QueryPlan, str | None] | None:
        parts = filter_query(spec)
        if parts is None:
            return None
        key = ("subscription-filter", tenant, spec.get("q", {}).get("text"), repr(spec.get("geoQ")),
               tuple(spec.get("watchedAttributes") or ()), tuple(s["type"] for s in spec.get("entities") or ()),
               tuple(sorted(spec.get("q", {}).get("terms", {}).items())), principal)
        cached: tuple[QueryPlan, str | None] | None = registry.view_cache.get(key)
        if cached is None:
            query, watched = parts
            cached = Access(principal, tenant, registry).fit_query(query, restrict_sql=False, watched=watched)
            if len(registry.view_cache) > 10_000:
                registry.view_cache.clear()
            registry.view_cache[key] = cached
        return cached

    def refused(tenant: str, spec: dict[str, Any], principal: Principal | None) -> str | None:
        found = plan_of(tenant, spec, principal)
        return None if found is None else found[1]

    def allowed_on(tenant: str, spec: dict[str, Any], principal: Principal | None, record: EntityRecord) -> bool:
        found = plan_of(tenant, spec, principal)
        if found is None:
            return True
        plan, refusal = found
        if refusal is not None:
            return False
        return Access(principal, tenant, registry).matches(plan, record)

    return refused, allowed_on
