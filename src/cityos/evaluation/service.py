"""The KPI engine (指标体系), the risk radar (风险雷达) and the maturity score (成熟度).

Indicators are data (`indicators.yaml`). Each is computed by the source its domain registered
(`cityos.core.indicators`), per period, for the city and for the districts or departments the source
breaks it down by, and stored with its status and score as history. An indicator nobody measures yet
is reported as "no data source yet", and a period without data as "no data": neither is ever scored,
so the maturity score says on how many indicators it rests.

The latest city value of every scored indicator is published to the hub as a Smart Data Models
`KeyPerformanceIndicator` entity, so the rules engine (an alarm when one turns red), the cockpit and
integrators see them without reading this domain's tables.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import yaml
from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.indicators import IndicatorSource, Measure, Period
from cityos.core.messages import city_zone
from cityos.evaluation.models import (
    PERIOD_KINDS,
    AssessmentIn,
    Category,
    Indicator,
    assessments,
    band_of,
    values,
)

log = logging.getLogger(__name__)
CITY = ("city", "")
STATUS_LEVEL = {"green": 0, "yellow": 1, "red": 2}
MYSTERY_SHOPPER = "evaluation.mystery_shopper_score"
PROVISIONAL_BELOW = 2 / 3


class EvaluationError(ValueError):
    """Bad input to the engine (an unknown indicator or period, an invalid assessment)."""


@cache
def catalogue() -> tuple[dict[str, Category], dict[str, Indicator]]:
    doc = yaml.safe_load(resources.files("cityos.evaluation").joinpath("indicators.yaml").read_text("utf-8"))
    categories = {cid: Category(cid, c["zh"], c["en"], float(c["weight"])) for cid, c in doc["categories"].items()}
    indicators: dict[str, Indicator] = {}
    for spec in doc["indicators"]:
        indicator = Indicator(id=spec["id"], zh=spec["zh"], en=spec["en"], category=spec["category"],
                              unit=str(spec["unit"]), direction=spec["direction"], radar=bool(spec["radar"]),
                              owner=spec["owner"], plan=spec["plan"],
                              target=None if spec.get("target") is None else float(spec["target"]),
                              yellow=None if spec.get("yellow") is None else float(spec["yellow"]))
        if indicator.category not in categories or indicator.id in indicators:
            raise EvaluationError(f"indicator {indicator.id}: unknown category or duplicate id")
        indicators[indicator.id] = indicator
        categories[indicator.category].indicators.append(indicator)
    return categories, indicators


@cache
def mystery_items() -> tuple[tuple[str, str, str], ...]:
    doc = yaml.safe_load(resources.files("cityos.evaluation").joinpath("mystery_shopper.yaml").read_text("utf-8"))
    return tuple((item["id"], item["zh"], item["en"]) for item in doc["items"])


def period_bounds(kind: str, moment: datetime) -> tuple[datetime, datetime]:
    """The calendar period of `kind` holding `moment`, in the city's time zone, as UTC instants."""
    if kind not in PERIOD_KINDS:
        raise EvaluationError(f"period must be one of {', '.join(PERIOD_KINDS)}")
    local = moment.astimezone(city_zone())
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        start, end = day, day + timedelta(days=1)
    elif kind == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif kind == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        start = day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
        end = (start + timedelta(days=95)).replace(day=1)
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass
class Computed:
    indicator: Indicator
    measure: Measure | None
    has_source: bool


# Publishes a KPI as a hub entity (the app wires it to the hub service's batch upsert).
Publisher = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


