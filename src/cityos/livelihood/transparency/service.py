"""Spending transparency: departments publish their budget lines; anyone reads the totals per department and
year, the execution rate (spent ÷ budget), and the lines. Budgets are public data by law (预算公开)."""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select

from cityos.core import clock
from cityos.core.db import WritingService, dialect_insert
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.livelihood.transparency.models import budget_lines
from cityos.security.policy import Principal, Resource
from cityos.security.service import require_allowed

CODE = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
MAX_LINES = 500
MAX_AMOUNT = 1e13  # yuan: more than any city's whole budget
Publish = Callable[[str, list[dict[str, Any]]], Awaitable[None]]


def amount(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= MAX_AMOUNT:
        raise BadRequestData(f"{name} must be a number of yuan from 0 to {MAX_AMOUNT:.0e}")
    return float(value)


def parse_line(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequestData("each line must be an object {year, category, budget, spent}")
    year, category = item.get("year"), item.get("category")
    if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= 2100:
        raise BadRequestData("year must be a whole year from 2000 to 2100")
    if not isinstance(category, str) or not category.strip() or len(category) > 64:
        raise BadRequestData("category must be a non-empty text of at most 64 characters")
    return {"year": year, "category": category.strip(), "budget": amount(item.get("budget"), "budget"),
            "spent": amount(item.get("spent"), "spent")}


def execution_rate(budget: float, spent: float) -> float | None:
    return round(100.0 * spent / budget, 2) if budget else None


class TransparencyService(WritingService):
    def __init__(self, engine: Any, write_lock: Any, publish: Publish | None = None) -> None:
        super().__init__(engine, write_lock)
        self.publish = publish

    async def publish_lines(self, principal: Principal | None, tenant: str, department: str,
                            body: Any) -> dict[str, Any]:
        """A department publishes (or corrects) its lines; the totals go to the hub as `BudgetExecution`."""
        if not isinstance(department, str) or not CODE.match(department):
            raise BadRequestData("department must be a department code")
        require_allowed(principal, "transparency.publish", Resource("transparency", tenant, department=department))
        if not isinstance(body, list) or not 1 <= len(body) <= MAX_LINES:
            raise BadRequestData(f"the body must be a list of 1 to {MAX_LINES} budget lines")
        lines = [parse_line(item) for item in body]
        keys = [(line["year"], line["category"]) for line in lines]
        if len(set(keys)) != len(keys):
            raise BadRequestData("a (year, category) appears twice in the same publication")
        by = principal.username or principal.id if principal else "system"
        async with self._write() as conn:
            for line in lines:
                statement = dialect_insert(conn, budget_lines).values(
                    tenant=tenant, department=department, published_by=by, published_at=clock.now(), **line)
                await conn.execute(statement.on_conflict_do_update(
                    index_elements=["tenant", "department", "year", "category"],
                    set_={"budget": statement.excluded.budget, "spent": statement.excluded.spent,
                          "published_by": statement.excluded.published_by,
                          "published_at": statement.excluded.published_at}))
        years = sorted({line["year"] for line in lines})
        if self.publish is not None:
            totals = [t for t in await self.totals(None, tenant, None) if t["department"] == department
                      and t["year"] in years]
            await self.publish(tenant, [budget_entity(t) for t in totals])
        return {"department": department, "lines": len(lines), "years": years}

    async def totals(self, principal: Principal | None, tenant: str, year: int | None) -> list[dict[str, Any]]:
        """Budget, spending and execution rate per department and year (public)."""
        require_allowed(principal, "transparency.read", Resource("transparency", tenant))
        b = budget_lines
        query = select(b.c.department, b.c.year, func.sum(b.c.budget), func.sum(b.c.spent), func.count()) \
            .where(b.c.tenant == tenant).group_by(b.c.department, b.c.year)
        if year is not None:
            query = query.where(b.c.year == year)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(b.c.year.desc(), b.c.department))).all()
        return [{"department": dept, "year": yr, "budget": round(float(budget), 2), "spent": round(float(spent), 2),
                 "executionRate": execution_rate(float(budget), float(spent)), "lines": count}
                for dept, yr, budget, spent, count in rows]

    async def lines(self, principal: Principal | None, tenant: str, department: str,
                    year: int | None) -> list[dict[str, Any]]:
        require_allowed(principal, "transparency.read", Resource("transparency", tenant))
        b = budget_lines
        query = select(b).where(b.c.tenant == tenant, b.c.department == department)
        if year is not None:
            query = query.where(b.c.year == year)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(b.c.year.desc(), b.c.category))).all()
        if not rows:
            raise ResourceNotFound(f"no budget published by {department!r}" + (f" for {year}" if year else ""))
        return [{"year": r.year, "category": r.category, "budget": r.budget, "spent": r.spent,
                 "executionRate": execution_rate(r.budget, r.spent),
                 "published": clock.iso(clock.as_utc(r.published_at))} for r in rows]


def budget_entity(total: dict[str, Any]) -> dict[str, Any]:
    """One department-year as an NGSI-LD entity: the data catalogue lists the type as an open dataset."""
    def prop(value: Any) -> dict[str, Any]:
        return {"type": "Property", "value": value}
    return {"id": f"urn:ngsi-ld:BudgetExecution:{total['department']}:{total['year']}", "type": "BudgetExecution",
            "department": prop(total["department"]), "fiscalYear": prop(total["year"]),
            "budget": prop(total["budget"]), "spent": prop(total["spent"]),
            "executionRate": prop(total["executionRate"]), "currency": prop("CNY")}
