"""惠企 benchmark: the company policy calculator (issue #17).

For `--companies` synthetic companies (the simulator's distributions), the calculator's evaluation
(`livelihood.enterprise.matching.match`: every company policy with eligibility, score and the
explanation of each condition, as `GET /api/livelihood/me/policy-match` computes it) is timed per
company and checked against the straightforward row-by-row evaluation (`reference_eligible`) of the same
policies: the eligible counts must be equal. The baseline is that reference evaluation (eligibility
only, no explanation), so the ratio says what the scores and explanations cost. A what-if run (every
company with one more graduate hire and 5 % R&D) is timed and checked the same way.

    uv run --frozen python bench/enterprise_bench.py [--companies 5000]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, date, datetime
from typing import Any

from cityos.livelihood.enterprise.matching import match
from cityos.livelihood.policies.engine import reference_eligible
from cityos.livelihood.policies.rules import load_catalogue
from cityos.livelihood.profiles.service import Fact
from cityos.sim.population import companies, row_of

TODAY = date(2026, 12, 5)
OBSERVED = datetime(2026, 12, 1, tzinfo=UTC)
WHAT_IF = {"new_graduate_hires": 1, "rd_ratio": 0.05}


def facts_of(row: dict[str, Any]) -> dict[str, Fact]:
    return {name: Fact(name, value, "bench", "r", OBSERVED, ("enterprise-support",))
            for name, value in row.items() if value is not None}


def timed(rows: list[dict[str, Any]], policies: list[Any], what_if: dict[str, Any] | None) -> dict[str, Any]:
    company_policies = [p for p in policies if p.audience == "company"]
    calc_us, ref_us = [], []
    calc_count = ref_count = 0
    for row in rows:
        facts = facts_of(row)
        t0 = time.perf_counter()
        items = match(policies, facts, TODAY, what_if)
        calc_us.append((time.perf_counter() - t0) * 1e6)
        calc_count += sum(1 for i in items if i["eligible"])
        reference_row = {**row, **(what_if or {})}
        t0 = time.perf_counter()
        done = reference_eligible(company_policies, reference_row, TODAY)
        ref_us.append((time.perf_counter() - t0) * 1e6)
        ref_count += sum(done.values())
    calc = statistics.median(calc_us)
    ref = statistics.median(ref_us)
    p90 = sorted(calc_us)[len(calc_us) * 9 // 10]
    return {"calculator_median_us": round(calc, 1), "calculator_p90_us": round(p90, 1),
            "reference_median_us": round(ref, 1), "ratio_to_reference": round(calc / ref, 1),
            "eligible": calc_count, "reference_eligible": ref_count, "counts_equal": calc_count == ref_count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--companies", type=int, default=5000)
    args = parser.parse_args()
    policies = load_catalogue()
    firms = companies(args.companies, TODAY)
    rows = [row_of(firms, i) for i in range(firms.size)]
    plain = timed(rows, policies, None)
    tried = timed(rows, policies, WHAT_IF)
    print(json.dumps({"bench": "enterprise-calculator", "companies": args.companies,
                      "company_policies": sum(1 for p in policies if p.audience == "company"),
                      **plain, **{f"what_if_{k}": v for k, v in tried.items()}}))


if __name__ == "__main__":
    main()