class EvaluationService:
    def __init__(self, engine: AsyncEngine, sources: Mapping[str, IndicatorSource],
                 publish: Publisher | None = None) -> None:
        self.engine = engine
        self.sources: dict[str, IndicatorSource] = dict(sources)
        self.sources[MYSTERY_SHOPPER] = self._mystery_score
        self.publish = publish

    # ------------------------------------------------------------------ computing

    async def compute(self, tenant: str, kind: str, moment: datetime | None = None) -> dict[str, Any]:
        """Compute every indicator for the period of `kind` holding `moment` (default: now) and store it."""
        start, end = period_bounds(kind, moment or clock.now())
        period = Period(start, end, tenant)
        _categories, indicators = catalogue()
        results: list[Computed] = []
        async with self.engine.connect() as conn:
            for indicator in indicators.values():
                source = self.sources.get(indicator.id)
                measure = None
                if source is not None:
                    try:
                        measure = await source(conn, period)
                    except Exception:  # one broken source must not stop the others; it shows as "no data"
                        log.exception("indicator %s failed", indicator.id)
                        await conn.rollback()
                results.append(Computed(indicator, measure, source is not None))
        now = clock.now()
        rows = [row for c in results if c.measure is not None for row in self._rows(c, tenant, kind, start, end, now)]
        async with self.engine.begin() as conn:
            await conn.execute(delete(values).where(values.c.tenant == tenant, values.c.period_kind == kind,
                                                    values.c.period_start == start))
            if rows:
                await conn.execute(values.insert(), rows)
        if self.publish is not None:
            await self.publish(tenant, [self._entity(c, kind, start, end) for c in results
                                        if c.measure is not None and c.indicator.target is not None])
        return {"period": {"kind": kind, "start": start.isoformat(), "end": end.isoformat()},
                "computed": sum(1 for c in results if c.measure is not None),
                "noData": [c.indicator.id for c in results if c.has_source and c.measure is None],
                "noSource": [c.indicator.id for c in results if not c.has_source]}

    def _rows(self, computed: Computed, tenant: str, kind: str, start: datetime, end: datetime,
              now: datetime) -> list[dict[str, Any]]:
        measure, indicator = computed.measure, computed.indicator
        assert measure is not None
        scopes = [(CITY, measure.value)]
        scopes += [(("district", d), v) for d, v in measure.by_district.items()]
        scopes += [(("department", d), v) for d, v in measure.by_department.items()]
        return [{"tenant": tenant, "indicator": indicator.id, "period_kind": kind, "period_start": start,
                 "period_end": end, "scope_kind": scope[0], "scope_id": scope[1][:128], "value": float(value),
                 "samples": measure.samples if scope == CITY else 0, "status": indicator.status(value),
                 "score": indicator.score(value), "computed_at": now}
                for scope, value in scopes]

    @staticmethod
    def _entity(computed: Computed, kind: str, start: datetime, end: datetime) -> dict[str, Any]:
        indicator, measure = computed.indicator, computed.measure
        assert measure is not None
        status = indicator.status(measure.value)
        return {
            "id": f"urn:ngsi-ld:KeyPerformanceIndicator:{indicator.id}:{kind}", "type": "KeyPerformanceIndicator",
            "name": {"type": "Property", "value": f"{indicator.zh} {indicator.en}"},
            "category": {"type": "Property", "value": [indicator.category]},
            "kpiValue": {"type": "Property", "value": measure.value, "unitCode": indicator.unit},
            "kpiTarget": {"type": "Property", "value": indicator.target},
            "kpiStatus": {"type": "Property", "value": status},
            # numeric, so the rules engine's threshold rules can raise an alarm when one turns red
            "kpiStatusLevel": {"type": "Property", "value": STATUS_LEVEL[status]},
            "calculationFrequency": {"type": "Property", "value": {"day": "daily", "week": "weekly",
                                                                   "month": "monthly", "quarter": "quarterly"}[kind]},
            "calculationPeriod": {"type": "Property", "value": {"from": start.isoformat(), "to": end.isoformat()}},
            "organization": {"type": "Property", "value": indicator.owner},
            "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": end.isoformat()}}}

    # ------------------------------------------------------------------ reading

    async def latest(self, tenant: str, kind: str, scope_kind: str = "city", scope_id: str = "",
                     period_start: datetime | None = None) -> dict[str, Any]:
        """Every indicator with its latest value of this period kind and scope (or why it has none);
        with `period_start`, its value of that one period (a closed period's report)."""
        _categories, indicators = catalogue()
        mine = [values.c.tenant == tenant, values.c.period_kind == kind, values.c.scope_kind == scope_kind,
                values.c.scope_id == scope_id]
        async with self.engine.connect() as conn:
            if period_start is not None:
                rows = (await conn.execute(select(values).where(*mine, values.c.period_start == period_start))
                        ).mappings().all()
            else:
                newest = (select(values.c.indicator, func.max(values.c.period_start).label("start"))
                          .where(*mine).group_by(values.c.indicator).subquery())
                rows = (await conn.execute(select(values).join(newest, and_(
                    values.c.indicator == newest.c.indicator, values.c.period_start == newest.c.start))
                    .where(*mine))).mappings().all()
        found: dict[str, Mapping[str, Any]] = {row["indicator"]: dict(row) for row in rows}
        return {"periodKind": kind, "scope": {"kind": scope_kind, "id": scope_id},
                "indicators": [self._describe(ind, found.get(ind.id)) for ind in indicators.values()]}

    def _describe(self, indicator: Indicator, row: Mapping[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": indicator.id, "name": {"zh": indicator.zh, "en": indicator.en},
                               "category": indicator.category, "unit": indicator.unit, "target": indicator.target,
                               "direction": indicator.direction, "radar": indicator.radar, "owner": indicator.owner,
                               "plan": indicator.plan}
        if indicator.id not in self.sources:
            out.update(status="no_source", value=None)
        elif row is None:
            out.update(status="no_data", value=None)
        else:
            out.update(status=row["status"], value=row["value"], score=row["score"], samples=row["samples"],
                       period={"start": clock.as_utc(row["period_start"]).isoformat(),
                               "end": clock.as_utc(row["period_end"]).isoformat()})
        return out

    async def history(self, tenant: str, indicator_id: str, kind: str, limit: int = 12,
                      scope_kind: str = "city", scope_id: str = "") -> dict[str, Any]:
        _categories, indicators = catalogue()
        if indicator_id not in indicators:
            raise LookupError(indicator_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(values).where(
                values.c.tenant == tenant, values.c.indicator == indicator_id, values.c.period_kind == kind,
                values.c.scope_kind == scope_kind, values.c.scope_id == scope_id)
                .order_by(values.c.period_start.desc()).limit(limit))).mappings().all()
        return {"indicator": indicator_id, "periodKind": kind,
                "points": [{"start": clock.as_utc(r["period_start"]).isoformat(),
                            # the period's first day as the city names it (a month starts at local midnight)
                            "label": clock.as_utc(r["period_start"]).astimezone(city_zone()).date().isoformat(),
                            "value": r["value"], "status": r["status"]} for r in reversed(rows)]}

    async def breakdown(self, tenant: str, indicator_id: str, kind: str) -> dict[str, Any]:
        """The latest period's values per district and department (the drill-down)."""
        _categories, indicators = catalogue()
        if indicator_id not in indicators:
            raise LookupError(indicator_id)
        async with self.engine.connect() as conn:
            start = (await conn.execute(select(func.max(values.c.period_start)).where(
                values.c.tenant == tenant, values.c.indicator == indicator_id,
                values.c.period_kind == kind))).scalar()
            if start is None:
                return {"indicator": indicator_id, "periodKind": kind, "district": [], "department": []}
            rows = (await conn.execute(select(values).where(
                values.c.tenant == tenant, values.c.indicator == indicator_id, values.c.period_kind == kind,
                values.c.period_start == start, values.c.scope_kind != "city")
                .order_by(values.c.value))).mappings().all()
        out: dict[str, Any] = {"indicator": indicator_id, "periodKind": kind, "district": [], "department": []}
        for row in rows:
            out[row["scope_kind"]].append({"id": row["scope_id"], "value": row["value"], "status": row["status"]})
        return out

    async def radar(self, tenant: str, kind: str, period_start: datetime | None = None) -> dict[str, Any]:
        """The 32 radar indicators by category, each category scored over the indicators that have data."""
        categories, _indicators = catalogue()
        latest = {i["id"]: i for i in (await self.latest(tenant, kind, period_start=period_start))["indicators"]}
        out = []
        for category in categories.values():
            members = [latest[i.id] for i in category.indicators if i.radar]
            scored = [m["score"] for m in members if m.get("score") is not None]
            out.append({"id": category.id, "name": {"zh": category.zh, "en": category.en},
                        "weight": category.weight, "score": round(sum(scored) / len(scored), 1) if scored else None,
                        "measured": len(scored), "indicators": members,
                        "red": [m["id"] for m in members if m["status"] == "red"]})
        return {"periodKind": kind, "categories": out,
                "radarIndicators": sum(1 for c in categories.values() for i in c.indicators if i.radar)}

    async def maturity(self, tenant: str, kind: str = "month", period_start: datetime | None = None) -> dict[str, Any]:
        """Total score (weights per category over the categories with data), band, coverage, and what moved."""
        radar = await self.radar(tenant, kind, period_start)
        scored = [c for c in radar["categories"] if c["score"] is not None]
        weight = sum(c["weight"] for c in scored)
        total = round(sum(c["score"] * c["weight"] for c in scored) / weight, 1) if weight else None
        band = band_of(total) if total is not None else None
        measured = sum(c["measured"] for c in radar["categories"])
        return {"periodKind": kind, "score": total,
                # resting on fewer than two thirds of the radar, the score is provisional, and says so
                "provisional": measured < PROVISIONAL_BELOW * radar["radarIndicators"],
                "band": {"en": band[0], "zh": band[1]} if band else None,
                "coverage": {"measured": measured, "radarIndicators": radar["radarIndicators"],
                             "categoriesWithData": len(scored), "categories": len(radar["categories"])},
                "categories": [{k: c[k] for k in ("id", "name", "weight", "score", "measured")}
                               for c in radar["categories"]],
                "moved": await self._moved(tenant, kind) if period_start is None else []}

    async def _moved(self, tenant: str, kind: str) -> list[dict[str, Any]]:
        """Indicators whose city score changed between the last two computed periods, largest first."""
        async with self.engine.connect() as conn:
            starts = [r[0] for r in (await conn.execute(
                select(values.c.period_start).where(values.c.tenant == tenant, values.c.period_kind == kind,
                                                    values.c.scope_kind == "city")
                .group_by(values.c.period_start).order_by(values.c.period_start.desc()).limit(2))).all()]
            if len(starts) < 2:
                return []
            rows = (await conn.execute(select(values.c.indicator, values.c.period_start, values.c.score).where(
                values.c.tenant == tenant, values.c.period_kind == kind, values.c.scope_kind == "city",
                values.c.period_start.in_(starts), values.c.score.is_not(None)))).all()
        scores: dict[str, dict[Any, float]] = {}
        for indicator, start, score in rows:
            scores.setdefault(indicator, {})[clock.as_utc(start)] = score
        now_start, before_start = clock.as_utc(starts[0]), clock.as_utc(starts[1])
        moved = [{"indicator": i, "before": s[before_start], "now": s[now_start],
                  "change": round(s[now_start] - s[before_start], 1)}
                 for i, s in scores.items() if now_start in s and before_start in s and s[now_start] != s[before_start]]
        return sorted(moved, key=lambda m: -abs(m["change"]))

    # ------------------------------------------------------------------ mystery shopper

    async def add_assessment(self, tenant: str, assessor: str, body: AssessmentIn) -> dict[str, Any]:
        items = {item[0] for item in mystery_items()}
        unknown, missing = set(body.answers) - items, items - set(body.answers)
        if unknown or missing:
            raise EvaluationError(f"answers must cover exactly the {len(items)} items; "
                                  f"unknown: {sorted(unknown)[:5]}, missing: {sorted(missing)[:5]}")
        try:
            visited = datetime.fromisoformat(body.visited_at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise EvaluationError("visitedAt must be an ISO 8601 date-time") from exc
        if visited.tzinfo is None:
            raise EvaluationError("visitedAt needs a time zone offset")
        if visited > clock.now() + timedelta(minutes=5):
            raise EvaluationError("visitedAt is in the future")
        score = round(100.0 * sum(body.answers.values()) / len(items), 1)
        visited_utc = visited.astimezone(UTC)
        row = {"id": uuid.uuid4().hex, "tenant": tenant, "site": body.site, "assessor": assessor,
               "visited_at": visited_utc, "answers": body.answers, "score": score, "note": body.note}
        async with self.engine.begin() as conn:
            await conn.execute(assessments.insert().values(**row))
        return {"id": row["id"], "site": body.site, "score": score, "visitedAt": visited_utc.isoformat(),
                "failed": sorted(k for k, v in body.answers.items() if not v)}

    async def _mystery_score(self, conn: AsyncConnection, period: Period) -> Measure | None:
        rows = (await conn.execute(select(assessments.c.site, assessments.c.score).where(
            assessments.c.tenant == period.tenant, assessments.c.visited_at >= period.start,
            assessments.c.visited_at < period.end))).all()
        if not rows:
            return None
        return Measure(round(sum(r.score for r in rows) / len(rows), 1), len(rows))
