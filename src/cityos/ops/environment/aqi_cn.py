"""China's Ambient Air Quality Index, HJ 633-2012 (环境空气质量指数（AQI）技术规定（试行）). Pure, no I/O.

Concentrations are µg/m³, CO in mg/m³ (the units of the standard's Table 1 and of the IoT
profiles). The individual index (IAQI) of a pollutant is the linear interpolation between the
breakpoints that bracket its concentration (formula (1) of the standard), rounded UP to an integer;
the AQI is the largest IAQI; when the AQI is above 50 the pollutant(s) with that IAQI are the
primary pollutant(s) (several on a tie).

Special rules of Table 1:
- SO2 1-h above 800 µg/m³: its 1-h IAQI is not computed; the 24-h IAQI is reported instead;
- O3 8-h above 800 µg/m³: its 8-h IAQI is not computed; the 1-h O3 IAQI is reported instead.

A concentration above a table's last breakpoint gives IAQI 500 (the top of the scale; the
standard has no index beyond it). Negative or non-finite concentrations are refused (ValueError).

Two reports are built from these tables:
- `hourly` (实时报): SO2, NO2, CO and O3 1-h averages with their 1-h tables, the O3 8-h moving
  average, and PM10/PM2.5 with the 24-h tables (the standard has no 1-h table for particles; the
  1-h concentration is applied to the 24-h breakpoints, as real-time publication does);
- `daily` (日报): SO2, NO2, CO, PM10, PM2.5 24-h averages, the day's maximum 1-h O3 and maximum
  8-h moving average O3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

IAQI_STEPS = (0, 50, 100, 150, 200, 300, 400, 500)

# Table 1 of HJ 633-2012: concentration breakpoints for IAQI 0, 50, 100, 150, 200, 300, 400, 500.
BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "SO2_24h": (0, 50, 150, 475, 800, 1600, 2100, 2620),
    "SO2_1h": (0, 150, 500, 650, 800),  # above 800: use the 24-h IAQI
    "NO2_24h": (0, 40, 80, 180, 280, 565, 750, 940),
    "NO2_1h": (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    "PM10_24h": (0, 50, 150, 250, 350, 420, 500, 600),
    "CO_24h": (0, 2, 4, 14, 24, 36, 48, 60),  # mg/m³
    "CO_1h": (0, 5, 10, 35, 60, 90, 120, 150),  # mg/m³
    "O3_1h": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "O3_8h": (0, 100, 160, 215, 265, 800),  # above 800: use the 1-h O3 IAQI
    "PM2.5_24h": (0, 35, 75, 115, 150, 250, 350, 500),
}

# The pollutant each table measures, as reported in primaryPollutant.
POLLUTANT = {"SO2_24h": "SO2", "SO2_1h": "SO2", "NO2_24h": "NO2", "NO2_1h": "NO2", "PM10_24h": "PM10",
             "CO_24h": "CO", "CO_1h": "CO", "O3_1h": "O3", "O3_8h": "O3", "PM2.5_24h": "PM2.5"}


@dataclass(frozen=True)
class Category:
    level: int  # 1..6 (一级 … 六级)
    name: str  # 优 … 严重污染
    name_en: str
    color: str  # the standard's colour, as hex RGB
    rgb: tuple[int, int, int]
    upper: int  # highest AQI of the category


# Table 2 of HJ 633-2012: levels, categories and colours (RGB as given in the standard).
CATEGORIES = (
    Category(1, "优", "Excellent", "#00E400", (0, 228, 0), 50),
    Category(2, "良", "Good", "#FFFF00", (255, 255, 0), 100),
    Category(3, "轻度污染", "Lightly polluted", "#FF7E00", (255, 126, 0), 150),
    Category(4, "中度污染", "Moderately polluted", "#FF0000", (255, 0, 0), 200),
    Category(5, "重度污染", "Heavily polluted", "#99004C", (153, 0, 76), 300),
    Category(6, "严重污染", "Severely polluted", "#7E0023", (126, 0, 35), 10**9),
)


def category(aqi: int) -> Category:
    for found in CATEGORIES:
        if aqi <= found.upper:
            return found
    return CATEGORIES[-1]


def check_concentration(name: str, value: float) -> float:
    """A usable concentration, or ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return float(value)


