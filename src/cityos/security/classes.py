"""The data-class registry: which class (public / internal / sensitive / confidential) each
attribute of each entity type has, and which department owns an entity.

Where classes come from, most specific last (a later source overrides an earlier one per attribute):

1. built-ins: `DataClassPolicy` itself is internal; reference geography (`PUBLIC_TYPES`) is public;
2. the IoT device profiles (`dataClass` per attribute; `cityos.iot.ingest.start_iot` declares them,
   with the location/district/refDevice/dateObserved of an observed entity as public);
3. domains declaring their types at start-up: ``class_registry(app).declare("Alert", {...})``;
4. the file named by ``CITYOS_DATA_CLASSES_FILE`` (JSON: ``{"Type": {"attributes": {"attr": "class"},
   "default": "internal", "owningDepartment": "dept"}}``);
5. per tenant, ``DataClassPolicy`` entities in the hub (written through ``PUT /admin/data-classes/{type}``,
   which needs ``tenant.manage``). They are read from the hub, so every process sees them; a
   process re-reads a tenant's declarations at most every ``REFRESH_SECONDS``.

Attributes not listed get the type's default; types not declared anywhere default to "internal"
(fail-closed: anonymous callers and citizens see only id and type).

The owning department of an entity is its ``owningDepartment`` or ``department`` attribute (a
Property with a string value, or a Relationship whose object ends in ``:<dept>``), else the type's
declared ``owningDepartment``.

Everything used on a request's path is synchronous and in memory (the hub calls it inside the
notification outbox's transaction).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cityos.security.masking import MaskResult, mask_entity_report
from cityos.security.policy import DataClass, Principal, Visibility, role_of, visible_class

log = logging.getLogger("cityos.security.classes")

POLICY_TYPE = "DataClassPolicy"
# Reference geography (Smart Data Models / the simulated city): public unless declared otherwise.
PUBLIC_TYPES = ("District", "Road", "River", "PointOfInterest")
REFRESH_SECONDS = 5.0
RANK = {DataClass.PUBLIC.value: 0, DataClass.INTERNAL.value: 1, DataClass.SENSITIVE.value: 2,
        DataClass.CONFIDENTIAL.value: 3}
CLASSES = tuple(RANK)
Expand = Callable[[str], str]


def stricter(a: str, b: str) -> str:
    return a if RANK.get(a, 3) >= RANK.get(b, 3) else b


def check_class(value: Any) -> str:
    if value not in RANK:
        raise ValueError(f"a data class is one of {', '.join(CLASSES)}, not {value!r}")
    return str(value)


@dataclass
class TypeClasses:
    """The classes of one entity type (or of a multi-typed entity: the stricter per attribute)."""

    attrs: dict[str, str] = field(default_factory=dict)  # attribute IRI → class
    default: str = DataClass.INTERNAL.value
    department: str | None = None

    @property
    def levels(self) -> frozenset[str]:
        return frozenset({self.default, *self.attrs.values()})

    def merged(self, other: TypeClasses) -> TypeClasses:
        attrs = dict(self.attrs)
        for iri, cls in other.attrs.items():
            attrs[iri] = stricter(attrs.get(iri, self.default), cls)
        for iri in self.attrs.keys() - other.attrs.keys():
            attrs[iri] = stricter(attrs[iri], other.default)
        return TypeClasses(attrs, stricter(self.default, other.default), self.department or other.department)

    def overlaid(self, other: TypeClasses) -> TypeClasses:
        """`other` declared later: it wins per attribute and for the default."""
        return TypeClasses({**self.attrs, **other.attrs}, other.default, other.department or self.department)

    def to_json(self, compact: Callable[[str], str]) -> dict[str, Any]:
        return {"attributes": {compact(k): v for k, v in sorted(self.attrs.items())}, "default": self.default,
                "owningDepartment": self.department}


@dataclass
class _Tenant:
    types: dict[str, TypeClasses]
    loaded: float


class ClassRegistry:
    def __init__(self, expand: Expand) -> None:
        self.expand = expand
        self._global: dict[str, TypeClasses] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._refresh_locks: dict[str, asyncio.Lock] = {}
        self._resolved: dict[tuple[str, tuple[str, ...]], TypeClasses] = {}
        self._clear_cache: dict[tuple[str, frozenset[str]], bool] = {}
        # Per-caller derived views (cityos.hub.access: which types a caller may see at all), cleared with
        # the declarations they derive from.
        self.view_cache: dict[Any, Any] = {}
        self.policy_type = expand(POLICY_TYPE)
        self.department_iris = (expand("owningDepartment"), expand("department"))
        self.district_iri = expand("district")
        self.owner_iri = expand("owner")
        self.declare(POLICY_TYPE, {}, DataClass.INTERNAL.value)
        for etype in PUBLIC_TYPES:
            self.declare(etype, {}, DataClass.PUBLIC.value)
        self._load_file()

    # ------------------------------------------------------------------ declaring

    def _iri(self, name: str) -> str:
        return name if ":" in name else self.expand(name)

    def declare(self, entity_type: str, attrs: dict[str, str], default: str | None = None,
                department: str | None = None, stricter_only: bool = False) -> None:
        """Declare (process-wide, every tenant) the classes of `entity_type`'s attributes (terms or IRIs).

        With `stricter_only`, an attribute already declared keeps the stricter of the two classes
        (several IoT profiles may share one entity type).
        """
        iri = self._iri(entity_type)
        new = TypeClasses({self._iri(k): check_class(v) for k, v in attrs.items()},
                          check_class(default) if default else DataClass.INTERNAL.value, department)
        old = self._global.get(iri)
        if old is not None and stricter_only:
            attrs_merged = dict(old.attrs)
            for k, v in new.attrs.items():
                attrs_merged[k] = stricter(attrs_merged.get(k, v), v)
            new = TypeClasses(attrs_merged, stricter(old.default, new.default), old.department or department)
        elif old is not None:
            new = old.overlaid(new) if default is None else TypeClasses({**old.attrs, **new.attrs}, new.default,
                                                                          department or old.department)
        self._global[iri] = new
        self._invalidate()

    def _load_file(self) -> None:
        path = os.environ.get("CITYOS_DATA_CLASSES_FILE")
        if not path:
            return
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
        for etype, spec in doc.items():
            self.declare(etype, dict(spec.get("attributes", {})), spec.get("default"), spec.get("owningDepartment"))

    def _invalidate(self) -> None:
        self._resolved.clear()
        self.view_cache.clear()

    # ------------------------------------------------------------------ per-tenant declarations (hub)

    def refresh_lock(self, tenant: str) -> asyncio.Lock:
        """Held while `tenant`'s declarations are re-read (`hub.access.refresh_classes`)."""
        return self._refresh_locks.setdefault(tenant, asyncio.Lock())

    def needs_refresh(self, tenant: str) -> bool:
        found = self._tenants.get(tenant)
        return found is None or time.monotonic() - found.loaded > REFRESH_SECONDS

    def set_tenant(self, tenant: str, records: Iterable[Any]) -> None:
        """Replace `tenant`'s declarations from its DataClassPolicy entities (hub records)."""
        types: dict[str, TypeClasses] = {}
        for record in records:
            parsed = self.parse_policy(record.attrs)
            if parsed is not None:
                types[parsed[0]] = parsed[1]
        old = self._tenants.get(tenant)
        self._tenants[tenant] = _Tenant(types, time.monotonic())
        if old is None or old.types != types:
            self._invalidate()

    def forget_tenant(self, tenant: str) -> None:
        self._tenants.pop(tenant, None)
        self._invalidate()

    def parse_policy(self, attrs: dict[str, Any]) -> tuple[str, TypeClasses] | None:
        def value(term: str) -> Any:
            found = attrs.get(self.expand(term)) or []
            return found[0].get("value") if found and isinstance(found[0], dict) else None

        etype, default = value("entityType"), value("defaultClass")
        if not isinstance(etype, str) or default not in RANK:
            return None
        pairs = value("attributeClasses") or []
        classes = {p["attribute"]: p["dataClass"] for p in pairs
                   if isinstance(p, dict) and isinstance(p.get("attribute"), str) and p.get("dataClass") in RANK}
        dept = value("owningDepartment")
        return etype, TypeClasses(classes, default, dept if isinstance(dept, str) else None)

    # ------------------------------------------------------------------ looking up

    def for_type(self, tenant: str, type_iri: str) -> TypeClasses:
        found = self._global.get(type_iri, TypeClasses())
        local = self._tenants.get(tenant)
        if local is not None and type_iri in local.types:
            found = found.overlaid(local.types[type_iri])
        return found

    def for_types(self, tenant: str, types: list[str]) -> TypeClasses:
        key = (tenant, tuple(types))
        cached = self._resolved.get(key)
        if cached is not None:
            return cached
        result = self.for_type(tenant, types[0]) if types else TypeClasses()
        for other in types[1:]:
            result = result.merged(self.for_type(tenant, other))
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[key] = result
        return result

    def describe(self, tenant: str) -> dict[str, TypeClasses]:
        out = dict(self._global)
        local = self._tenants.get(tenant)
        for iri, tc in (local.types.items() if local else ()):
            out[iri] = out[iri].overlaid(tc) if iri in out else tc
        return out

    # ------------------------------------------------------------------ entity facts

    @staticmethod
    def _first_text(instances: Any) -> str | None:
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            return None
        inst = instances[0]
        value = inst.get("value", inst.get("object"))
        if isinstance(value, str) and value:
            return value.rsplit(":", 1)[-1] if inst.get("type") == "Relationship" else value
        return None

    def department_of(self, attrs: dict[str, Any], classes: TypeClasses | None = None) -> str | None:
        for iri in self.department_iris:
            found = self._first_text(attrs.get(iri))
            if found:
                return found
        return classes.department if classes is not None else None

    def district_of(self, attrs: dict[str, Any]) -> str | None:
        return self._first_text(attrs.get(self.district_iri))

    def owner_of(self, attrs: dict[str, Any]) -> str | None:
        return self._first_text(attrs.get(self.owner_iri))

    # ------------------------------------------------------------------ masking

    def all_clear(self, principal: Principal | None, levels: frozenset[str]) -> bool:
        """Does `principal` see every class in `levels` in clear whatever the owning department?"""
        key = (role_of(principal), levels)
        cached = self._clear_cache.get(key)
        if cached is None:
            cached = all(visible_class(principal, lv, None) is Visibility.CLEAR
                         and lv not in (DataClass.SENSITIVE, DataClass.CONFIDENTIAL) for lv in levels)
            self._clear_cache[key] = cached
        return cached

    def invisible(self, principal: Principal | None, classes: TypeClasses, department: str | None) -> bool:
        """True when `principal` may see none of the entity's attributes: the entity is withheld."""
        return all(visible_class(principal, lv, department) is Visibility.HIDDEN for lv in classes.levels)

    def mask_attrs(self, tenant: str, types: list[str], attrs: dict[str, Any],
                   principal: Principal | None) -> tuple[MaskResult | None, TypeClasses, str | None]:
        """Masked attributes (None: nothing to mask), the type's classes and the owning department."""
        classes = self.for_types(tenant, types)
        if self.all_clear(principal, classes.levels):
            return None, classes, None
        dept = self.department_of(attrs, classes)
        return mask_entity_report(attrs, classes.attrs, principal, dept, classes.default), classes, dept


def class_registry(app: Any) -> ClassRegistry:
    """The app's registry, created on first use with the hub's core @context expansion."""
    found: ClassRegistry | None = getattr(app.state, "data_classes", None)
    if found is None:
        found = ClassRegistry(app.state.hub.resolver.core.expand)
        app.state.data_classes = found
    return found
