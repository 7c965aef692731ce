"""一网协同 benchmark: eligibility sweep, single life event, payout time and reach (issue #17).

1. Sweep: 1,000,000 synthetic residents × the 20 resident policies (and 5,000 companies × the company
   policies) with the vectorised engine; checked against the straightforward row-by-row Python
   evaluation of a sample in the same run (counts must be equal; the ratio is the speed-up).
2. Single life event: a department record through the real service on a database (SQLite by default,
   PostgreSQL with --postgres URL): record committed, the subject re-evaluated, payouts and the in-app
   notice written, in one transaction (SQLite). Baseline: the same record stored without re-evaluation.
3. Payout time and reach in simulated time: a population in the database lives `--days` days on a
   moved clock: 80th birthdays (found by the platform's morning birthday run), job losses and
   disability certifications (shared by the departments with a lag of up to a day), hourly
   settlement, objection window of one day, approvals above the threshold the next morning.
   Median time from the eligibility event to the payout record being paid, and the share of newly
   eligible people reached (paid, or notified for 服务找人) by the end.
4. Elderly care: simulated falls through the real escalation chain (`care_part`): fall → first
   acknowledged contact p50/p90 and the share within 5 minutes.

    uv run --frozen python bench/livelihood_bench.py [--residents 1000000] [--sample 100000]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from cityos.livelihood.policies.engine import Population, evaluate, reference_eligible
from cityos.livelihood.policies.rules import load_catalogue
from cityos.sim.population import LifeEvent, companies, residents, row_of

TODAY = date(2026, 12, 5)
PURPOSES = ["elderly", "social-assistance", "disability", "employment", "family", "veterans",
            "enterprise-support", "care"]


def sweep(n_residents: int, n_companies: int, sample: int) -> dict[str, Any]:
    policies = load_catalogue()
    t0 = time.perf_counter()
    people = residents(n_residents, TODAY)
    firms = companies(n_companies, TODAY)
    generated = time.perf_counter() - t0
    t0 = time.perf_counter()
    masks = evaluate(policies, Population("person", people.size, TODAY, people.columns, people.known))
    company_masks = evaluate(policies, Population("company", firms.size, TODAY, firms.columns, firms.known))
    sweep_s = time.perf_counter() - t0
    person_policies = [p for p in policies if p.audience == "person"]
    t0 = time.perf_counter()
    counts = dict.fromkeys(masks, 0)
    for index in range(sample):
        for pid, held in reference_eligible(person_policies, row_of(people, index), TODAY).items():
            counts[pid] += held
    reference_s = time.perf_counter() - t0
    vector_counts = {pid: int(mask[:sample].sum()) for pid, mask in masks.items()}
    per_row_vector = sweep_s / n_residents
    per_row_reference = reference_s / sample
    return {"residents": n_residents, "companies": n_companies, "person_policies": len(person_policies),
            "company_policies": len(company_masks), "generate_s": round(generated, 2), "sweep_s": round(sweep_s, 3),
            "eligible_total": int(sum(int(m.sum()) for m in masks.values())),
            "company_eligible_total": int(sum(int(m.sum()) for m in company_masks.values())),
            "reference_sample": sample, "reference_s": round(reference_s, 2),
            "reference_counts_equal": counts == vector_counts,
            "reference_full_estimate_s": round(per_row_reference * n_residents, 1),
            "speedup_vs_reference": round(per_row_reference / per_row_vector, 1), "target_sweep_s": 60}


# ---------------------------------------------------------------------------------- the database part


def _body(subject: str, department: str, dataset: str, fields: dict[str, Any], observed: datetime,
          user_id: str | None = None, kind: str = "person") -> dict[str, Any]:
    body: dict[str, Any] = {"subject": {"kind": kind, "id": subject}, "department": department, "dataset": dataset,
                            "purposes": PURPOSES, "consent": {"basis": "law", "reference": "bench"},
                            "observedAt": observed.isoformat(), "fields": fields}
    if user_id:
        body["userId"] = user_id
    return body


async def _allow(_action: str, _department: Any) -> None:
    return None


def migrated(url: str) -> str:
    from cityos.config import Settings
    from cityos.core import migrate

    migrate.upgrade(Settings(database_url=url))
    return url


async def _app(url: str) -> Any:
    from cityos.app import create_app
    from cityos.config import Settings

    return create_app(Settings(database_url=url))


async def database_part(url: str, days: int, population: int) -> dict[str, Any]:
    from cityos.core import clock

    os.environ["CITYOS_LIVELIHOOD_INTERVAL_SECONDS"] = "0"
    os.environ.setdefault("CITYOS_EVALUATION_INTERVAL_SECONDS", "0")
    app = await _app(url)
    start = datetime(2026, 11, 1, 16, 0, tzinfo=UTC)  # 00:00 in Shanghai
    now = [start]
    clock.set_clock(lambda: now[0])
    try:
        async with app.router.lifespan_context(app):
            return await _simulate(app, now, days, population)
    finally:
        clock.reset_clock()


def _fields(synthetic: Any, index: int) -> dict[str, Any]:
    return {k: v for k, v in row_of(synthetic, index).items() if v is not None}


async def _simulate(app: Any, now: list[datetime], days: int, population: int) -> dict[str, Any]:
    from sqlalchemy import select

    from cityos.livelihood import models as m
    from cityos.livelihood.profiles.fields import fields_of

    svc = app.state.livelihood
    first_day = now[0].astimezone(_zone()).date()
    people = residents(200_000, first_day, seed=21)
    born = people.columns["birth_date"].astype("datetime64[D]")
    turning = np.flatnonzero((np.datetime64(first_day, "D") - born <= np.timedelta64(80 * 365 + 20, "D"))
                             & (np.datetime64(first_day, "D") - born > np.timedelta64(79 * 365 + 20 - days, "D"))
                             & (people.columns["hukou"] == 0))
    rng = np.random.default_rng(5)
    chosen = np.unique(np.concatenate([turning[: population // 5],
                                       rng.choice(people.size, size=population, replace=False)]))[:population]
    # Register everyone as the departments would (one record per department), before the window.
    authority = {name: spec.authority for name, spec in fields_of("person").items()}
    for index in chosen:
        fields = _fields(people, int(index))
        by_dept: dict[str, dict[str, Any]] = {}
        for name, value in fields.items():
            by_dept.setdefault(authority[name], {})[name] = value
        identity = by_dept.pop("public-security", {})
        await svc.publish(None, "", _body(f"P{index}", "public-security", "household", identity or
                                          {"hukou": "local"}, now[0], user_id=f"u{index}"), _allow)
        for dept, values in by_dept.items():
            await svc.publish(None, "", _body(f"P{index}", dept, "share", values, now[0]), _allow)
    await svc.settle(now=now[0] + timedelta(days=3))
    async with svc.engine.connect() as conn:
        before = {(r.subject_id, r.policy_id) for r in (await conn.execute(select(
            m.decisions.c.subject_id, m.decisions.c.policy_id).where(m.decisions.c.eligible.is_(True)))).all()}
    # Life events in the window: the platform's morning birthday run, departments' lagging records.
    rng = np.random.default_rng(9)
    events = _events(people, chosen, first_day, days, rng)
    timeline: list[tuple[datetime, str, Any]] = []
    for event in events:
        happened = datetime.combine(event.day, datetime.min.time(), _zone()).astimezone(UTC) + timedelta(
            hours=float(rng.uniform(8, 18)))
        if event.kind == "birthday-80":
            continue  # handled by the daily birthday run below
        dept = "human-resources" if event.kind == "job-loss" else (
            "disabled-persons" if event.kind == "disability" else "public-security")
        shared = happened + timedelta(hours=float(rng.uniform(0, 24)))
        timeline.append((shared, "record", (event, dept, happened)))
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        timeline.append((datetime.combine(day, datetime.min.time(), _zone()).astimezone(UTC)
                         + timedelta(hours=1), "birthdays", day))
        for hour in range(24):
            timeline.append((datetime.combine(day, datetime.min.time(), _zone()).astimezone(UTC)
                             + timedelta(hours=hour, minutes=30), "settle", None))
        timeline.append((datetime.combine(day, datetime.min.time(), _zone()).astimezone(UTC)
                         + timedelta(hours=9), "approve", None))
    timeline.sort(key=lambda item: item[0])
    latencies: list[float] = []
    for at, kind, payload in timeline:
        now[0] = at
        if kind == "record":
            event, dept, happened = payload
            t0 = time.perf_counter()
            await svc.publish(None, "", _body(f"P{event.index}", dept, event.kind, event.changes, happened), _allow)
            latencies.append(time.perf_counter() - t0)
        elif kind == "birthdays":
            day = payload
            md = (born[chosen].astype("datetime64[D]") - born[chosen].astype("datetime64[Y]").astype("datetime64[D]"))
            today = np.datetime64(day, "D") - np.datetime64(day, "Y").astype("datetime64[D]")
            for index in chosen[md == today]:
                birthday = datetime.combine(day, datetime.min.time(), _zone()).astimezone(UTC)
                await svc.life_event("", f"P{index}", birthday)
        elif kind == "settle":
            await svc.settle()
        else:
            async with svc.engine.connect() as conn:
                waiting = (await conn.execute(select(m.payouts.c.id).where(
                    m.payouts.c.status == "awaiting-approval"))).all()
            for (payout_id,) in waiting:
                from cityos.security.policy import Principal

                await svc.approve("", Principal("supervisor", role="dept_admin"), payout_id, True)
    now[0] = now[0] + timedelta(days=3)
    await svc.settle()
    async with svc.engine.connect() as conn:
        decisions = (await conn.execute(select(m.decisions).where(m.decisions.c.eligible.is_(True)))).all()
        payouts = {(r.subject_id, r.policy_id): r for r in (await conn.execute(select(m.payouts))).all()}
    catalogue = {p.id: p for p in await svc.catalogue("")}
    fresh = [d for d in decisions if (d.subject_id, d.policy_id) not in before]
    reached = 0
    days_to_pay: list[float] = []
    for decision in fresh:
        pay = payouts.get((decision.subject_id, decision.policy_id))
        policy = catalogue[decision.policy_id]
        if pay is not None and pay.paid_at is not None:
            days_to_pay.append((_utc(pay.paid_at) - _utc(pay.eligible_at)).total_seconds() / 86400)
        if (pay is not None and pay.paid_at is not None) or decision.notified_at is not None or (
                policy.mode == "automatic" and policy.amount == 0):
            reached += 1
    return {"db_population": len(chosen), "sim_days": days, "life_event_records": len(latencies),
            "newly_eligible": len(fresh), "payouts_paid": len(days_to_pay),
            "payout_days_median": round(statistics.median(days_to_pay), 2) if days_to_pay else None,
            "payout_days_p90": round(float(np.percentile(days_to_pay, 90)), 2) if days_to_pay else None,
            "reach_pct": round(100.0 * reached / len(fresh), 1) if fresh else None,
            "payout_target_days": 3, "reach_target_pct": 95}


def _events(people: Any, chosen: Any, first_day: date, days: int, rng: np.random.Generator) -> list[LifeEvent]:
    """Job losses, disability certifications and births among the people in the database."""
    per_day = max(2, len(chosen) // 150)
    working = chosen[people.columns["employment"][chosen] == 0]
    out = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        for index in rng.choice(working, size=per_day, replace=False):
            out.append(LifeEvent(day, "job-loss", int(index), {"employment": "unemployed", "unemployed_months": 0}))
        for index in rng.choice(chosen, size=per_day, replace=False):
            out.append(LifeEvent(day, "disability", int(index), {"disability_level": int(rng.integers(1, 3))}))
        for index in rng.choice(chosen, size=per_day, replace=False):
            out.append(LifeEvent(day, "birth", int(index), {"children_under_3": 1}))
    return out


def _zone() -> Any:
    from cityos.core.messages import city_zone

    return city_zone()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def single_event(url: str, repeats: int) -> dict[str, Any]:
    """Median time of one record → re-evaluation → payout and notice committed, against the record alone."""
    from cityos.core.db import write_transaction
    from cityos.livelihood.profiles.service import parse_record

    os.environ["CITYOS_LIVELIHOOD_INTERVAL_SECONDS"] = "0"
    app = await _app(url)
    async with app.router.lifespan_context(app):
        svc = app.state.livelihood
        at = datetime.now(UTC)
        full: list[float] = []
        plain: list[float] = []
        for i in range(repeats):
            await svc.publish(None, "", _body(f"S{i}", "public-security", "household",
                                              {"birth_date": "1990-01-01", "hukou": "local"}, at, user_id=f"s{i}"),
                              _allow)
            # The life event: a disability certificate makes two subsidies due (one 免申即享 payout, a notice).
            body = _body(f"S{i}", "disabled-persons", "certificate", {"disability_level": 1}, at)
            t0 = time.perf_counter()
            result = await svc.publish(None, "", body, _allow)
            full.append(time.perf_counter() - t0)
            assert result["payouts"] >= 1 and result["notified"] >= 1, result
            # Baseline: the same kind of record stored without re-evaluation or notice.
            rec = parse_record(_body(f"S{i}", "disabled-persons", "certificate", {"disability_level": 2}, at))
            t0 = time.perf_counter()
            async with write_transaction(svc.engine, svc._lock) as conn:
                await svc.store.publish(conn, "", rec)
            plain.append(time.perf_counter() - t0)
    med, base = statistics.median(full), statistics.median(plain)
    return {"single_event_median_ms": round(med * 1000, 1), "single_event_p90_ms":
            round(float(np.percentile(full, 90)) * 1000, 1), "record_only_median_ms": round(base * 1000, 1),
            "single_event_ratio_to_record_only": round(med / base, 2), "single_event_target_ms": 1000}


async def care_part(url: str, falls: int) -> dict[str, Any]:
    """Falls walk the real escalation chain on a moved clock; simulated people answer (or not).

    Each step's person answers with a probability and after a delay drawn per role (family 70 % within
    a lognormal of median 2 min; community doctor 80 %, median 3 min; community worker 90 %, median
    4 min); the platform calls the next step when a deadline (5, 5, 10 min) passes. The sweep runs every
    15 simulated seconds, as the schedule would. Measured: fall → first acknowledged contact."""
    from cityos.core import clock

    os.environ["CITYOS_LIVELIHOOD_INTERVAL_SECONDS"] = "0"
    # Falls only: the simulated hours between falls must not raise inactivity alerts for earlier people.
    os.environ["CITYOS_CARE_INACTIVITY_HOURS"] = "100000"
    app = await _app(url)
    now = [datetime(2026, 12, 5, 2, 0, tzinfo=UTC)]
    clock.set_clock(lambda: now[0])
    rng = np.random.default_rng(17)
    answer = {"family": (0.7, 120.0), "doctor": (0.8, 180.0), "worker": (0.9, 240.0)}
    chain = [{"role": "family", "userId": "fam", "ackMinutes": 5}, {"role": "doctor", "userId": "doc", "ackMinutes": 5},
             {"role": "worker", "userId": "wrk", "ackMinutes": 10}, {"role": "emergency", "ackMinutes": 5}]
    waits: list[float] = []
    escalated_120 = 0
    try:
        async with app.router.lifespan_context(app):
            svc, care = app.state.livelihood, app.state.livelihood_care
            from cityos.security.policy import Principal

            for i in range(falls):
                await svc.publish(None, "", _body(f"E{i}", "public-security", "household",
                                                  {"birth_date": "1940-01-01", "hukou": "local"}, now[0]), _allow)
                await care.enrol(None, "", {"subject": f"E{i}", "devices": [f"wb{i}"], "chain": chain})
                fall_at = now[0]
                [alert_id] = (await care.reading("", {"device": f"wb{i}", "values": {"fallDetected": True}}))["alerts"]
                # When would each step's person answer, counted from the moment they are called?
                replies = {}
                for role, (p_answer, median) in answer.items():
                    if rng.random() < p_answer:
                        replies[role] = float(rng.lognormal(np.log(median), 0.6))
                acknowledged = None
                called_at = {"family": fall_at}
                while acknowledged is None and now[0] - fall_at < timedelta(minutes=40):
                    now[0] += timedelta(seconds=15)
                    for role, start in called_at.items():
                        delay = replies.get(role)
                        if delay is not None and (now[0] - start).total_seconds() >= delay:
                            user = next(s["userId"] for s in chain if s["role"] == role)
                            await care.acknowledge(Principal(user), "", alert_id, staff=False)
                            acknowledged = now[0]
                            break
                    if acknowledged is None and (await care.sweep())["escalated"]:
                        row = await care.alert("", alert_id)
                        for step in row.steps:
                            if step["role"] not in called_at and step["role"] in answer:
                                called_at[step["role"]] = now[0]
                        if row.status == "escalated-120":
                            escalated_120 += 1
                            acknowledged = now[0]  # 120 answers the call (the incident is opened)
                waits.append(((acknowledged or now[0]) - fall_at).total_seconds())
                now[0] += timedelta(hours=1)
    finally:
        clock.reset_clock()
    return {"care_falls": falls, "fall_to_contact_p50_s": round(float(np.percentile(waits, 50)), 1),
            "fall_to_contact_p90_s": round(float(np.percentile(waits, 90)), 1),
            "falls_reached_within_5_min_pct": round(100.0 * sum(w <= 300 for w in waits) / len(waits), 1),
            "falls_escalated_to_120": escalated_120}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--residents", type=int, default=1_000_000)
    parser.add_argument("--companies", type=int, default=5_000)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--db-population", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--falls", type=int, default=100)
    args = parser.parse_args()
    out: dict[str, Any] = {"bench": "livelihood"}
    out.update(sweep(args.residents, args.companies, args.sample))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CITYOS_DATA_DIR", tmp)
        out["backend"] = "sqlite"
        out.update(asyncio.run(single_event(migrated(f"sqlite:///{Path(tmp) / 'single.db'}"), args.repeats)))
        out.update(asyncio.run(care_part(migrated(f"sqlite:///{Path(tmp) / 'care.db'}"), args.falls)))
        out.update(asyncio.run(database_part(migrated(f"sqlite:///{Path(tmp) / 'sim.db'}"), args.days,
                                              args.db_population)))
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
