"""Compiling a rule document into a `CompiledRule`: its condition tree (`nodes`), and for stateless
rules one short-circuiting closure instead of the tree. Pure, in memory."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cityos.ops.rules.nodes import (
    _ORDER,
    All,
    AnyOf,
    Compare,
    Ctx,
    Geofence,
    NoData,
    Node,
    Rate,
    Sustained,
    _number,
    make_test,
)
from cityos.ops.rules.spec import parse_duration

Expand = Callable[[str], str]


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

