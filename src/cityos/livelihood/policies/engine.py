"""Vectorised evaluation of policies over a population (one numpy array per field).

Why not OpenFisca: ``openfisca-core`` 46 installs on this Python (numpy 2.4), but it wants each
variable and formula as a Python class in a country package; here departments edit policies as
data (YAML, versioned rows) and every decision must name the conditions that held and the records
behind them. A numpy evaluation of the declarative condition tree does the same vectorised work
(one array operation per condition over the whole population) without a code change per policy.

Three-valued logic: a field a person's records do not give (or did not share for the policy's
purpose) is *unknown*; a condition on it is neither true nor false, and a policy is granted only
when its condition is known to be true.

`reference_eligible` is the straightforward row-by-row evaluation the benchmark checks against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

from cityos.livelihood.policies.rules import Group, Leaf, Node, Policy, PolicyRef, references
from cityos.livelihood.profiles.fields import DERIVED, fields_of

Mask = npt.NDArray[np.bool_]


@dataclass
class Population:
    """Columns of one audience at one date. Code fields hold the index into the field's codes."""

    kind: str
    size: int
    as_of: date
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    known: dict[str, Mask] = field(default_factory=dict)
    _derived: dict[str, tuple[npt.NDArray[Any], Mask]] = field(default_factory=dict)

    def row(self, index: int) -> Population:
        """Person `index` alone (for explanations: every condition over one row, not the population)."""
        return Population(self.kind, 1, self.as_of, {k: v[index:index + 1] for k, v in self.columns.items()},
                          {k: v[index:index + 1] for k, v in self.known.items()})

    def column(self, name: str) -> tuple[npt.NDArray[Any], Mask]:
        if name in DERIVED:
            return self._age(name)
        if name not in self.columns:
            return np.zeros(self.size), np.zeros(self.size, dtype=bool)
        return self.columns[name], self.known[name]

    def _age(self, name: str) -> tuple[npt.NDArray[Any], Mask]:
        cached = self._derived.get(name)
        if cached is not None:
            return cached
        source = DERIVED[name][0]
        if source not in self.columns:
            return np.zeros(self.size), np.zeros(self.size, dtype=bool)
        born = self.columns[source].astype("datetime64[D]")
        years = born.astype("datetime64[Y]").astype(np.int64) + 1970
        months = born.astype("datetime64[M]").astype(np.int64) % 12 + 1
        days = (born - born.astype("datetime64[M]")).astype(np.int64) + 1
        before = (months * 100 + days) > (self.as_of.month * 100 + self.as_of.day)
        age = self.as_of.year - years - before.astype(np.int64)
        result = (age, self.known[source])
        self._derived[name] = result
        return result


def encode(kind: str, name: str, value: Any) -> Any:
    """A condition's value in the column's representation (code index, datetime64)."""
    spec = fields_of(kind).get(name)
    if spec is not None and spec.type == "code":
        return spec.codes.index(value) if value in spec.codes else -1
    if isinstance(value, date):
        return np.datetime64(value, "D")
    return value


def _leaf(pop: Population, leaf: Leaf) -> tuple[Mask, Mask]:
    values, known = pop.column(leaf.field)
    op = leaf.op
    if op in ("in", "not_in"):
        held = np.isin(values, [encode(pop.kind, leaf.field, v) for v in leaf.value])
        held = ~held if op == "not_in" else held
    elif op == "between":
        low, high = (encode(pop.kind, leaf.field, v) for v in leaf.value)
        held = (values >= low) & (values <= high)
    else:
        target = encode(pop.kind, leaf.field, leaf.value)
        held = {"==": np.equal, "!=": np.not_equal, ">": np.greater, ">=": np.greater_equal,
                "<": np.less, "<=": np.less_equal}[op](values, target)
    return held & known, known


def _node(pop: Population, node: Node, done: dict[str, Mask]) -> tuple[Mask, Mask]:
    """(known true, known) of `node`."""
    if isinstance(node, Leaf):
        return _leaf(pop, node)
    if isinstance(node, PolicyRef):
        return done[node.policy], np.ones(pop.size, dtype=bool)
    parts = [_node(pop, child, done) for child in node.children]
    if node.kind == "not":
        true, known = parts[0]
        return known & ~true, known
    if node.kind == "all":
        true = np.logical_and.reduce([t for t, _ in parts])
        false = np.logical_or.reduce([k & ~t for t, k in parts])
        return true, true | false
    true = np.logical_or.reduce([t for t, _ in parts])
    false = np.logical_and.reduce([k & ~t for t, k in parts])
    return true, true | false


def evaluate(policies: list[Policy], pop: Population | dict[str, Population]) -> dict[str, Mask]:
    """Eligibility masks of `policies` (in catalogue order) of the population's audience at its date.

    With a dict, each policy is evaluated on the population of its purpose (the fields shared for that
    purpose only); a policy whose purpose has no population is not evaluated (nothing was shared for it).
    """
    done: dict[str, Mask] = {}
    for policy in policies:
        one = pop.get(policy.purpose) if isinstance(pop, dict) else pop
        if one is None or policy.audience != one.kind:
            continue
        if not policy.in_force(one.as_of) or any(r not in done for r in references(policy.condition)):
            done[policy.id] = np.zeros(one.size, dtype=bool)
            continue
        done[policy.id] = _node(one, policy.condition, done)[0]
    return done


