"""Bulk loading of a synthetic population (the demo's 100,000 residents) and its first sweep.

Departments' initial shares arrive as one bulk record per department (the provenance of every fact);
facts are inserted in batches, sensitive and confidential ones sealed as in `ProfileStore`. The first
eligibility sweep is vectorised over the same columns and writes decisions and 免申即享 payout records
in batches; people without an account get no notice (they are counted as not reached).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson

from cityos.core import clock
from cityos.livelihood import models as m
from cityos.livelihood.policies.engine import Population, evaluate, explain, row_of
from cityos.livelihood.proactive.service import ProactiveService, insert_ignore, local_day
from cityos.livelihood.profiles.fields import fields_of
from cityos.livelihood.profiles.service import PURPOSES, SEALED_CLASSES

BATCH = 1000  # rows a transaction: short holds of SQLite's write lock while devices report


async def load_population(service: ProactiveService, tenant: str, synthetic: Any, prefix: str,
                          districts: list[str] | None = None) -> dict[str, int]:
    """Insert `synthetic` as subjects `<prefix><index>` with their facts; then sweep them once."""
    now = clock.now()
    specs = fields_of(synthetic.kind)
    records = {dept: uuid.uuid4().hex for dept in sorted({s.authority for s in specs.values()})}
    keyring = service.store.keyring
    async with service.write() as conn:
        for dept, record_id in records.items():
            await conn.execute(m.records.insert().values(
                id=record_id, tenant=tenant, subject_id="*", department=dept, dataset="bulk-share",
                purposes=list(PURPOSES), consent={"basis": "law", "reference": "initial share"}, observed_at=now,
                received_at=now, clear={"subjects": synthetic.size}, sealed=None, flags=[]))
    facts = 0
    for start in range(0, synthetic.size, BATCH):
        subjects: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for index in range(start, min(start + BATCH, synthetic.size)):
            sid = f"{prefix}{index}"
            subjects.append({"tenant": tenant, "id": sid, "kind": synthetic.kind, "user_id": None,
                             "district": districts[index % len(districts)] if districts else None, "created_at": now})
            for name, value in row_of(synthetic.kind, synthetic.columns, synthetic.known, index).items():
                if value is None:
                    continue
                spec = specs[name]
                sealed = spec.data_class in SEALED_CLASSES
                rows.append({"tenant": tenant, "subject_id": sid, "field": name,
                             "value": None if sealed else {"v": value},
                             "sealed": keyring.encrypt(orjson.dumps(value).decode(), aad=sid.encode()) if sealed
                             else None, "department": spec.authority, "record_id": records[spec.authority],
                             "observed_at": now, "purposes": list(PURPOSES)})
        async with service.write() as conn:
            await conn.execute(m.subjects.insert(), subjects)
            await conn.execute(m.facts.insert(), rows)
        facts += len(rows)
    swept = await sweep_population(service, tenant, synthetic, prefix, now, records)
    return {"subjects": synthetic.size, "facts": facts, **swept}


async def sweep_population(service: ProactiveService, tenant: str, synthetic: Any, prefix: str,
                           event_at: datetime, records: dict[str, str] | None = None) -> dict[str, int]:
    """The vectorised sweep of a loaded population: decisions and payout records in batches."""
    now = clock.now()
    on = local_day(now)
    catalogue = [p for p in await service.catalogue(tenant) if p.audience == synthetic.kind]
    specs = fields_of(synthetic.kind)
    pop = Population(synthetic.kind, synthetic.size, on, synthetic.columns, synthetic.known)
    masks = evaluate(catalogue, pop)
    decisions = payouts = 0
    for policy in catalogue:
        eligible = masks[policy.id].nonzero()[0]
        period = policy.period_key(on)
        status = "granted" if policy.mode == "automatic" else "eligible"
        pay = policy.mode == "automatic" and policy.amount > 0
        for start in range(0, len(eligible), BATCH):
            chunk = eligible[start:start + BATCH]
            async with service.write() as conn:
                for index in chunk:
                    sid = f"{prefix}{int(index)}"
                    one = pop.row(int(index))
                    why = explain(policy, one, 0, {k: v[int(index):int(index) + 1] for k, v in masks.items()})
                    for item in why:
                        spec = specs.get(item.get("source", ""))
                        if spec is not None:  # the bulk share of the field's department, of the load's date
                            item.update(department=spec.authority, observedAt=event_at.isoformat(),
                                        record=(records or {}).get(spec.authority))
                    done = await conn.execute(insert_ignore(conn, m.decisions, {
                        "tenant": tenant, "subject_id": sid, "policy_id": policy.id, "period": period,
                        "policy_version": policy.version, "eligible": True, "explanation": why, "status": status,
                        "event_at": event_at, "evaluated_at": now, "notified_at": None, "confirmed_at": None,
                        "application": None}))
                    decisions += done.rowcount
                    if pay and done.rowcount == 1:
                        await conn.execute(insert_ignore(conn, m.payouts, {
                            "id": uuid.uuid4().hex, "tenant": tenant, "subject_id": sid, "policy_id": policy.id,
                            "period": period, "policy_version": policy.version, "amount": policy.amount,
                            "department": policy.department, "status": "objection-window", "eligible_at": event_at,
                            "created_at": now,
                            "objection_until": now + timedelta(days=service.settings.objection_days),
                            "needs_approval": policy.amount > service.settings.approval_threshold,
                            "approved_by": None, "paid_at": None, "note": None}))
                        payouts += 1
    return {"decisions": decisions, "payouts": payouts}
