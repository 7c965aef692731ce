"""The rule index of a tenant: entity type IRI → attribute IRI → rules, with plain numeric thresholds
in sorted arrays (found by bisection), and the candidate plan of each shape of change."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

from cityos.ops.rules.compiler import CompiledRule
from cityos.ops.rules.nodes import _ORDER, Compare, _number


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


