"""The evaluation engine: compiled rules, their index, and evaluation of hub changes. Pure, in memory.

No I/O here. `Engine.evaluate(tenant, change, now)` takes a `cityos.hub.service.Change` and returns
the `Outcome`s (raise/repeat or clear an alarm); window state lives in `Engine.states` and the keys
that changed are collected in `Engine.dirty` for the service to persist in batches.

Index: tenant → entity type IRI → attribute IRI → rules. A change is checked only against the rules
indexed under its entity's types and the attributes that changed, so 1,000 active rules do not mean
1,000 checks per change.

Evaluation is three-valued: True (condition holds), False (it does not), None (unknown: the
attribute is missing or not a number). True raises or repeats an alarm, False clears an open one,
None leaves things as they are.

Window state per (tenant, rule, entity), a small JSON object:
    {"r": {path: last leaf result}, "s": {path: sustained-since (epoch s)}, "n": {path: last data (epoch s)},
     "p": {path: [t, value] previous sample for a rate}, "due": epoch s when time alone may flip the
     result (a sustained window elapsing, a no-data timer), "m": {type, district, department, location}}
Rules without windows (thresholds, geo-fences and combinations of them) keep no state at all.
"""

from __future__ import annotations

import math
import operator
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shapely import prepared
from shapely.errors import GEOSException
from shapely.geometry import shape

from cityos.core import clock
from cityos.ops.rules.spec import parse_duration

MISSING: Any = object()
Key = tuple[str, str, str]  # tenant, rule id, entity id
Expand = Callable[[str], str]
Compact = Callable[[str], str]
ALERT_PREFIX = "urn:ngsi-ld:Alert:alarm-"


def _number(value: Any) -> bool:
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))


def attr_value(attrs: Mapping[str, list[dict[str, Any]]], iri: str) -> Any:
    """The default instance's value (Property, GeoProperty) or object (Relationship); MISSING if none."""
    instances = attrs.get(iri)
    if not instances:
        return MISSING
    inst = instances[0]
    if "value" in inst:
        return inst["value"]
    if "object" in inst:
        return inst["object"]
    return inst.get("valueList", inst.get("languageMap", MISSING))


_PARSED: dict[str, float] = {}  # observedAt text → epoch s; readings of one batch share their timestamps


def _observed(attrs: Mapping[str, list[dict[str, Any]]], iri: str, default: float) -> float:
    instances = attrs.get(iri)
    observed = instances[0].get("observedAt") if instances else None
    if isinstance(observed, str):
        found = _PARSED.get(observed)
        if found is not None:
            return found
        try:
            found = clock.parse_iso(observed).timestamp()
        except ValueError:
            return default
        if len(_PARSED) >= 4096:
            _PARSED.clear()
        _PARSED[observed] = found
        return found
    return default


