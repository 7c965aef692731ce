"""Data quality (数据质量): rules written as data, checked with pandera; a score per dataset with history;
failing records quarantined with their reasons, reviewable and releasable, never silently dropped.

pandera because it validates a pandas frame in process with no server, no YAML project and no store of its
own (soda-core and Great Expectations bring both), and reports every failing row with the check that
failed (`lazy=True`), which is what a quarantine needs.

Rule kinds (a JSON list per check):
- {"rule": "iso8601", "field": f}: values are ISO 8601 date-times (the plans: other dates are invalid);
- {"rule": "range", "field": f, "min": a, "max": b};
- {"rule": "completeness", "max_missing": 0.2}: a record missing more than 20% of its values is flagged;
- {"rule": "unique", "field": f};
- {"rule": "reference", "attribute": "pm25", "tolerance": 5, "references": [entity ids]}: over each hour,
  a micro-station's mean differing from its nearest reference station's by more than ±tolerance is flagged
  (the plans' PM2.5 rule, ±5 µg/m³). Positions come from the readings dataset's entity dataset.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pandas as pd
import pandera.pandas as pa
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.data.catalogue import Catalogue
from cityos.data.datastore import desensitise
from cityos.data.models import datasets, quality_runs, quarantine, rows

ISO_8601 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$"
ACCURACY_TARGET = 99.5
MAX_ROWS = 200_000
RULES = ("iso8601", "range", "completeness", "unique", "reference")


def default_rules(ds: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [{"rule": "completeness", "max_missing": 0.2}]
    rules += [{"rule": "iso8601", "field": f["id"]} for f in ds["fields"] if f["type"] == "timestamp"]
    return rules


def check_rules(raw: Any, field_ids: set[str]) -> list[dict[str, Any]]:
    """Validate rule definitions (they are data a caller sends): a clear error for a bad one."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= 50:
        raise BadRequestData("rules must be a list of 1-50 rule objects")
    out = []
    for i, rule in enumerate(raw):
        if not isinstance(rule, dict) or rule.get("rule") not in RULES:
            raise BadRequestData(f"rule {i}: rule is one of {', '.join(RULES)}")
        kind = rule["rule"]
        if kind in ("iso8601", "range", "unique") and rule.get("field") not in field_ids:
            raise BadRequestData(f"rule {i}: field must be one of the dataset's fields")
        if kind == "range":
            low, high = rule.get("min"), rule.get("max")
            numbers = [float(v) for v in (low, high)
                       if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
            if len(numbers) != 2 or numbers[0] > numbers[1]:
                raise BadRequestData(f"rule {i}: range needs numbers min <= max")
        if kind == "completeness":
            share = rule.get("max_missing")
            if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
                raise BadRequestData(f"rule {i}: max_missing is a share from 0 to 1")
        if kind == "reference":
            refs = rule.get("references")
            tol = rule.get("tolerance")
            if not isinstance(rule.get("attribute"), str) or not isinstance(refs, list) or not refs \
                    or not all(isinstance(r, str) for r in refs) or not isinstance(tol, int | float) or tol < 0:
                raise BadRequestData(f"rule {i}: reference needs attribute, references (entity ids), tolerance >= 0")
            if not {"entityId", "attribute", "observedAt", "value"} <= field_ids:
                raise BadRequestData(f"rule {i}: reference applies to a readings dataset")
        out.append(dict(rule))
    return out


def _schema(rules: list[dict[str, Any]], columns: list[str]) -> pa.DataFrameSchema:
    by_column: dict[str, list[pa.Check]] = defaultdict(list)
    frame_checks: list[pa.Check] = []
    for rule in rules:
        kind = rule["rule"]
        if kind == "iso8601":
            by_column[rule["field"]].append(pa.Check(lambda s: s.astype(str).str.match(ISO_8601),
                                                     name=f"iso8601:{rule['field']}"))
        elif kind == "range":
            low, high = float(rule["min"]), float(rule["max"])
            by_column[rule["field"]].append(pa.Check(
                lambda s, low=low, high=high: pd.to_numeric(s, errors="coerce").between(low, high),
                name=f"range:{rule['field']}"))
        elif kind == "unique":
            by_column[rule["field"]].append(pa.Check(lambda s: ~s.duplicated(keep=False),
                                                     name=f"unique:{rule['field']}"))
        elif kind == "completeness":
            limit = float(rule["max_missing"])
            frame_checks.append(pa.Check(lambda df, limit=limit: df.isna().mean(axis=1) <= limit,
                                         name=f"completeness:{limit:g}"))
    schema_columns = {c: pa.Column(checks=by_column.get(c, []), nullable=True, required=False,
                                   coerce=False) for c in columns}
    return pa.DataFrameSchema(schema_columns, checks=frame_checks, strict=False)


def failures(frame: pd.DataFrame, rules: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Row position → the names of the checks it failed."""
    schema = _schema([r for r in rules if r["rule"] != "reference"], list(frame.columns))
    failed: dict[int, list[str]] = defaultdict(list)
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for _, case in cases.iterrows():
            index = case.get("index")
            if index is None or (isinstance(index, float) and math.isnan(index)):
                continue
            name = str(case.get("check"))
            if name not in failed[int(index)]:
                failed[int(index)].append(name)
    return failed


def reference_failures(frame: pd.DataFrame, rule: dict[str, Any], positions: dict[str, tuple[float, float]]
                       ) -> dict[int, list[str]]:
    """Hourly means of each micro-station against its nearest reference station's (±tolerance)."""
    readings = frame[frame["attribute"] == rule["attribute"]].copy()
    if readings.empty:
        return {}
    readings["hour"] = readings["observedAt"].astype(str).str.slice(0, 13)
    means = readings.groupby(["entityId", "hour"])["value"].mean()
    refs = [r for r in rule["references"] if r in positions]
    failed: dict[int, list[str]] = defaultdict(list)
    for (entity, hour), group in readings.groupby(["entityId", "hour"]):
        if entity in rule["references"] or entity not in positions or not refs:
            continue
        x, y = positions[entity]
        nearest = min(refs, key=lambda r: (positions[r][0] - x) ** 2 + (positions[r][1] - y) ** 2)
        reference = means.get((nearest, hour))
        if reference is None or abs(float(means[(entity, hour)]) - float(reference)) <= float(rule["tolerance"]):
            continue
        for index in group.index:
            failed[int(index)].append(f"reference:{rule['attribute']}±{rule['tolerance']:g} vs {nearest}")
    return failed


class Quality:
    def __init__(self, engine: AsyncEngine, catalogue: Catalogue) -> None:
        self.engine = engine
        self.catalogue = catalogue

    async def check(self, tenant: str, code: str, rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        ds = await self.catalogue.get(tenant, code)
        field_ids = {f["id"] for f in ds["fields"]}
        rules = check_rules(rules, field_ids) if rules is not None else default_rules(ds)
        history = ds["source_kind"] == "readings"
        version = 0 if history else await self.catalogue.version_as_of(tenant, code, None)
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(rows.c.key, rows.c.doc).where(
                rows.c.tenant == tenant, rows.c.dataset == code, rows.c.version == (version or 0))
                .order_by(rows.c.id).limit(MAX_ROWS))).all()
        docs = [dict(r.doc) for r in found]
        frame = pd.DataFrame(docs, columns=sorted(field_ids))
        failed = failures(frame, rules) if docs else {}
        for rule in rules:
            if rule["rule"] == "reference" and docs:
                positions = await self._positions(tenant, code)
                for index, names in reference_failures(frame, rule, positions).items():
                    failed.setdefault(index, []).extend(names)
        checked = len(docs)
        by_rule: dict[str, int] = defaultdict(int)
        for names in failed.values():
            for name in names:
                by_rule[name.split(" vs ")[0]] += 1
        score = round(100.0 * (checked - len(failed)) / checked, 3) if checked else 100.0
        now = clock.now()
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            await conn.execute(insert(quality_runs).values(tenant=tenant, dataset=code, at=now, checked=checked,
                                                           failed=len(failed), score=score,
                                                           by_rule={"rules": rules, "failed": dict(by_rule)}))
            await conn.execute(update(datasets).where(datasets.c.tenant == tenant, datasets.c.id == code)
                               .values(quality_score=score))
            held = [{"tenant": tenant, "dataset": code, "row_key": found[i].key, "doc": docs[i],
                     "rules": names, "status": "held", "created_at": now} for i, names in sorted(failed.items())]
            for start in range(0, len(held), 1000):
                await conn.execute(insert(quarantine), held[start:start + 1000])
        self.catalogue.changed(tenant)  # the quality score is in the catalogue (search index)
        lineage = getattr(self.catalogue, "lineage", None)
        if lineage is not None:
            await lineage.emit(tenant, "cityos.data.quality", [("catalogue", code)], [("quality", code)])
        return {"dataset": code, "checked": checked, "failed": len(failed), "score": score,
                "accuracyTarget": ACCURACY_TARGET, "targetMet": score >= ACCURACY_TARGET,
                "byRule": dict(by_rule), "rules": rules}

    async def _positions(self, tenant: str, code: str) -> dict[str, tuple[float, float]]:
        """Station positions from the entity dataset the readings dataset derives from."""
        entity_code = "hub-" + code.split("-")[1] if code.startswith("readings-") else ""
        try:
            version = await self.catalogue.version_as_of(tenant, entity_code, None)
        except ResourceNotFound:
            return {}
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(rows.c.key, rows.c.doc).where(
                rows.c.tenant == tenant, rows.c.dataset == entity_code, rows.c.version == (version or 0)))).all()
        out = {}
        for key, doc in found:
            loc = (doc or {}).get("location")
            if isinstance(loc, dict) and loc.get("type") == "Point":
                out[key] = (float(loc["coordinates"][0]), float(loc["coordinates"][1]))
        return out

    async def report(self, tenant: str, code: str) -> dict[str, Any]:
        ds = await self.catalogue.get(tenant, code)
        # Quarantined records follow the data classes like any other read: sensitive values masked,
        # confidential ones left out (the reviewer judges the failed rules, not the person).
        classes = {f["id"]: f["class"] for f in ds["fields"]}
        async with self.engine.connect() as conn:
            runs = (await conn.execute(select(quality_runs).where(
                quality_runs.c.tenant == tenant, quality_runs.c.dataset == code)
                .order_by(quality_runs.c.at.desc()).limit(60))).all()
            held = (await conn.execute(select(quarantine).where(
                quarantine.c.tenant == tenant, quarantine.c.dataset == code)
                .order_by(quarantine.c.id).limit(500))).all()
        history = [{"at": clock.iso(clock.as_utc(r.at)), "checked": r.checked, "failed": r.failed,
                    "score": r.score, "byRule": r.by_rule.get("failed", {})} for r in runs]
        trend = round(history[0]["score"] - history[1]["score"], 3) if len(history) > 1 else None
        return {"dataset": code, "latest": history[0] if history else None, "history": history, "trend": trend,
                "accuracyTarget": ACCURACY_TARGET,
                "quarantine": [{"id": q.id, "rowKey": q.row_key,
                                "record": desensitise([dict(q.doc)], classes, frozenset({"internal"}))[0],
                                "reasons": q.rules,
                                "status": q.status, "reviewedBy": q.reviewed_by} for q in held]}

    async def release(self, tenant: str, item_id: int, reviewer: str) -> dict[str, Any]:
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            done = await conn.execute(update(quarantine).where(
                quarantine.c.tenant == tenant, quarantine.c.id == item_id, quarantine.c.status == "held")
                .values(status="released", reviewed_by=reviewer, reviewed_at=clock.now()))
        if done.rowcount != 1:
            raise Conflict(f"no held quarantined record {item_id}")
        return {"id": item_id, "status": "released", "reviewedBy": reviewer}
