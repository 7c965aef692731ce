"""Surface water quality class, GB 3838-2002 (地表水环境质量标准) Table 1. Pure, no I/O.

Each measured parameter gets the best class (I … V) whose limit it meets; a parameter that
meets no class is 劣V (class 6). The water's class is the WORST parameter's class (单因子评价),
and the parameters at that class are the limiting ones. DO is "higher is better" (≥); pH must be
within 6-9 in every class, so a pH outside that range makes the water 劣V. Total phosphorus has
stricter limits for lakes and reservoirs; total nitrogen applies to lakes and reservoirs only
(for rivers it is reported but does not set the class).

Units: mg/L, pH dimensionless, faecal coliforms per litre.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

CLASS_NAMES = ("I", "II", "III", "IV", "V", "劣V")  # index 0..5 = class level 1..6
WATER_BODIES = ("river", "lake")


@dataclass(frozen=True)
class Parameter:
    key: str
    name: str
    limits: tuple[float, float, float, float, float]  # classes I..V
    higher_is_better: bool = False
    lake_limits: tuple[float, float, float, float, float] | None = None
    lakes_only: bool = False


# Table 1 of GB 3838-2002 (basic items; water temperature has no class limits and is not listed).
PARAMETERS: dict[str, Parameter] = {p.key: p for p in (
    Parameter("DO", "溶解氧 dissolved oxygen", (7.5, 6, 5, 3, 2), higher_is_better=True),
    Parameter("CODMn", "高锰酸盐指数 permanganate index", (2, 4, 6, 10, 15)),
    Parameter("COD", "化学需氧量 chemical oxygen demand", (15, 15, 20, 30, 40)),
    Parameter("BOD5", "五日生化需氧量 BOD5", (3, 3, 4, 6, 10)),
    Parameter("NH3N", "氨氮 ammonia nitrogen", (0.15, 0.5, 1.0, 1.5, 2.0)),
    Parameter("TP", "总磷 total phosphorus", (0.02, 0.1, 0.2, 0.3, 0.4),
              lake_limits=(0.01, 0.025, 0.05, 0.1, 0.2)),
    Parameter("TN", "总氮 total nitrogen (lakes, reservoirs)", (0.2, 0.5, 1.0, 1.5, 2.0), lakes_only=True),
    Parameter("Cu", "铜 copper", (0.01, 1.0, 1.0, 1.0, 1.0)),
    Parameter("Zn", "锌 zinc", (0.05, 1.0, 1.0, 2.0, 2.0)),
    Parameter("F", "氟化物 fluoride", (1.0, 1.0, 1.0, 1.5, 1.5)),
    Parameter("Se", "硒 selenium", (0.01, 0.01, 0.01, 0.02, 0.02)),
    Parameter("As", "砷 arsenic", (0.05, 0.05, 0.05, 0.1, 0.1)),
    Parameter("Hg", "汞 mercury", (0.00005, 0.00005, 0.0001, 0.001, 0.001)),
    Parameter("Cd", "镉 cadmium", (0.001, 0.005, 0.005, 0.005, 0.01)),
    Parameter("Cr6", "铬（六价） hexavalent chromium", (0.01, 0.05, 0.05, 0.05, 0.1)),
    Parameter("Pb", "铅 lead", (0.01, 0.01, 0.05, 0.05, 0.1)),
    Parameter("CN", "氰化物 cyanide", (0.005, 0.05, 0.2, 0.2, 0.2)),
    Parameter("phenol", "挥发酚 volatile phenol", (0.002, 0.002, 0.005, 0.01, 0.1)),
    Parameter("oil", "石油类 petroleum", (0.05, 0.05, 0.05, 0.5, 1.0)),
    Parameter("LAS", "阴离子表面活性剂 anionic surfactant", (0.2, 0.2, 0.2, 0.3, 0.3)),
    Parameter("S2", "硫化物 sulfide", (0.05, 0.1, 0.2, 0.5, 1.0)),
    Parameter("coliform", "粪大肠菌群 faecal coliforms (per L)", (200, 2000, 10000, 20000, 40000)),
)}
PH_RANGE = (6.0, 9.0)


def class_name(level: int) -> str:
    return CLASS_NAMES[level - 1]


def class_level(name: str) -> int:
    """"III" → 3; also accepts 1..6 as text, "劣V"/"V+" for 6."""
    text = str(name).strip().upper().replace("Ⅰ", "I").replace("Ⅱ", "II").replace("Ⅲ", "III") \
        .replace("Ⅳ", "IV").replace("Ⅴ", "V")
    if text in ("V+", "劣V", "WORSE THAN V"):
        return 6
    if text in CLASS_NAMES:
        return CLASS_NAMES.index(text) + 1
    if text.isdecimal() and 1 <= int(text) <= 6:
        return int(text)
    raise ValueError(f"{name!r} is not a water quality class (I, II, III, IV, V or 劣V)")


def _check(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value}")
    if value < 0:
        raise ValueError(f"{key} must not be negative, got {value}")
    return float(value)


def parameter_class(key: str, value: float, body: str = "river") -> int:
    """The class level (1..6) of one parameter's measured value."""
    if key == "pH":
        v = _check(key, value)
        return 1 if PH_RANGE[0] <= v <= PH_RANGE[1] else 6
    param = PARAMETERS.get(key)
    if param is None:
        raise ValueError(f"unknown parameter {key!r}; known: pH, {', '.join(PARAMETERS)}")
    v = _check(key, value)
    limits = param.lake_limits if body == "lake" and param.lake_limits else param.limits
    for level, limit in enumerate(limits, start=1):
        if (v >= limit) if param.higher_is_better else (v <= limit):
            return level
    return 6


@dataclass
class WaterResult:
    level: int | None  # 1..6; None: no parameter that sets the class was measured
    classes: dict[str, int] = field(default_factory=dict)  # parameter → its class level
    limiting: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # measured but not class-setting here (TN in rivers)

    @property
    def name(self) -> str | None:
        return class_name(self.level) if self.level else None

    def meets(self, target: int) -> bool:
        return self.level is None or self.level <= target

    def as_dict(self) -> dict[str, object]:
        return {"class": self.name, "level": self.level,
                "parameters": {k: class_name(v) for k, v in self.classes.items()},
                "limitingParameters": list(self.limiting), "ignored": list(self.ignored)}


def classify(values: Mapping[str, float], body: str = "river") -> WaterResult:
    """The GB 3838-2002 class of a sample: parameter key (pH, DO, CODMn, COD, BOD5, NH3N, TP, TN, …) → value."""
    if body not in WATER_BODIES:
        raise ValueError(f"water body must be river or lake, not {body!r}")
    result = WaterResult(None)
    for key, value in values.items():
        level = parameter_class(key, value, body)
        param = PARAMETERS.get(key)
        if param is not None and param.lakes_only and body != "lake":
            result.ignored.append(key)
            continue
        result.classes[key] = level
    if result.classes:
        result.level = max(result.classes.values())
        if result.level > 1:
            result.limiting = [k for k, v in result.classes.items() if v == result.level]
    return result
