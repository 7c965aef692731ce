"""The condition tree of a compiled rule: its nodes (threshold, geofence, rate, sustained, noData, all,
any), the evaluation context they see, and the attribute helpers they share. Pure, in memory; see
`cityos.ops.rules.engine` for three-valued evaluation and the window state the nodes keep."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from shapely import prepared
from shapely.errors import GEOSException
from shapely.geometry import shape

from cityos.core import clock

MISSING: Any = object()


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

