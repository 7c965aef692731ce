"""Tables and schemas of the KPI engine (运营评估).

- `eval_values`: one computed value per indicator, period and scope (the city, a district or a
  department), kept as history; a recomputation of the same period replaces its row.
- `eval_assessments`: the mystery-shopper (神秘人暗访) checks: 28 items answered per visit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, StrictBool
from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

values = Table(
    "eval_values",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("indicator", String(128), nullable=False),
    Column("period_kind", String(16), nullable=False),  # day | week | month | quarter
    Column("period_start", Timestamp, nullable=False),
    Column("period_end", Timestamp, nullable=False),
    Column("scope_kind", String(16), nullable=False),  # city | district | department
    Column("scope_id", String(128), nullable=False),
    Column("value", Float, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("status", String(8), nullable=False),  # green | yellow | red | info
    Column("score", Float, nullable=True),
    Column("computed_at", Timestamp, nullable=False),
    Index("ux_eval_values_key", "tenant", "indicator", "period_kind", "period_start", "scope_kind", "scope_id",
          unique=True),
)

assessments = Table(
    "eval_assessments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("site", String(256), nullable=False),
    Column("assessor", String(256), nullable=False),
    Column("visited_at", Timestamp, nullable=False),
    Column("answers", JsonDoc, nullable=False),
    Column("score", Float, nullable=False),
    Column("note", Text, nullable=True),
    Index("ix_eval_assessments_time", "tenant", "visited_at"),
)

TABLES = (values, assessments)

PERIOD_KINDS = ("day", "week", "month", "quarter")
BANDS = ((85.0, "mature", "成熟期"), (70.0, "growth", "成长期"), (55.0, "start-up", "起步期"),
         (0.0, "preparation", "准备期"))


@dataclass(frozen=True)
class Indicator:
    id: str
    zh: str
    en: str
    category: str
    unit: str
    direction: str  # higher | lower
    radar: bool
    owner: str
    plan: str
    target: float | None = None
    yellow: float | None = None

    def status(self, value: float) -> str:
        if self.target is None:
            return "info"
        better = value >= self.target if self.direction == "higher" else value <= self.target
        if better:
            return "green"
        if self.yellow is not None and (value >= self.yellow if self.direction == "higher" else value <= self.yellow):
            return "yellow"
        return "red"

    def score(self, value: float) -> float | None:
        """0–100: 100 when the target is met, else the distance to it as a proportion."""
        if self.target is None:
            return None
        if self.status(value) == "green":
            return 100.0
        if self.direction == "higher":
            return round(max(0.0, 100.0 * value / self.target), 1) if self.target else 0.0
        return round(max(0.0, min(100.0, 100.0 * self.target / value)), 1) if value > 0 else 100.0


@dataclass(frozen=True)
class Category:
    id: str
    zh: str
    en: str
    weight: float
    indicators: list[Indicator] = field(default_factory=list)


class AssessmentIn(BaseModel):
    """A mystery-shopper visit: the 28 items, each passed (true) or failed (false)."""

    site: str = Field(min_length=1, max_length=256)
    visited_at: str = Field(min_length=10, max_length=40)
    answers: dict[str, StrictBool]
    note: str | None = Field(default=None, max_length=4000)


def band_of(score: float) -> tuple[str, str]:
    for floor, en, zh in BANDS:
        if score >= floor:
            return en, zh
    return BANDS[-1][1], BANDS[-1][2]


def to_json(row: Any) -> dict[str, Any]:
    return dict(row)
