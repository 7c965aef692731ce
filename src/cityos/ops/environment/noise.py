"""Environmental noise against GB 3096-2008 (声环境质量标准) Table 1. Pure, no I/O.

Zone classes (声环境功能区): 0 (convalescence), 1 (residential, schools, hospitals), 2 (mixed),
3 (industrial), 4a (either side of roads and waterways), 4b (either side of railway trunk lines).
Day (昼间) is 06:00-22:00 local time, night (夜间) 22:00-06:00. The limit applies to the
equivalent continuous A-weighted level Leq of the period; the exceedance is Leq minus the limit
in dB (0 when within). At night a single event's maximum level (LAmax) may exceed the night
limit by at most 15 dB (§5.4, 突发噪声).

Levels combine by energy, never arithmetically: Leq = 10·lg(mean(10^(L/10))).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

ZONE_CLASSES = ("0", "1", "2", "3", "4a", "4b")
# Table 1: (day, night) limits in dB(A).
LIMITS: dict[str, tuple[float, float]] = {
    "0": (50, 40), "1": (55, 45), "2": (60, 50), "3": (65, 55), "4a": (70, 55), "4b": (70, 60),
}
NIGHT_MAX_MARGIN = 15.0  # dB above the night limit that an event's LAmax may reach
DAY_START_HOUR, NIGHT_START_HOUR = 6, 22


def zone_class(raw: object) -> str:
    text = str(raw).strip().lower().removesuffix("类")
    if text == "4":
        text = "4a"
    if text not in LIMITS:
        raise ValueError(f"{raw!r} is not a GB 3096-2008 zone class (0, 1, 2, 3, 4a, 4b)")
    return text


def period_of(local: datetime) -> str:
    """"day" (06:00-22:00) or "night" for a local wall-clock time."""
    return "day" if DAY_START_HOUR <= local.hour < NIGHT_START_HOUR else "night"


def limit(zone: str, period: str) -> float:
    day, night = LIMITS[zone_class(zone)]
    return day if period == "day" else night


def check_level(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < 0 or value > 200:
        raise ValueError(f"{name} must be a sound level between 0 and 200 dB, got {value}")
    return float(value)


def leq(levels: Iterable[float]) -> float | None:
    """Energy mean of equal-duration levels, in dB (None for no levels)."""
    values = [check_level("level", v) for v in levels]
    if not values:
        return None
    return 10 * math.log10(sum(10 ** (v / 10) for v in values) / len(values))


@dataclass
class NoiseResult:
    zone: str
    period: str
    limit: float
    leq: float
    exceedance: float  # dB over the limit, 0 when within; one decimal
    lamax: float | None = None
    lamax_limit: float | None = None  # night only
    lamax_exceedance: float | None = None

    @property
    def compliant(self) -> bool:
        return self.exceedance <= 0 and not (self.lamax_exceedance or 0) > 0

    def as_dict(self) -> dict[str, object]:
        return {"zoneClass": self.zone, "period": self.period, "limit": self.limit, "leq": round(self.leq, 1),
                "exceedance": self.exceedance, "lamax": self.lamax, "lamaxLimit": self.lamax_limit,
                "lamaxExceedance": self.lamax_exceedance, "compliant": self.compliant}


def _over(value: float, threshold: float) -> float:
    return max(0.0, round(round(value, 1) - threshold, 1))


def assess(zone: str, period: str, leq_db: float, lamax: float | None = None) -> NoiseResult:
    """Compare a period's Leq (and at night its LAmax) with the zone's limit."""
    if period not in ("day", "night"):
        raise ValueError(f"period must be day or night, not {period!r}")
    zone = zone_class(zone)
    level = check_level("leq", leq_db)
    lim = limit(zone, period)
    result = NoiseResult(zone, period, lim, level, _over(level, lim))
    if lamax is not None:
        result.lamax = check_level("lamax", lamax)
        if period == "night":
            result.lamax_limit = lim + NIGHT_MAX_MARGIN
            result.lamax_exceedance = _over(result.lamax, result.lamax_limit)
    return result