def iaqi(table: str, concentration: float) -> int | None:
    """The IAQI of one concentration against one table of Table 1, rounded up; None where the
    standard says not to compute it (SO2 1-h and O3 8-h above 800)."""
    points = BREAKPOINTS[table]
    c = check_concentration(table, concentration)
    if table in ("SO2_1h", "O3_8h") and c > points[-1]:
        return None
    if c > points[-1]:
        return 500
    for i in range(1, len(points)):
        if c <= points[i]:
            lo, hi = points[i - 1], points[i]
            index = (IAQI_STEPS[i] - IAQI_STEPS[i - 1]) / (hi - lo) * (c - lo) + IAQI_STEPS[i - 1]
            # round(…, 9) first: 0.1 + 0.2 style noise must not push an exact integer up by one
            return math.ceil(round(index, 9))
    return 500  # unreachable: c <= points[-1] was handled above


@dataclass
class AqiResult:
    aqi: int | None
    iaqi: dict[str, int] = field(default_factory=dict)  # table name → IAQI, e.g. {"PM2.5_24h": 102}
    primary: list[str] = field(default_factory=list)  # pollutants; empty when AQI <= 50
    category: Category | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        cat = self.category
        return {"aqi": self.aqi, "iaqi": dict(self.iaqi), "primaryPollutant": list(self.primary),
                "level": cat.level if cat else None, "category": cat.name if cat else None,
                "categoryEn": cat.name_en if cat else None, "color": cat.color if cat else None,
                "notes": list(self.notes)}


def combine(indices: Mapping[str, int]) -> AqiResult:
    """AQI, primary pollutant(s) and category from IAQIs keyed by table name."""
    if not indices:
        return AqiResult(None)
    top = max(indices.values())
    primary: list[str] = []
    if top > 50:
        for table, value in indices.items():
            name = POLLUTANT.get(table, table)
            if value == top and name not in primary:
                primary.append(name)
    return AqiResult(top, dict(indices), primary, category(top))


def _apply(tables: Sequence[tuple[str, float | None]]) -> dict[str, int]:
    indices: dict[str, int] = {}
    for table, value in tables:
        if value is None:
            continue
        result = iaqi(table, value)
        if result is not None:
            indices[table] = result
    return indices


def hourly(*, so2: float | None = None, no2: float | None = None, co: float | None = None,
           o3: float | None = None, o3_8h: float | None = None, pm10: float | None = None,
           pm25: float | None = None, so2_24h: float | None = None) -> AqiResult:
    """实时报: 1-h averages (o3_8h: the 8-h moving average; so2_24h: used when SO2 1-h > 800)."""
    notes: list[str] = []
    indices = _apply([("SO2_1h", so2), ("NO2_1h", no2), ("CO_1h", co), ("O3_1h", o3),
                             ("O3_8h", o3_8h), ("PM10_24h", pm10), ("PM2.5_24h", pm25)])
    if so2 is not None and "SO2_1h" not in indices:
        notes.append("SO2 1-h above 800 µg/m³: the 24-h SO2 IAQI is reported")
        if so2_24h is not None:
            indices["SO2_24h"] = iaqi("SO2_24h", so2_24h) or 0
    if o3_8h is not None and "O3_8h" not in indices:
        notes.append("O3 8-h above 800 µg/m³: the 1-h O3 IAQI is reported")
    result = combine(indices)
    result.notes = notes
    return result


def daily(*, so2: float | None = None, no2: float | None = None, co: float | None = None,
          pm10: float | None = None, pm25: float | None = None, o3_1h_max: float | None = None,
          o3_8h_max: float | None = None) -> AqiResult:
    """日报: 24-h averages, the day's maximum 1-h O3 and maximum 8-h moving average O3."""
    notes: list[str] = []
    indices = _apply([("SO2_24h", so2), ("NO2_24h", no2), ("CO_24h", co), ("PM10_24h", pm10),
                             ("PM2.5_24h", pm25), ("O3_1h", o3_1h_max), ("O3_8h", o3_8h_max)])
    if o3_8h_max is not None and "O3_8h" not in indices:
        notes.append("O3 8-h above 800 µg/m³: the 1-h O3 IAQI is reported")
    result = combine(indices)
    result.notes = notes
    return result