def _display(kind: str, name: str, raw: Any) -> Any:
    spec = fields_of(kind).get(name)
    if spec is not None and spec.type == "code":
        index = int(raw)
        return spec.codes[index] if 0 <= index < len(spec.codes) else None
    if isinstance(raw, np.datetime64):
        return str(raw.astype("datetime64[D]"))
    if isinstance(raw, np.bool_):
        return bool(raw)
    if isinstance(raw, np.integer):
        return int(raw)
    if isinstance(raw, np.floating):
        return float(raw)
    return raw


def explain(policy: Policy, pop: Population, row: int, done: dict[str, Mask]) -> list[dict[str, Any]]:
    """Every condition of `policy` for person `row`: field, operator, value, the person's value, held."""
    out: list[dict[str, Any]] = []

    def walk(node: Node, negated: bool) -> None:
        if isinstance(node, Leaf):
            values, known = pop.column(node.field)
            held, _ = _leaf(pop, node)
            source = DERIVED[node.field][0] if node.field in DERIVED else node.field
            out.append({"field": node.field, "op": node.op, "value": _json(node.value), "source": source,
                        "actual": _display(pop.kind, node.field, values[row]) if known[row] else None,
                        "known": bool(known[row]), "held": bool(held[row]), "negated": negated})
        elif isinstance(node, PolicyRef):
            out.append({"policy": node.policy, "held": bool(done[node.policy][row]), "known": True,
                        "negated": negated})
        else:
            for child in node.children:
                walk(child, negated != (node.kind == "not"))

    walk(policy.condition, False)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value


# ---------------------------------------------------------------------------------- the reference


def _ref_age(born: str | None, on: date) -> int | None:
    if born is None:
        return None
    b = date.fromisoformat(born)
    return on.year - b.year - ((on.month, on.day) < (b.month, b.day))


def _ref_leaf(row: dict[str, Any], leaf: Leaf, on: date) -> bool | None:
    if leaf.field in DERIVED:
        actual: Any = _ref_age(row.get(DERIVED[leaf.field][0]), on)
    else:
        actual = row.get(leaf.field)
    if actual is None:
        return None
    if isinstance(actual, str) and len(actual) == 10 and actual[4] == "-":
        actual = date.fromisoformat(actual)
    op, value = leaf.op, leaf.value
    if op == "==":
        return bool(actual == value)
    if op == "!=":
        return bool(actual != value)
    if op == ">":
        return bool(actual > value)
    if op == ">=":
        return bool(actual >= value)
    if op == "<":
        return bool(actual < value)
    if op == "<=":
        return bool(actual <= value)
    if op == "in":
        return actual in value
    if op == "not_in":
        return actual not in value
    return bool(value[0] <= actual <= value[1])


def _ref_node(row: dict[str, Any], node: Node, on: date, done: dict[str, bool]) -> bool | None:
    if isinstance(node, Leaf):
        return _ref_leaf(row, node, on)
    if isinstance(node, PolicyRef):
        return done[node.policy]
    assert isinstance(node, Group)
    results = [_ref_node(row, c, on, done) for c in node.children]
    if node.kind == "not":
        return None if results[0] is None else not results[0]
    if node.kind == "all":
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False


def reference_eligible(policies: list[Policy], row: dict[str, Any], on: date) -> dict[str, bool]:
    """One person's eligibility, in plain Python (the check on the vectorised engine)."""
    done: dict[str, bool] = {}
    for policy in policies:
        done[policy.id] = bool(policy.in_force(on) and _ref_node(row, policy.condition, on, done) is True)
    return done


def population_of(kind: str, rows: list[dict[str, Any]], as_of: date) -> Population:
    """A population from plain rows (field → value, None or absent when unknown; codes as text, dates ISO)."""
    n = len(rows)
    pop = Population(kind, n, as_of)
    for name, spec in fields_of(kind).items():
        raw = [r.get(name) for r in rows]
        known = np.array([v is not None for v in raw], dtype=bool)
        if spec.type == "code":
            values: npt.NDArray[Any] = np.array([spec.codes.index(v) if v in spec.codes else -1 for v in raw],
                                                dtype=np.int64)
        elif spec.type == "date":
            values = np.array([v if v is not None else "1970-01-01" for v in raw], dtype="datetime64[D]")
        elif spec.type == "bool":
            values = np.array([bool(v) for v in raw], dtype=bool)
        elif spec.type == "int":
            values = np.array([int(v) if v is not None else 0 for v in raw], dtype=np.int64)
        else:
            values = np.array([float(v) if v is not None else 0.0 for v in raw], dtype=np.float64)
        pop.columns[name] = values
        pop.known[name] = known
    return pop


def row_of(kind: str, columns: dict[str, npt.NDArray[Any]], known: dict[str, Mask], index: int) -> dict[str, Any]:
    """One person or company as plain Python values (codes as text, dates ISO; None when unknown)."""
    specs = fields_of(kind)
    out: dict[str, Any] = {}
    for name, values in columns.items():
        if not known[name][index]:
            out[name] = None
            continue
        raw = values[index]
        spec = specs[name]
        if spec.type == "code":
            out[name] = spec.codes[int(raw)]
        elif spec.type == "date":
            out[name] = str(np.datetime64(raw, "D"))
        elif spec.type == "bool":
            out[name] = bool(raw)
        elif spec.type == "int":
            out[name] = int(raw)
        else:
            out[name] = float(raw)
    return out