_ORDER: dict[str, Callable[[Any, Any], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                                 "<=": operator.le}


def make_test(op: str, ref: Any) -> Callable[[Any], bool | None]:
    """A comparison of an attribute value against `ref`; None when the value has the wrong type."""
    if op in _ORDER:
        # One closure per operator: this is the hot path of every threshold.
        if op == ">":
            def order(v: Any) -> bool | None:
                kind = type(v)
                return v > ref if kind is float or kind is int else None
        elif op == ">=":
            def order(v: Any) -> bool | None:
                kind = type(v)
                return v >= ref if kind is float or kind is int else None
        elif op == "<":
            def order(v: Any) -> bool | None:
                kind = type(v)
                return v < ref if kind is float or kind is int else None
        else:
            def order(v: Any) -> bool | None:
                kind = type(v)
                return v <= ref if kind is float or kind is int else None
        return order
    if op in ("==", "!="):
        want = op == "=="

        def equal(v: Any) -> bool | None:
            if isinstance(v, dict | list):
                return None
            return (v == ref and type(v) is bool) == want if isinstance(ref, bool) else (v == ref) == want

        return equal
    members = list(ref)
    inside = op == "in"

    def member(v: Any) -> bool | None:
        if isinstance(v, dict | list):
            return None
        return any(v == m and isinstance(v, bool) == isinstance(m, bool) for m in members) == inside

    return member


# ---------------------------------------------------------------------- nodes


class Ctx:
    """What a node sees while evaluating one (rule, entity)."""

    __slots__ = ("attrs", "changed", "dirty", "due", "geometries", "now", "observed_at", "state")

    def __init__(self, attrs: Mapping[str, list[dict[str, Any]]] | None, changed: set[str] | frozenset[str],
                 now: float) -> None:
        self.attrs = attrs
        self.changed = changed
        self.now = now
        self.state: dict[str, Any] | None = None
        self.dirty = False
        self.due: float | None = None
        self.geometries: dict[str, Any] = {}
        self.observed_at: dict[str, float] = {}

    def observed(self, iri: str) -> float:
        """observedAt of the attribute (epoch seconds), else now; parsed once per change."""
        found = self.observed_at.get(iri)
        if found is None:
            found = self.observed_at[iri] = _observed(self.attrs, iri, self.now) if self.attrs is not None else self.now
        return found

    def geometry(self, iri: str) -> Any:
        """The entity's GeoProperty `iri` as a shapely geometry (parsed once per change); None if unusable."""
        if iri in self.geometries:
            return self.geometries[iri]
        geometry = None
        value = attr_value(self.attrs, iri) if self.attrs is not None else MISSING
        if isinstance(value, dict) and "coordinates" in value:
            try:
                geometry = shape(value)
            except (GEOSException, ValueError, TypeError, AttributeError, IndexError, KeyError):
                geometry = None
        self.geometries[iri] = geometry
        return geometry

    def remember(self, path: str, result: bool | None) -> None:
        state = self.state
        if state is None:
            return
        results = state.get("r")
        if results is None:
            results = state["r"] = {}
        if path not in results or results[path] is not result:
            results[path] = result
            self.dirty = True

    def stored(self, path: str) -> bool | None:
        if self.state is None:
            return None
        result: bool | None = self.state.get("r", {}).get(path)
        return result

    def bucket(self, name: str) -> dict[str, Any]:
        assert self.state is not None
        found = self.state.get(name)
        if found is None:
            found = self.state[name] = {}
        return found

    def due_at(self, moment: float) -> None:
        if self.due is None or moment < self.due:
            self.due = moment


class Node:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def eval(self, ctx: Ctx) -> bool | None:  # pragma: no cover - abstract
        raise NotImplementedError


class Compare(Node):
    __slots__ = ("iri", "op", "ref", "test")

    def __init__(self, path: str, iri: str, op: str, ref: Any) -> None:
        super().__init__(path)
        self.iri = iri
        self.op = op
        self.ref = ref
        self.test = make_test(op, ref)

    def eval(self, ctx: Ctx) -> bool | None:
        attrs = ctx.attrs
        if attrs is None:
            return ctx.stored(self.path)
        instances = attrs.get(self.iri)
        if not instances:
            result = None
        else:
            inst = instances[0]
            value = inst["value"] if "value" in inst else inst.get("object", MISSING)
            result = None if value is MISSING else self.test(value)
        if ctx.state is not None:
            ctx.remember(self.path, result)
        return result


class Geofence(Node):
    __slots__ = ("inside", "iri", "polygon")

    def __init__(self, path: str, iri: str, geometry: dict[str, Any], inside: bool) -> None:
        super().__init__(path)
        self.iri = iri
        self.polygon = prepared.prep(shape(geometry))
        self.inside = inside

    def eval(self, ctx: Ctx) -> bool | None:
        if ctx.attrs is None:
            return ctx.stored(self.path)
        geometry = ctx.geometry(self.iri)
        result: bool | None = None
        if geometry is not None:
            try:
                result = self.polygon.covers(geometry) if self.inside else not self.polygon.intersects(geometry)
            except GEOSException:
                result = None
        ctx.remember(self.path, result)
        return result


class Rate(Node):
    """Change per `per` seconds between the previous and this reading (observedAt when present)."""

    __slots__ = ("iri", "per", "test")

    def __init__(self, path: str, iri: str, test: Callable[[Any], bool | None], per: float) -> None:
        super().__init__(path)
        self.iri = iri
        self.test = test
        self.per = per

    def eval(self, ctx: Ctx) -> bool | None:
        attrs = ctx.attrs
        path = self.path
        if attrs is None or self.iri not in ctx.changed:
            return ctx.stored(path)
        instances = attrs.get(self.iri)
        if not instances:
            return ctx.stored(path)
        inst = instances[0]
        value: Any = inst["value"] if "value" in inst else inst.get("object")
        kind = type(value)
        if not (kind is int or (kind is float and math.isfinite(value))):
            return ctx.stored(path)
        t = ctx.observed(self.iri)
        state = ctx.state
        assert state is not None
        samples = state.get("p")
        if samples is None:
            samples = state["p"] = {}
        previous = samples.get(path)
        if previous is not None and t <= previous[0]:
            return ctx.stored(path)  # a late reading: it says nothing about the current rate
        samples[path] = [t, value]
        ctx.dirty = True
        if previous is None:
            return ctx.stored(path)
        result = self.test((value - previous[1]) / (t - previous[0]) * self.per)
        results = state.get("r")
        if results is None:
            results = state["r"] = {}
        results[path] = result
        return result


class Sustained(Node):
    __slots__ = ("child", "seconds")

    def __init__(self, path: str, child: Node, seconds: float) -> None:
        super().__init__(path)
        self.child = child
        self.seconds = seconds

    def eval(self, ctx: Ctx) -> bool | None:
        inner = self.child.eval(ctx)
        since_map = ctx.bucket("s")
        if inner is True:
            since = since_map.get(self.path)
            if since is None:
                since = since_map[self.path] = ctx.now
                ctx.dirty = True
            if ctx.now - since >= self.seconds:
                return True
            ctx.due_at(since + self.seconds)
            return False
        if inner is False:
            if self.path in since_map:
                del since_map[self.path]
                ctx.dirty = True
            return False
        return None


class NoData(Node):
    __slots__ = ("iri", "seconds")

    def __init__(self, path: str, iri: str | None, seconds: float) -> None:
        super().__init__(path)
        self.iri = iri
        self.seconds = seconds

    def eval(self, ctx: Ctx) -> bool | None:
        seen_map = ctx.bucket("n")
        attrs = ctx.attrs
        if attrs is not None and (self.iri is None or (self.iri in ctx.changed and self.iri in attrs)):
            seen_map[self.path] = ctx.now
            ctx.dirty = True
            ctx.due_at(ctx.now + self.seconds)
            return False
        seen = seen_map.get(self.path)
        if seen is None:
            return None
        if ctx.now - seen >= self.seconds:
            return True
        ctx.due_at(seen + self.seconds)
        return False


class All(Node):
    __slots__ = ("children",)

    def __init__(self, path: str, children: list[Node]) -> None:
        super().__init__(path)
        self.children = children

    def eval(self, ctx: Ctx) -> bool | None:
        result: bool | None = True
        for child in self.children:  # no short cut: windowed children must see every change
            r = child.eval(ctx)
            if r is False:
                result = False
            elif r is None and result is True:
                result = None
        return result


class AnyOf(Node):
    __slots__ = ("children",)

    def __init__(self, path: str, children: list[Node]) -> None:
        super().__init__(path)
        self.children = children

    def eval(self, ctx: Ctx) -> bool | None:
        result: bool | None = False
        for child in self.children:
            r = child.eval(ctx)
            if r is True:
                result = True
            elif r is None and result is False:
                result = None
        return result


# ---------------------------------------------------------------------- compiled rules


@dataclass(eq=False)
class CompiledRule:
    tenant: str
    id: str
    version: int
    doc: dict[str, Any]
    types: frozenset[str]
    id_pattern: re.Pattern[str] | None
    root: Node | None
    attrs: frozenset[str]
    any_change: bool
    stateful: bool
    device: str | None
    value_attrs: list[tuple[str, str]]  # (short name, IRI) of the compared attributes
    # Stateless rules: the condition compiled into one closure (short-circuiting, cheap children first).
    fast: Callable[[Ctx], bool | None] | None = None
    # `sustained` over one threshold: the threshold alone and its path; while it is not true and the
    # window is idle (no start, no timer), evaluation cannot change anything and is skipped.
    guard: Callable[[Ctx], bool | None] | None = None
    guard_path: str = ""

    @property
    def name(self) -> str:
        return str(self.doc["name"])

    @property
    def severity(self) -> str:
        return str(self.doc["severity"])

    @property
    def department(self) -> str | None:
        return self.doc.get("department")

    @property
    def incident(self) -> dict[str, Any] | None:
        return self.doc.get("incident")


class _Compiler:
    def __init__(self, expand: Expand, lookup: Callable[[str], Mapping[str, Any] | None]) -> None:
        self.expand = expand
        self.lookup = lookup
        self.attrs: set[str] = set()
        self.any_change = False
        self.stateful = False
        self.value_attrs: dict[str, str] = {}

    def iri(self, name: str, *, value: bool = False) -> str:
        iri = self.expand(name)
        self.attrs.add(iri)
        if value:
            self.value_attrs.setdefault(name, iri)
        return iri

    def node(self, cond: Mapping[str, Any], path: str, trail: tuple[str, ...]) -> Node:
        (kind, body), = cond.items()
        if kind == "all":
            return All(path, [self.node(c, f"{path}.{i}", trail) for i, c in enumerate(body)])
        if kind == "any":
            return AnyOf(path, [self.node(c, f"{path}.{i}", trail) for i, c in enumerate(body)])
        if kind == "threshold":
            return Compare(path, self.iri(body["attr"], value=True), body["op"], body["value"])
        if kind == "rate":
            self.stateful = True
            per = parse_duration(body.get("per", 60), "per")
            return Rate(path, self.iri(body["attr"], value=True), make_test(body["op"], body["value"]), per)
        if kind == "sustained":
            self.stateful = True
            inner = body.get("condition") or {"threshold": {k: body[k] for k in ("attr", "op", "value")}}
            return Sustained(path, self.node(inner, f"{path}.s", trail), parse_duration(body["for"], "for"))
        if kind == "noData":
            self.stateful = True
            attr = body.get("attr")
            if attr is None:
                self.any_change = True
            return NoData(path, self.iri(attr) if attr else None, parse_duration(body["for"], "for"))
        if kind == "geofence":
            inside = "inside" in body
            return Geofence(path, self.iri(body.get("attr", "location")), body["inside" if inside else "outside"],
                            inside)
        if kind == "rule":
            if body in trail or len(trail) > 16:
                raise ValueError(f"rule reference cycle through {body}")
            target = self.lookup(body)
            if target is None:
                raise ValueError(f"referenced rule {body} not found")
            return self.node(target["condition"], f"{path}.r", (*trail, body))
        raise ValueError(f"unknown condition {kind}")


Fast = Callable[[Ctx], bool | None]


def _fast_compare(node: Compare) -> Fast:
    iri, test, ref = node.iri, node.test, node.ref
    if node.op in _ORDER and _number(ref):
        # The comparison inlined (one closure call per threshold, no second call for the operator).
        if node.op == ">":
            def above(ctx: Ctx) -> bool | None:
                instances = ctx.attrs.get(iri)  # type: ignore[union-attr]
                if not instances:
                    return None
                inst = instances[0]
                v = inst["value"] if "value" in inst else inst.get("object")
                kind = type(v)
                return v > ref if kind is float or kind is int else None
            return above
        if node.op == "<":
            def below(ctx: Ctx) -> bool | None:
                instances = ctx.attrs.get(iri)  # type: ignore[union-attr]
                if not instances:
                    return None
                inst = instances[0]
                v = inst["value"] if "value" in inst else inst.get("object")
                kind = type(v)
                return v < ref if kind is float or kind is int else None
            return below

    def compare(ctx: Ctx) -> bool | None:
        instances = ctx.attrs.get(iri)  # type: ignore[union-attr]
        if not instances:
            return None
        inst = instances[0]
        if "value" in inst:
            return test(inst["value"])
        return test(inst["object"]) if "object" in inst else None

    return compare


def _fast(node: Node) -> Fast:
    """A stateless node as one closure. Three-valued AND/OR are commutative and stateless children
    remember nothing, so children run cheapest first and stop at the first deciding result."""
    if isinstance(node, Compare):
        return _fast_compare(node)
    if isinstance(node, All | AnyOf):
        children = [_fast(c) for c in sorted(node.children, key=lambda c: not isinstance(c, Compare))]
        stop = node.__class__ is All  # All stops at False, AnyOf at True
        decided = not stop

        def combine(ctx: Ctx) -> bool | None:
            result: bool | None = stop
            for child in children:
                r = child(ctx)
                if r is decided:
                    return decided
                if r is None:
                    result = None
            return result

        return combine
    return node.eval


def compile_rule(tenant: str, doc: dict[str, Any], version: int, expand: Expand,
                 lookup: Callable[[str], Mapping[str, Any] | None]) -> CompiledRule:
    cond = doc["condition"]
    pattern = re.compile(doc["idPattern"]) if doc.get("idPattern") else None
    types = frozenset(expand(t) for t in doc["entityTypes"])
    if "device" in cond:
        return CompiledRule(tenant, doc["id"], version, doc, types, pattern, None, frozenset(), False, False,
                            cond["device"], [])
    compiler = _Compiler(expand, lookup)
    root = compiler.node(cond, "c", (doc["id"],))
    rule = CompiledRule(tenant, doc["id"], version, doc, types, pattern, root, frozenset(compiler.attrs),
                        compiler.any_change, compiler.stateful, None, list(compiler.value_attrs.items()))
    if not rule.stateful:
        rule.fast = _fast(root)
    elif isinstance(root, Sustained) and isinstance(root.child, Compare):
        rule.guard = _fast_compare(root.child)
        rule.guard_path = root.child.path
    return rule


class AttrRules:
    """The rules of one (entity type, attribute). Plain numeric thresholds without an id pattern are kept
    in sorted arrays per operator, so a reading finds the ones it crosses by bisection instead of
    testing each; every other rule is in `general` and is evaluated."""

    __slots__ = ("general", "simple", "sorted")

    def __init__(self) -> None:
        self.general: list[CompiledRule] = []
        self.simple: dict[str, list[tuple[float, CompiledRule]]] = {}
        self.sorted: dict[str, tuple[list[float], list[CompiledRule]]] = {}

    def add(self, rule: CompiledRule) -> None:
        root = rule.root
        if (isinstance(root, Compare) and root.op in _ORDER and not rule.stateful and rule.id_pattern is None
                and _number(root.ref)):
            self.simple.setdefault(root.op, []).append((float(root.ref), rule))
        else:
            self.general.append(rule)

    def seal(self) -> None:
        self.sorted = {}
        for op, items in self.simple.items():
            items.sort(key=lambda item: item[0])
            self.sorted[op] = ([cut for cut, _r in items], [r for _c, r in items])

    def crossed(self, value: Any, out: dict[int, CompiledRule]) -> None:
        """Add the simple threshold rules that `value` satisfies."""
        for op, (cuts, rules) in self.sorted.items():
            if op == ">":
                chosen = rules[:bisect_left(cuts, value)]
            elif op == ">=":
                chosen = rules[:bisect_right(cuts, value)]
            elif op == "<":
                chosen = rules[bisect_right(cuts, value):]
            else:
                chosen = rules[bisect_left(cuts, value):]
            for rule in chosen:
                out[id(rule)] = rule


@dataclass(slots=True)
class Plan:
    """What one shape of change (entity types, changed attributes) is checked against."""

    rules: list[CompiledRule]  # every rule to evaluate (plain thresholds excepted)
    fast: list[CompiledRule]  # of which stateless, without id pattern
    guarded: list[CompiledRule]  # `sustained` over one threshold, without id pattern
    slow: list[CompiledRule]  # the others
    bisect_on: list[tuple[str, AttrRules]]  # attributes with sorted plain thresholds
    ids: frozenset[int]  # id() of `rules`


@dataclass
class TenantIndex:
    rules: dict[str, CompiledRule] = field(default_factory=dict)
    by_type_attr: dict[str, dict[str, AttrRules]] = field(default_factory=dict)
    by_type_any: dict[str, list[CompiledRule]] = field(default_factory=dict)
    by_type: dict[str, list[CompiledRule]] = field(default_factory=dict)
    device: dict[str, list[CompiledRule]] = field(default_factory=dict)
    # (types, changed attributes) → (rules to evaluate, (attribute, sorted thresholds) to bisect)
    plans: dict[tuple[tuple[str, ...], frozenset[str]], Plan] = field(default_factory=dict)

    def plan(self, types: list[str], changed: set[str] | frozenset[str]) -> Plan:
        """The candidate list of one shape of change, computed once: devices send the same attributes
        again and again, so the per-change work is a dict lookup."""
        key = (tuple(types), frozenset(changed))
        found = self.plans.get(key)
        if found is not None:
            return found
        general: dict[int, CompiledRule] = {}
        bisect_on: list[tuple[str, AttrRules]] = []
        for t in types:
            per_attr = self.by_type_attr.get(t)
            if per_attr is not None:
                for attr in changed:
                    attr_rules = per_attr.get(attr)
                    if attr_rules is None:
                        continue
                    for rule in attr_rules.general:
                        general[id(rule)] = rule
                    if attr_rules.sorted:
                        bisect_on.append((attr, attr_rules))
            for rule in self.by_type_any.get(t, ()):
                general[id(rule)] = rule
        if len(self.plans) >= 4096:
            self.plans.clear()
        rules = list(general.values())
        fast = [r for r in rules if r.fast is not None and r.id_pattern is None]
        guarded = [r for r in rules if r.guard is not None and r.id_pattern is None]
        chosen = {id(r) for r in fast} | {id(r) for r in guarded}
        found = self.plans[key] = Plan(rules, fast, guarded, [r for r in rules if id(r) not in chosen],
                                       bisect_on, frozenset(id(r) for r in rules))
        return found

    def add(self, rule: CompiledRule) -> None:
        self.rules[rule.id] = rule
        if rule.device is not None:
            self.device.setdefault(rule.device, []).append(rule)
            return
        for t in rule.types:
            self.by_type.setdefault(t, []).append(rule)
            per_attr = self.by_type_attr.setdefault(t, {})
            for attr in rule.attrs:
                found = per_attr.get(attr)
                if found is None:
                    found = per_attr[attr] = AttrRules()
                found.add(rule)
            if rule.any_change:
                self.by_type_any.setdefault(t, []).append(rule)


@dataclass
class Outcome:
    rule: CompiledRule
    tenant: str
    entity_id: str
    active: bool  # True: raise or repeat; False: clear
    value: Any = None
    meta: dict[str, Any] = field(default_factory=dict)  # type, district, department, location
    reason: str = ""
    at: float = 0.0


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Engine:
    """Rules by tenant, window state, and which (rule, entity) pairs have an open alarm."""

    def __init__(self, expand: Expand, compact: Compact) -> None:
        self.expand = expand
        self.compact = compact
        self.tenants: dict[str, TenantIndex] = {}
        self.states: dict[Key, dict[str, Any]] = {}
        self.dirty: set[Key] = set()
        self.open: dict[tuple[str, str], set[str]] = {}
        self._district = expand("district")
        self._department = expand("department")
        self._location = expand("location")

    # ------------------------------------------------------------------ rules and open alarms

    def load_tenant(self, tenant: str, docs: list[tuple[dict[str, Any], int, bool]]) -> list[str]:
        """(Re)build a tenant's index from (document, version, enabled); returns ids that failed to compile."""
        by_id = {doc["id"]: doc for doc, _v, _e in docs}
        index = TenantIndex()
        failed: list[str] = []
        for doc, version, enabled in docs:
            if not enabled:
                continue
            try:
                index.add(compile_rule(tenant, doc, version, self.expand, by_id.get))
            except (ValueError, KeyError, TypeError, re.error):
                failed.append(doc["id"])
        for per_attr in index.by_type_attr.values():
            for attr_rules in per_attr.values():
                attr_rules.seal()
        if index.rules:
            self.tenants[tenant] = index
        else:
            self.tenants.pop(tenant, None)
        return failed

    def rule(self, tenant: str, rule_id: str) -> CompiledRule | None:
        index = self.tenants.get(tenant)
        return index.rules.get(rule_id) if index else None

    def is_open(self, tenant: str, entity_id: str, rule_id: str) -> bool:
        found = self.open.get((tenant, entity_id))
        return found is not None and rule_id in found

    def mark_open(self, tenant: str, entity_id: str, rule_id: str) -> None:
        self.open.setdefault((tenant, entity_id), set()).add(rule_id)

    def mark_closed(self, tenant: str, entity_id: str, rule_id: str) -> None:
        found = self.open.get((tenant, entity_id))
        if found is not None:
            found.discard(rule_id)
            if not found:
                del self.open[(tenant, entity_id)]

    def drop_rule_state(self, tenant: str, rule_id: str) -> list[Key]:
        gone = [k for k in self.states if k[0] == tenant and k[1] == rule_id]
        for key in gone:
            del self.states[key]
            self.dirty.add(key)
        return gone

    # ------------------------------------------------------------------ evaluation

    def candidates(self, tenant: str, types: list[str], changed: set[str] | frozenset[str],
                   attrs: Mapping[str, list[dict[str, Any]]] | None = None,
                   crossed: dict[int, CompiledRule] | None = None) -> list[CompiledRule]:
        """The rules to evaluate for a change of `changed` on an entity of `types`.

        With `attrs` and `crossed`, plain thresholds are resolved by bisection: the ones the new value
        satisfies go to `crossed` (they are true without evaluation), the others are not returned
        (the caller re-checks those with an open alarm). Without them every indexed rule is returned.
        """
        index = self.tenants.get(tenant)
        if index is None:
            return []
        if crossed is not None and attrs is not None:
            plan = index.plan(types, changed)
            self._cross(plan, attrs, crossed)
            return list(plan.rules)
        found: dict[int, CompiledRule] = {}
        for t in types:
            per_attr = index.by_type_attr.get(t)
            if per_attr is not None:
                for attr in changed:
                    attr_rules = per_attr.get(attr)
                    if attr_rules is None:
                        continue
                    for rule in attr_rules.general:
                        found[id(rule)] = rule
                    if not attr_rules.sorted:
                        continue
                    if crossed is None or attrs is None:
                        for items in attr_rules.sorted.values():
                            for rule in items[1]:
                                found[id(rule)] = rule
                        continue
                    value = attr_value(attrs, attr)
                    if _number(value):
                        attr_rules.crossed(value, crossed)
            anyrules = index.by_type_any.get(t)
            if anyrules:
                for rule in anyrules:
                    found[id(rule)] = rule
        return list(found.values())

    @staticmethod
    def _cross(plan: Plan, attrs: Mapping[str, list[dict[str, Any]]], crossed: dict[int, CompiledRule]) -> None:
        for attr, attr_rules in plan.bisect_on:
            instances = attrs.get(attr)
            if not instances:
                continue
            inst = instances[0]
            value: Any = inst["value"] if "value" in inst else inst.get("object")
            kind = type(value)
            if kind is int or (kind is float and math.isfinite(value)):
                attr_rules.crossed(value, crossed)

    def evaluate(self, tenant: str, change: Any, now: float) -> list[Outcome]:
        """Outcomes of one hub change (a `cityos.hub.service.Change`)."""
        entity_id: str = change.entity_id
        after = change.after
        if after is None:
            return self._deleted(tenant, change)
        index = self.tenants.get(tenant)
        if index is None or entity_id.startswith(ALERT_PREFIX):
            return []
        crossed: dict[int, CompiledRule] = {}
        attrs = after.attrs
        plan = index.plan(after.types, change.changed_attrs)
        if plan.bisect_on:
            self._cross(plan, attrs, crossed)
        rules = plan.slow
        open_here = self.open.get((tenant, entity_id))
        ctx = Ctx(attrs, change.changed_attrs, now)
        if plan.guarded:
            # `sustained` over a threshold: an idle window (no start, no timer, the threshold's last
            # result unchanged) that stays idle needs no evaluation: nothing to remember or report.
            states = self.states
            busy: list[CompiledRule] = []
            for rule in plan.guarded:
                if open_here is None or rule.id not in open_here:
                    inner = rule.guard(ctx)  # type: ignore[misc]
                    if inner is not True:
                        state = states.get((tenant, rule.id, entity_id))
                        if state is None:
                            continue
                        if not state.get("s") and state.get("due") is None and "m" in state:
                            results = state.get("r")
                            if results is not None and results.get(rule.guard_path, MISSING) is inner:
                                continue
                busy.append(rule)
            if busy:
                rules = rules + busy
        if open_here:
            # Plain thresholds with an open alarm that the value no longer crosses: evaluate them (to clear).
            listed = plan.ids
            extra: list[CompiledRule] = []
            for rule_id in list(open_here):
                opened = index.rules.get(rule_id)
                if (opened is not None and opened.root is not None and id(opened) not in crossed
                        and id(opened) not in listed and opened.types.intersection(after.types)
                        and opened.attrs.intersection(change.changed_attrs)):
                    extra.append(opened)
            if extra:
                rules = rules + extra
        if not rules and not plan.fast and not crossed:
            return []
        outcomes: list[Outcome] = []
        meta: dict[str, Any] | None = None
        for rule in crossed.values():
            if meta is None:
                meta = self.meta(after)
            self.mark_open(tenant, entity_id, rule.id)
            outcomes.append(Outcome(rule, tenant, entity_id, True, self.value(rule, attrs), meta, at=now))
        for rule in plan.fast:  # stateless, compiled: the common case, kept tight
            result = rule.fast(ctx)  # type: ignore[misc]
            if result is True:
                if meta is None:
                    meta = self.meta(after)
                self.mark_open(tenant, entity_id, rule.id)
                outcomes.append(Outcome(rule, tenant, entity_id, True, self.value(rule, attrs), meta, at=now))
            elif result is False and open_here and rule.id in open_here:
                self.mark_closed(tenant, entity_id, rule.id)
                outcomes.append(Outcome(rule, tenant, entity_id, False, self.value(rule, attrs),
                                        meta or self.meta(after), "condition no longer holds", now))
        states = self.states
        for rule in rules:
            if rule.id_pattern is not None and rule.id_pattern.fullmatch(entity_id) is None:
                continue
            assert rule.root is not None
            key: Key | None = None
            fast = rule.fast
            if fast is not None:
                result = fast(ctx)
            elif rule.stateful:
                key = (tenant, rule.id, entity_id)
                state = states.get(key)
                if state is None:
                    state = {}
                ctx.state = state
                ctx.dirty = False
                ctx.due = None
                result = rule.root.eval(ctx)
                if state.get("due") != ctx.due:
                    state["due"] = ctx.due
                    ctx.dirty = True
                if ctx.dirty or "m" not in state:
                    # Alarm details for the timer (which has no entity); refreshed whenever the state is written.
                    if meta is None:
                        meta = self.meta(after)
                    state["m"] = meta
                    self.states[key] = state
                    self.dirty.add(key)
                ctx.state = None
            else:
                result = rule.root.eval(ctx)
            if result is True:
                if meta is None:
                    meta = self.meta(after)
                self.mark_open(tenant, entity_id, rule.id)
                outcomes.append(Outcome(rule, tenant, entity_id, True, self.value(rule, after.attrs), meta, at=now))
            elif result is False and open_here and rule.id in open_here:
                self.mark_closed(tenant, entity_id, rule.id)
                outcomes.append(Outcome(rule, tenant, entity_id, False, self.value(rule, after.attrs),
                                        meta or self.meta(after), "condition no longer holds", now))
        return outcomes

    def _deleted(self, tenant: str, change: Any) -> list[Outcome]:
        before = change.before
        index = self.tenants.get(tenant)
        if before is None or index is None:
            return []
        outcomes: list[Outcome] = []
        seen: set[str] = set()
        for t in before.types:
            for rule in index.by_type.get(t, ()):
                if rule.id in seen:
                    continue
                seen.add(rule.id)
                key = (tenant, rule.id, change.entity_id)
                if self.states.pop(key, None) is not None:
                    self.dirty.add(key)
                if self.is_open(tenant, change.entity_id, rule.id):
                    self.mark_closed(tenant, change.entity_id, rule.id)
                    outcomes.append(Outcome(rule, tenant, change.entity_id, False, None, self.meta(before),
                                            "entity deleted"))
        return outcomes

    def evaluate_due(self, key: Key, now: float) -> Outcome | None:
        """Re-evaluate one windowed (rule, entity) on the timer, from its stored state alone."""
        tenant, rule_id, entity_id = key
        rule = self.rule(tenant, rule_id)
        state = self.states.get(key)
        if rule is None or rule.root is None or state is None:
            return None
        ctx = Ctx(None, frozenset(), now)
        ctx.state = state
        result = rule.root.eval(ctx)
        if state.get("due") != ctx.due:
            state["due"] = ctx.due
            ctx.dirty = True
        if ctx.dirty:
            self.dirty.add(key)
        meta = dict(state.get("m") or {})
        if result is True and not self.is_open(tenant, entity_id, rule_id):
            self.mark_open(tenant, entity_id, rule_id)
            return Outcome(rule, tenant, entity_id, True, None, meta, "timer", now)
        if result is False and self.is_open(tenant, entity_id, rule_id):
            self.mark_closed(tenant, entity_id, rule_id)
            return Outcome(rule, tenant, entity_id, False, None, meta, "condition no longer holds", now)
        return None

    def due_keys(self, now: float) -> list[Key]:
        return [k for k, s in self.states.items() if s.get("due") is not None and s["due"] <= now]

    # ------------------------------------------------------------------ helpers

    def meta(self, record: Any) -> dict[str, Any]:
        attrs = record.attrs
        district = attr_value(attrs, self._district)
        department = attr_value(attrs, self._department)
        location = attr_value(attrs, self._location)
        return {"type": self.compact(record.types[0]) if record.types else None,
                "district": district if isinstance(district, str) else None,
                "department": department if isinstance(department, str) else None,
                "location": location if isinstance(location, dict) else None}

    @staticmethod
    def value(rule: CompiledRule, attrs: Mapping[str, list[dict[str, Any]]]) -> Any:
        if len(rule.value_attrs) == 1:
            value = attr_value(attrs, rule.value_attrs[0][1])
            return None if value is MISSING else value
        found = {name: attr_value(attrs, iri) for name, iri in rule.value_attrs}
        return {k: v for k, v in found.items() if v is not MISSING} or None
