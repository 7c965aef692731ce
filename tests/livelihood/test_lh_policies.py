"""Policies as data: the shipped catalogue, refusals of invalid and circular conditions, the vectorised
engine against the row-by-row reference, explanations, and purpose limitation."""

from __future__ import annotations

from datetime import date
from typing import Any

import httpx
import numpy as np
import pytest
from lh_support import BASE

from cityos.livelihood.policies.engine import Population, evaluate, explain, population_of, reference_eligible
from cityos.livelihood.policies.rules import PolicyError, check_catalogue, load_catalogue, parse_policy
from cityos.sim.population import companies, residents, row_of

ON = date(2026, 12, 5)


def _policy(**over: Any) -> dict[str, Any]:
    doc = {"id": "test-policy", "name": "测试", "nameEn": "Test", "legalBasis": "test", "department": "civil-affairs",
           "audience": "person", "purpose": "elderly", "mode": "automatic", "period": "month",
           "effectiveFrom": "2020-01-01", "benefit": {"kind": "cash", "amount": 10},
           "conditions": {"field": "age", "op": ">=", "value": 70}}
    doc.update(over)
    return doc


def test_the_shipped_catalogue_has_at_least_twenty_policies_of_both_modes() -> None:
    policies = load_catalogue()
    assert len(policies) >= 20
    assert {p.mode for p in policies} == {"automatic", "invite"}
    assert {p.audience for p in policies} == {"person", "company"}
    assert all(p.legal_basis and p.department for p in policies)
    order = [p.id for p in policies]
    assert order.index("dibao-screening") < order.index("disability-living-subsidy")


