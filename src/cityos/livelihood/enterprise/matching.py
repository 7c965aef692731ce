"""Policy matching for a company (惠企政策计算器): every company policy with a score and the reason.

The evaluation is the same vectorised engine that decides eligibility (`policies.engine`), run on
one row: the company's facts shared for each policy's purpose, optionally overlaid with "what if"
inputs the company types in (never stored, never notified). The score is the share of the policy's
conditions the company meets (100 when it is eligible), so a company sees how far it is from a
policy and which conditions are missing.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from cityos.core.errors import BadRequestData
from cityos.livelihood.policies.engine import Population, evaluate, explain, population_of
from cityos.livelihood.policies.rules import Policy
from cityos.livelihood.profiles.fields import COMPANY_FIELDS, DERIVED
from cityos.livelihood.profiles.service import Fact

MAX_WHAT_IF = len(COMPANY_FIELDS)


def parse_what_if(body: Any) -> dict[str, Any]:
    """{"whatIf": {field: value}}: each field a company profile field, its value of the field's type."""
    if body is None:
        return {}
    if not isinstance(body, dict) or not isinstance(body.get("whatIf", {}), dict):
        raise BadRequestData('the body is {"whatIf": {field: value}}')
    given: dict[str, Any] = body.get("whatIf", {})
    if len(given) > MAX_WHAT_IF:
        raise BadRequestData(f"whatIf: at most {MAX_WHAT_IF} fields")
    out: dict[str, Any] = {}
    for name, value in given.items():
        spec = COMPANY_FIELDS.get(name)
        if spec is None:
            raise BadRequestData(f"whatIf: unknown company field {str(name)[:64]!r}")
        if value is None:
            out[name] = None  # "what if this were unknown"
            continue
        try:
            out[name] = spec.parse(value)
        except ValueError as exc:
            raise BadRequestData(f"whatIf.{name}: {exc}") from exc
    return out


def _populations(facts: dict[str, Fact], what_if: dict[str, Any], on: date) -> dict[str, Population]:
    purposes = {p for f in facts.values() for p in f.purposes} | ({"enterprise-support"} if what_if else set())
    pops = {}
    for purpose in purposes:
        row = {k: f.value for k, f in facts.items() if purpose in f.purposes}
        row.update(what_if)  # the company's own hypothetical inputs count for every purpose
        pops[purpose] = population_of("company", [row], on)
    return pops


def score_of(why: list[dict[str, Any]], eligible: bool) -> int:
    if eligible:
        return 100
    if not why:
        return 0
    return round(100 * sum(1 for w in why if w["held"] != w.get("negated", False)) / len(why))


def match(catalogue: list[Policy], facts: dict[str, Fact], on: date,
          what_if: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every company policy in force: eligible, score, why (each condition, the company's value and its
    source record), sorted eligible first, then by score."""
    policies = [p for p in catalogue if p.audience == "company"]
    pops = _populations(facts, what_if or {}, on)
    done = evaluate(policies, pops)
    out: list[dict[str, Any]] = []
    for policy in policies:
        if not policy.in_force(on):
            continue
        pop = pops.get(policy.purpose)
        eligible = bool(pop is not None and done.get(policy.id) is not None and done[policy.id][0])
        why = explain(policy, pop, 0, done) if pop is not None else []
        for item in why:
            name = item.get("source", "")
            fact = facts.get(name)
            if what_if and (item.get("field") in (what_if or {}) or
                            (item.get("field") in DERIVED and name in (what_if or {}))):
                item["department"] = "what-if"  # the company's own hypothetical input
            elif fact is not None:
                item["department"] = fact.department
                item["observedAt"] = fact.observed_at.isoformat()
        out.append({"policy": policy.id, "eligible": eligible, "score": score_of(why, eligible), "why": why,
                    "missing": [w for w in why if w["held"] == w.get("negated", False)]})
    out.sort(key=lambda r: (not r["eligible"], -r["score"], r["policy"]))
    return out
