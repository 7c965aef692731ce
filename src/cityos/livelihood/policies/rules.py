"""A policy as data: legal basis, department, audience, eligibility conditions, benefit, period,
effective dates, mode (免申即享 ``automatic`` or 服务找人 ``invite``) and version.

Conditions are a small tree:

    {"all": [node, ...]} | {"any": [node, ...]} | {"not": node}
    {"field": "age", "op": ">=", "value": 80}          ops: == != > >= < <= in not_in between
    {"policy": "dibao"}                                  eligible for another policy (same audience)

`parse_policy` refuses unknown fields, operators that do not fit the field's type, values of the
wrong type, trees that are too deep or too large; `check_catalogue` refuses references to unknown
policies and cycles, and gives the order in which policies must be evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from cityos.livelihood.profiles.fields import field_type, fields_of

OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "between")
ORDERED_TYPES = ("int", "float", "date")
MAX_DEPTH = 8
MAX_LEAVES = 50
MODES = ("automatic", "invite")
PERIODS = ("month", "year", "once")
AUDIENCES = ("person", "company")


class PolicyError(ValueError):
    """An invalid policy or catalogue; the message says where."""


@dataclass(frozen=True)
class Leaf:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class PolicyRef:
    policy: str


@dataclass(frozen=True)
class Group:
    kind: str  # all | any | not
    children: tuple[Node, ...]


Node = Leaf | PolicyRef | Group


@dataclass(frozen=True)
class Policy:
    id: str
    version: int
    name: str
    name_en: str
    legal_basis: str
    department: str
    audience: str
    purpose: str
    mode: str
    condition: Node
    benefit: dict[str, Any]
    period: str
    effective_from: date
    effective_to: date | None
    service_code: str | None
    source: dict[str, Any]

    @property
    def amount(self) -> float:
        value = self.benefit.get("amount")
        return float(value) if isinstance(value, int | float) else 0.0

    def in_force(self, on: date) -> bool:
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)

    def period_label(self) -> str:
        return {"month": "月", "year": "年", "once": "一次性"}[self.period]

    def period_key(self, on: date) -> str:
        if self.period == "month":
            return f"{on:%Y-%m}"
        if self.period == "year":
            return f"{on:%Y}"
        return "once"


def _check_value(kind: str, name: str, ftype: str, op: str, value: Any, where: str) -> Any:
    spec = fields_of(kind).get(name)

    def one(v: Any) -> Any:
        if ftype == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise PolicyError(f"{where}: {name} compares with integers, not {v!r}")
        if ftype == "float" and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise PolicyError(f"{where}: {name} compares with numbers, not {v!r}")
        if ftype == "bool" and not isinstance(v, bool):
            raise PolicyError(f"{where}: {name} compares with true or false, not {v!r}")
        if ftype == "code" and (not isinstance(v, str) or (spec is not None and spec.codes and v not in spec.codes)):
            raise PolicyError(f"{where}: {v!r} is not a code of {name}")
        if ftype == "date":
            try:
                return date.fromisoformat(v) if isinstance(v, str) else _raise(where, name, v)
            except ValueError as exc:
                raise PolicyError(f"{where}: {name} compares with ISO dates, not {v!r}") from exc
        return float(v) if ftype == "float" else v

    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > 100:
            raise PolicyError(f"{where}: {op} takes a list of 1-100 values")
        return tuple(one(v) for v in value)
    if op == "between":
        if ftype not in ORDERED_TYPES or not isinstance(value, list) or len(value) != 2:
            raise PolicyError(f"{where}: between takes [low, high] on a number or date field")
        low, high = one(value[0]), one(value[1])
        if low > high:
            raise PolicyError(f"{where}: between's low is above its high")
        return (low, high)
    if op in (">", ">=", "<", "<=") and ftype not in ORDERED_TYPES:
        raise PolicyError(f"{where}: {op} needs a number or date field, {name} is {ftype}")
    return one(value)


def _raise(where: str, name: str, value: Any) -> Any:
    raise PolicyError(f"{where}: {name} compares with ISO dates, not {value!r}")


def parse_condition(kind: str, doc: Any, where: str = "conditions", depth: int = 0,
                    counter: list[int] | None = None) -> Node:
    counter = counter if counter is not None else [0]
    if depth > MAX_DEPTH:
        raise PolicyError(f"{where}: conditions nest deeper than {MAX_DEPTH}")
    if not isinstance(doc, dict) or len(doc) == 0:
        raise PolicyError(f"{where}: a condition is an object")
    keys = set(doc)
    if keys in ({"all"}, {"any"}):
        group = "all" if "all" in doc else "any"
        items = doc[group]
        if not isinstance(items, list) or not items:
            raise PolicyError(f"{where}.{group}: a non-empty list")
        return Group(group, tuple(parse_condition(kind, c, f"{where}.{group}[{i}]", depth + 1, counter)
                                  for i, c in enumerate(items)))
    if keys == {"not"}:
        return Group("not", (parse_condition(kind, doc["not"], f"{where}.not", depth + 1, counter),))
    if keys == {"policy"}:
        if not isinstance(doc["policy"], str) or not doc["policy"]:
            raise PolicyError(f"{where}: policy names a policy id")
        return PolicyRef(doc["policy"])
    if keys == {"field", "op", "value"}:
        counter[0] += 1
        if counter[0] > MAX_LEAVES:
            raise PolicyError(f"{where}: more than {MAX_LEAVES} conditions")
        name, op = doc["field"], doc["op"]
        ftype = field_type(kind, name) if isinstance(name, str) else None
        if ftype is None:
            raise PolicyError(f"{where}: unknown {kind} field {name!r}")
        if op not in OPS:
            raise PolicyError(f"{where}: unknown operator {op!r} (one of {' '.join(OPS)})")
        return Leaf(name, op, _check_value(kind, name, ftype, op, doc["value"], where))
    raise PolicyError(f"{where}: expected all/any/not/policy or field+op+value, got {sorted(keys)}")


def _text(doc: dict[str, Any], key: str, limit: int = 400, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise PolicyError(f"{key}: a text of 1-{limit} characters")
    return value.strip()


def _date(doc: dict[str, Any], key: str, required: bool) -> date | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise PolicyError(f"{key}: an ISO date") from exc


def parse_policy(doc: Any) -> Policy:
    if not isinstance(doc, dict):
        raise PolicyError("a policy is an object")
    pid = _text(doc, "id", 64)
    assert pid is not None
    if not all(c.isalnum() or c in "-_" for c in pid):
        raise PolicyError("id: letters, digits, '-' and '_'")
    audience = doc.get("audience")
    if audience not in AUDIENCES:
        raise PolicyError(f"{pid}: audience is person or company")
    mode, period = doc.get("mode"), doc.get("period")
    if mode not in MODES:
        raise PolicyError(f"{pid}: mode is automatic (免申即享) or invite (服务找人)")
    if period not in PERIODS:
        raise PolicyError(f"{pid}: period is one of {', '.join(PERIODS)}")
    version = doc.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 10_000:
        raise PolicyError(f"{pid}: version is a positive integer")
    benefit = doc.get("benefit")
    if not isinstance(benefit, dict) or benefit.get("kind") not in ("cash", "service", "subsidy"):
        raise PolicyError(f"{pid}: benefit is {{kind: cash|service|subsidy, amount?, unit?}}")
    amount = benefit.get("amount")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int | float)
                               or not 0 <= amount <= 1e8):
        raise PolicyError(f"{pid}: benefit amount is a number between 0 and 1e8")
    if mode == "automatic" and benefit["kind"] != "service" and amount is None:
        raise PolicyError(f"{pid}: an automatic (免申即享) cash benefit needs an amount")
    start, end = _date(doc, "effectiveFrom", True), _date(doc, "effectiveTo", False)
    assert start is not None
    if end is not None and end < start:
        raise PolicyError(f"{pid}: effectiveTo is before effectiveFrom")
    condition = parse_condition(audience, doc.get("conditions"), f"{pid}.conditions")
    return Policy(
        id=pid, version=version, name=_text(doc, "name", 100) or "", name_en=_text(doc, "nameEn", 200) or "",
        legal_basis=_text(doc, "legalBasis", 400) or "", department=_text(doc, "department", 64) or "",
        audience=audience, purpose=_text(doc, "purpose", 64) or "", mode=mode, condition=condition,
        benefit=dict(benefit), period=period, effective_from=start, effective_to=end,
        service_code=_text(doc, "serviceCode", 64, required=False), source=dict(doc))


def references(node: Node) -> set[str]:
    if isinstance(node, PolicyRef):
        return {node.policy}
    if isinstance(node, Group):
        return set().union(*(references(c) for c in node.children))
    return set()


def check_catalogue(policies: list[Policy]) -> list[Policy]:
    """The policies in evaluation order (a referenced policy before its referrers).

    Refuses duplicate ids, references to unknown policies or across audiences, and cycles."""
    by_id: dict[str, Policy] = {}
    for policy in policies:
        if policy.id in by_id:
            raise PolicyError(f"duplicate policy id {policy.id!r}")
        by_id[policy.id] = policy
    for policy in policies:
        for ref in references(policy.condition):
            target = by_id.get(ref)
            if target is None:
                raise PolicyError(f"{policy.id}: refers to unknown policy {ref!r}")
            if target.audience != policy.audience:
                raise PolicyError(f"{policy.id}: refers to {ref!r} of another audience")
    order: list[Policy] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(pid: str, path: list[str]) -> None:
        if state.get(pid) == 2:
            return
        if state.get(pid) == 1:
            cycle = " → ".join([*path[path.index(pid):], pid])
            raise PolicyError(f"circular policy conditions: {cycle}")
        state[pid] = 1
        for ref in sorted(references(by_id[pid].condition)):
            visit(ref, [*path, pid])
        state[pid] = 2
        order.append(by_id[pid])

    for policy in policies:
        visit(policy.id, [])
    return order


CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")


def load_catalogue(path: Path = CATALOGUE_FILE) -> list[Policy]:
    docs = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(docs, list):
        raise PolicyError(f"{path.name}: a list of policies")
    return check_catalogue([parse_policy(d) for d in docs])
