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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cityos.ops.rules.compiler import CompiledRule, Expand, compile_rule
from cityos.ops.rules.index import Plan, TenantIndex
from cityos.ops.rules.nodes import MISSING, Ctx, attr_value

Key = tuple[str, str, str]  # tenant, rule id, entity id
Compact = Callable[[str], str]
ALERT_PREFIX = "urn:ngsi-ld:Alert:alarm-"


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
        plan = index.plan(types, changed)
        if crossed is not None and attrs is not None:
            self._cross(plan, attrs, crossed)
            return list(plan.rules)
        # Without a value to bisect on, every threshold rule of the changed attributes is a candidate.
        found = {id(rule): rule for rule in plan.rules}
        for _attr, attr_rules in plan.bisect_on:
            for items in attr_rules.sorted.values():
                for rule in items[1]:
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
