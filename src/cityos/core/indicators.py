"""The contract between the domains and the KPI engine (`cityos.evaluation`).

A domain measures its own indicators over its own tables and registers the functions in its
`indicators.py` (`SOURCES`); the app hands them to the evaluation domain, which never reads another
domain's tables. A source answers for one period with a `Measure`, or None when the period has no data
(then the indicator shows "no data", never a made-up value).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC, and the tenant measured."""

    start: datetime
    end: datetime
    tenant: str = ""


@dataclass(frozen=True)
class Measure:
    value: float
    samples: int  # how many records the value is computed from
    by_district: dict[str, float] = field(default_factory=dict)
    by_department: dict[str, float] = field(default_factory=dict)


IndicatorSource = Callable[[AsyncConnection, Period], Awaitable[Measure | None]]


def share(part: float, whole: float) -> float:
    """A percentage, 0 when there is nothing to divide (callers return None before that)."""
    return round(100.0 * part / whole, 2) if whole else 0.0