@pytest.mark.parametrize(("over", "message"), [
    ({"conditions": {"field": "salary", "op": ">", "value": 1}}, "unknown person field"),
    ({"conditions": {"field": "age", "op": "~", "value": 1}}, "unknown operator"),
    ({"conditions": {"field": "age", "op": ">", "value": "old"}}, "integers"),
    ({"conditions": {"field": "hukou", "op": ">", "value": "local"}}, "needs a number or date"),
    ({"conditions": {"field": "hukou", "op": "==", "value": "mars"}}, "not a code"),
    ({"conditions": {"field": "age", "op": "between", "value": [90, 80]}}, "low is above"),
    ({"conditions": {"all": []}}, "non-empty"),
    ({"conditions": {"field": "employees", "op": ">", "value": 1}}, "unknown person field"),
    ({"mode": "sometimes"}, "mode"), ({"period": "weekly"}, "period"),
    ({"benefit": {"kind": "cash"}}, "needs an amount"),
    ({"effectiveFrom": "2020-01-01", "effectiveTo": "2019-01-01"}, "before"),
    ({"conditions": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {
        "field": "age", "op": ">", "value": 1}}}}}}}}}}}, "deeper"),
])
def test_invalid_policies_are_refused(over: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(_policy(**over))


def test_circular_and_dangling_references_are_refused() -> None:
    a = parse_policy(_policy(id="a", conditions={"policy": "b"}))
    b = parse_policy(_policy(id="b", conditions={"all": [{"policy": "c"}]}))
    c = parse_policy(_policy(id="c", conditions={"any": [{"policy": "a"}, {"field": "age", "op": ">", "value": 1}]}))
    with pytest.raises(PolicyError, match="circular policy conditions: a → b → c → a"):
        check_catalogue([a, b, c])
    with pytest.raises(PolicyError, match="unknown policy"):
        check_catalogue([a])
    with pytest.raises(PolicyError, match="duplicate"):
        check_catalogue([c, c])


def test_vectorised_engine_agrees_with_the_row_by_row_reference() -> None:
    policies = load_catalogue()
    for synthetic in (residents(4000, ON, seed=1), companies(3000, ON, seed=2)):
        pop = Population(synthetic.kind, synthetic.size, ON, synthetic.columns, synthetic.known)
        masks = evaluate(policies, pop)
        mine = [p for p in policies if p.audience == synthetic.kind]
        counts = dict.fromkeys(masks, 0)
        for index in range(synthetic.size):
            for pid, held in reference_eligible(mine, row_of(synthetic, index), ON).items():
                counts[pid] += held
                assert held == bool(masks[pid][index]), (pid, index)
        assert counts == {pid: int(mask.sum()) for pid, mask in masks.items()}
        assert sum(counts.values()) > 0 and all(v > 0 for k, v in counts.items() if k != "centenarian-allowance")


def test_unknown_data_never_grants_and_explanations_name_the_conditions() -> None:
    policies = load_catalogue()
    rows = [{"birth_date": "1946-12-05", "hukou": "local"}, {"birth_date": "1946-12-06", "hukou": "local"},
            {"birth_date": "1946-12-05"}]
    pop = population_of("person", rows, ON)
    masks = evaluate(policies, pop)
    assert masks["elderly-allowance-80"].tolist() == [True, False, False]  # 80 today; 79 until tomorrow; unknown
    why = explain(next(p for p in policies if p.id == "elderly-allowance-80"), pop, 0, masks)
    assert why[0] == {"field": "age", "op": "between", "value": [80, 89], "source": "birth_date", "actual": 80,
                      "known": True, "held": True, "negated": False}
    assert why[1]["field"] == "hukou" and why[1]["actual"] == "local"
    not_known = explain(next(p for p in policies if p.id == "elderly-allowance-80"), pop, 2, masks)
    assert not_known[1]["known"] is False and not_known[1]["held"] is False
    # A negated unknown stays unknown (not granted).
    negated = parse_policy(_policy(conditions={"not": {"field": "veteran", "op": "==", "value": True}}))
    assert not evaluate([negated], pop)["test-policy"].any()


def test_purpose_limitation_uses_only_fields_shared_for_the_policy_purpose() -> None:
    policies = load_catalogue()
    row = {"hukou": "local", "income_per_capita": 500.0, "household_assets": 100.0}
    shared_for_assistance = population_of("person", [row], ON)
    shared_elsewhere = population_of("person", [{"hukou": "local"}], ON)
    ok = evaluate(policies, {"social-assistance": shared_for_assistance})
    assert bool(ok["dibao-screening"][0])
    refused = evaluate(policies, {"social-assistance": shared_elsewhere, "employment": shared_for_assistance})
    assert not bool(refused["dibao-screening"][0])
    assert np.array_equal(refused["temporary-assistance"], np.array([False]))


async def test_policy_api_lists_versions_and_refuses_cycles(client: httpx.AsyncClient, auth: Any,
                                                            anon_client: httpx.AsyncClient) -> None:
    listed = await anon_client.get(f"{BASE}/policies")
    assert listed.status_code == 200 and len(listed.json()["items"]) >= 20
    assert (await anon_client.get(f"{BASE}/policies/nope")).status_code == 404
    doc = _policy(conditions={"policy": "loop-b"})
    assert (await client.put(f"{BASE}/policies/loop-a", json=doc)).status_code == 400
    cyc = await client.put(f"{BASE}/policies/dibao-screening",
                           json=_policy(purpose="social-assistance", conditions={"policy": "temporary-assistance"}))
    assert cyc.status_code == 400 and "circular" in cyc.json()["detail"]
    bad = await client.put(f"{BASE}/policies/x", content=b"[")
    assert bad.status_code == 400
    made = await client.put(f"{BASE}/policies/elderly-allowance-80", json={
        **load_catalogue()[0].source, "benefit": {"kind": "cash", "amount": 120, "unit": "CNY/month"}})
    assert made.status_code == 200, made.text
    assert made.json()["policy"]["version"] == 2 and made.json()["policy"]["benefit"]["amount"] == 120
    official = auth.headers("official", department="health")
    assert (await client.put(f"{BASE}/policies/elderly-allowance-80", json=load_catalogue()[0].source,
                             headers=official)).status_code == 403
    assert (await client.put(f"{BASE}/policies/y", json=doc, headers=auth.headers("citizen"))).status_code == 403


def test_synthetic_population_shapes_and_life_events() -> None:
    from datetime import timedelta

    from cityos.sim.population import person_events

    people = residents(50_000, ON, seed=3)
    ages = (np.datetime64(ON, "D") - people.columns["birth_date"]).astype(int) / 365.25
    assert 0.15 < float((ages >= 60).mean()) < 0.25 and 0.015 < float((ages >= 80).mean()) < 0.04
    firms = companies(5000, ON)
    assert float((firms.columns["size_class"] <= 1).mean()) > 0.85  # micro and small dominate
    events = person_events(people, ON, 10)
    assert [e.day for e in events] == sorted(e.day for e in events)
    birthdays = [e for e in events if e.kind == "birthday-80"]
    assert birthdays and {e.kind for e in events} == {"birthday-80", "job-loss", "disability", "birth"}
    for event in birthdays[:50]:
        born = date.fromisoformat(row_of(people, event.index)["birth_date"])
        assert (born.month, born.day) == (event.day.month, event.day.day) and event.day.year - born.year == 80
        assert ON <= event.day < ON + timedelta(days=10)
