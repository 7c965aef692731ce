"""US EPA Air Quality Index (40 CFR Part 58 Appendix G, PM2.5 breakpoints as revised in 2024). Pure, no I/O.

Concentrations are in the EPA's units: PM2.5 and PM10 µg/m³ (24-h), O3 ppm (8-h; 1-h), CO ppm
(8-h), SO2 ppb (1-h; 24-h), NO2 ppb (1-h). `from_metric` turns CityOS's µg/m³ (CO mg/m³) into them
at 25 °C and 1 atm.

EPA rules applied:
- each concentration is TRUNCATED first: O3 to 3 decimals, PM2.5 and CO to 1 decimal, PM10, SO2
  and NO2 to integers;
- the index is the linear interpolation within the bracketing breakpoints, rounded to the
  nearest integer;
- O3: the 8-h index for values up to 0.200 ppm; above that only the 1-h index applies, and where
  both are given the larger is reported (1-h O3 starts at AQI 101, 0.125 ppm);
- SO2: the 1-h table stops at 304 ppb (AQI 200); above it the 24-h average decides: 305-1004 ppb
  by the 24-h table, below 305 ppb (or no 24-h value) the index is 200;
- above the last breakpoint the index is "beyond the AQI": reported as 500 with a note.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from cityos.ops.environment.aqi_cn import check_concentration

AQI_BANDS = ((0, 50), (51, 100), (101, 150), (151, 200), (201, 300), (301, 500))

# Breakpoint ranges per AQI band (None: the band is not defined by that averaging time).
BREAKPOINTS: dict[str, tuple[tuple[float, float] | None, ...]] = {
    "PM2.5_24h": ((0.0, 9.0), (9.1, 35.4), (35.5, 55.4), (55.5, 125.4), (125.5, 225.4), (225.5, 325.4)),
    "PM10_24h": ((0, 54), (55, 154), (155, 254), (255, 354), (355, 424), (425, 604)),
    "O3_8h": ((0.000, 0.054), (0.055, 0.070), (0.071, 0.085), (0.086, 0.105), (0.106, 0.200), None),
    "O3_1h": (None, None, (0.125, 0.164), (0.165, 0.204), (0.205, 0.404), (0.405, 0.604)),
    "CO_8h": ((0.0, 4.4), (4.5, 9.4), (9.5, 12.4), (12.5, 15.4), (15.5, 30.4), (30.5, 50.4)),
    "SO2_1h": ((0, 35), (36, 75), (76, 185), (186, 304), None, None),
    "SO2_24h": (None, None, None, None, (305, 604), (605, 1004)),
    "NO2_1h": ((0, 53), (54, 100), (101, 360), (361, 649), (650, 1249), (1250, 2049)),
}
DECIMALS = {"PM2.5_24h": 1, "PM10_24h": 0, "O3_8h": 3, "O3_1h": 3, "CO_8h": 1, "SO2_1h": 0, "SO2_24h": 0,
            "NO2_1h": 0}
POLLUTANT = {"PM2.5_24h": "PM2.5", "PM10_24h": "PM10", "O3_8h": "O3", "O3_1h": "O3", "CO_8h": "CO",
             "SO2_1h": "SO2", "SO2_24h": "SO2", "NO2_1h": "NO2"}

MOLAR_MASS = {"O3": 47.997, "CO": 28.010, "SO2": 64.066, "NO2": 46.0055}
MOLAR_VOLUME_25C = 8.314462618 * 298.15 / 101.325  # L/mol at 25 °C, 1 atm


@dataclass(frozen=True)
class Category:
    level: int
    name: str
    color: str
    upper: int


CATEGORIES = (
    Category(1, "Good", "#00E400", 50),
    Category(2, "Moderate", "#FFFF00", 100),
    Category(3, "Unhealthy for Sensitive Groups", "#FF7E00", 150),
    Category(4, "Unhealthy", "#FF0000", 200),
    Category(5, "Very Unhealthy", "#8F3F97", 300),
    Category(6, "Hazardous", "#7E0023", 10**9),
)


def category(aqi: int) -> Category:
    for found in CATEGORIES:
        if aqi <= found.upper:
            return found
    return CATEGORIES[-1]


def truncate(table: str, value: float) -> float:
    scale = 10 ** DECIMALS[table]
    # round(…, 9) first: 0.087 * 1000 is 86.99999999999999 in binary floating point
    return math.floor(round(value * scale, 9)) / scale


def sub_index(table: str, concentration: float) -> tuple[int | None, str | None]:
    """(index, note) for one concentration; index None when the table does not define it there."""
    c = truncate(table, check_concentration(table, concentration))
    bands = BREAKPOINTS[table]
    defined = [(i, band) for i, band in enumerate(bands) if band is not None]
    first_lo = defined[0][1][0]
    if c < first_lo:
        return None, None  # e.g. 1-h O3 below 0.125 ppm: the 8-h value decides
    for i, (lo, hi) in defined:
        if c <= hi:
            i_lo, i_hi = AQI_BANDS[i]
            return round((i_hi - i_lo) / (hi - lo) * (c - lo) + i_lo), None
    last_i, _ = defined[-1]
    if last_i < len(bands) - 1:
        return None, None  # above the table's range: another averaging time decides
    return 500, f"{POLLUTANT[table]} {c} is beyond the AQI (above {defined[-1][1][1]})"


@dataclass
class UsAqiResult:
    aqi: int | None
    sub_indices: dict[str, int] = field(default_factory=dict)
    primary: list[str] = field(default_factory=list)
    category: Category | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        cat = self.category
        return {"aqi": self.aqi, "iaqi": dict(self.sub_indices), "primaryPollutant": list(self.primary),
                "level": cat.level if cat else None, "category": cat.name if cat else None,
                "color": cat.color if cat else None, "notes": list(self.notes)}


def aqi(*, pm25_24h: float | None = None, pm10_24h: float | None = None, o3_8h: float | None = None,
        o3_1h: float | None = None, co_8h: float | None = None, so2_1h: float | None = None,
        so2_24h: float | None = None, no2_1h: float | None = None) -> UsAqiResult:
    """The AQI from concentrations in EPA units (see the module docstring)."""
    given = {"PM2.5_24h": pm25_24h, "PM10_24h": pm10_24h, "O3_8h": o3_8h, "O3_1h": o3_1h, "CO_8h": co_8h,
             "NO2_1h": no2_1h}
    indices: dict[str, int] = {}
    notes: list[str] = []
    for table, value in given.items():
        if value is None:
            continue
        index, note = sub_index(table, value)
        if index is not None:
            indices[table] = index
        if note:
            notes.append(note)
    if o3_8h is not None and "O3_8h" not in indices and truncate("O3_8h", o3_8h) > 0.200:
        notes.append("8-h O3 above 0.200 ppm: the 1-h O3 index applies")
    if so2_1h is not None:
        index, note = sub_index("SO2_1h", so2_1h)
        if index is not None:
            indices["SO2_1h"] = index
        else:
            notes.append("1-h SO2 above 304 ppb: the 24-h SO2 average decides")
            day, day_note = sub_index("SO2_24h", so2_24h) if so2_24h is not None else (None, None)
            indices["SO2_24h"] = day if day is not None else 200
            if day_note:
                notes.append(day_note)
    return _combine(indices, notes)


def _combine(indices: Mapping[str, int], notes: list[str]) -> UsAqiResult:
    if not indices:
        return UsAqiResult(None, notes=notes)
    top = max(indices.values())
    primary: list[str] = []
    for table, value in indices.items():
        if value == top and POLLUTANT[table] not in primary:
            primary.append(POLLUTANT[table])
    return UsAqiResult(top, dict(indices), primary, category(top), notes)


def ppb(ug_m3: float, pollutant: str) -> float:
    """µg/m³ of a gas → ppb at 25 °C and 1 atm."""
    return ug_m3 * MOLAR_VOLUME_25C / MOLAR_MASS[pollutant]


def from_metric(*, pm25_24h: float | None = None, pm10_24h: float | None = None, o3_8h: float | None = None,
                o3_1h: float | None = None, co_8h: float | None = None, so2_1h: float | None = None,
                so2_24h: float | None = None, no2_1h: float | None = None) -> UsAqiResult:
    """The AQI from CityOS units: µg/m³, CO mg/m³ (gases converted to ppm/ppb at 25 °C, 1 atm)."""
    def conv(value: float | None, pollutant: str, per: float) -> float | None:
        if value is None:
            return None
        return ppb(check_concentration(pollutant, value), pollutant) / per

    return aqi(pm25_24h=pm25_24h, pm10_24h=pm10_24h, o3_8h=conv(o3_8h, "O3", 1000), o3_1h=conv(o3_1h, "O3", 1000),
               co_8h=conv(co_8h * 1000 if co_8h is not None else None, "CO", 1000),
               so2_1h=conv(so2_1h, "SO2", 1), so2_24h=conv(so2_24h, "SO2", 1), no2_1h=conv(no2_1h, "NO2", 1))
