"""Routing (category → department) and SLA policy tables: pure data and lookups, no I/O but file reads."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cityos.ops.incidents.models import LEVELS


def _load_yaml(env: str, name: str) -> dict[str, Any]:
    path = os.environ.get(env)
    text = Path(path).read_text("utf-8") if path else \
        resources.files("cityos.ops.incidents").joinpath(name).read_text("utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ValueError(f"{name} must be a mapping")
    return doc


@dataclass(frozen=True)
class Routing:
    routes: tuple[tuple[str, str], ...]
    default: str
    merge_metres: float
    merge_minutes: float
    # (category pattern, metres): wider merge radii for events that cover an area (smog, floods)
    merge_by_category: tuple[tuple[str, float], ...] = ()
    # (category pattern, area kind): machine reports of these categories merge by area, not by radius:
    # "district" (one incident per district) or "river" (one per river reach: river and district)
    area_by_category: tuple[tuple[str, str], ...] = ()

    @classmethod
    def load(cls) -> Routing:
        """`routing.yaml` shipped with the package, or the file named by CITYOS_INCIDENT_ROUTING."""
        doc = _load_yaml("CITYOS_INCIDENT_ROUTING", "routing.yaml")
        routes = tuple((str(r["pattern"]), str(r["department"])) for r in doc.get("routes", []))
        merge = doc.get("merge") or {}
        metres = float(os.environ.get("CITYOS_INCIDENT_MERGE_METRES") or merge.get("distance_m", 200))
        minutes = float(os.environ.get("CITYOS_INCIDENT_MERGE_MINUTES") or merge.get("window_minutes", 120))
        by_category = tuple((str(p), float(m)) for p, m in (merge.get("distance_m_by_category") or {}).items())
        areas = tuple((str(p), str(a)) for p, a in (merge.get("area_by_category") or {}).items())
        for pattern, area in areas:
            if area not in ("district", "river"):
                raise ValueError(f"routing: area of {pattern!r} must be district or river, not {area!r}")
        return cls(routes, str(doc.get("default", "city-operations")), metres, minutes, by_category, areas)

    def area_kind(self, category: str) -> str | None:
        """How machine reports of `category` merge by area: "district", "river" or None (by radius)."""
        for pattern, area in self.area_by_category:
            if fnmatch.fnmatchcase(category, pattern):
                return area
        return None

    def merge_distance(self, category: str) -> float:
        """The merge radius for `category`: the first matching pattern's, else the default."""
        for pattern, metres in self.merge_by_category:
            if fnmatch.fnmatchcase(category, pattern):
                return metres
        return self.merge_metres

    def department_for(self, category: str) -> str | None:
        for pattern, department in self.routes:
            if fnmatch.fnmatchcase(category, pattern):
                return department
        return None

    def to_json(self) -> dict[str, Any]:
        return {"routes": [{"pattern": p, "department": d} for p, d in self.routes], "default": self.default,
                "merge": {"distanceMetres": self.merge_metres, "windowMinutes": self.merge_minutes,
                          "distanceMetresByCategory": dict(self.merge_by_category),
                          "areaByCategory": dict(self.area_by_category)}}


@dataclass(frozen=True)
class Policy:
    category: str
    level: str
    response_minutes: float
    resolution_minutes: float | None
    source: str = "default"  # default | custom
    id: int | None = None

    def specificity(self) -> tuple[int, int, int]:
        cat = 10000 + len(self.category) if "*" not in self.category else len(self.category.replace("*", ""))
        return cat, 0 if self.level == "*" else 1, 1 if self.source == "custom" else 0

    def matches(self, category: str, level: str) -> bool:
        return fnmatch.fnmatchcase(category, self.category) and self.level in ("*", level)

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id) if self.id is not None else None, "category": self.category, "level": self.level,
                "responseMinutes": self.response_minutes, "resolutionMinutes": self.resolution_minutes,
                "source": self.source}


def default_policies() -> list[Policy]:
    """`sla_defaults.yaml` shipped with the package, or the file named by CITYOS_INCIDENT_SLA_DEFAULTS."""
    doc = _load_yaml("CITYOS_INCIDENT_SLA_DEFAULTS", "sla_defaults.yaml")
    found = []
    for row in doc.get("policies", []):
        level = str(row.get("level", "*"))
        if level != "*" and level not in LEVELS:
            raise ValueError(f"sla_defaults: unknown level {level!r}")
        resolution = row.get("resolution")
        found.append(Policy(str(row["category"]), level, float(row["response"]),
                            float(resolution) if resolution is not None else None))
    return found


def best_policy(policies: list[Policy], category: str, level: str) -> Policy | None:
    matching = [p for p in policies if p.matches(category, level)]
    return max(matching, key=Policy.specificity) if matching else None


# ---------------------------------------------------------------------- SLA clocks

YELLOW_AT = 0.8


def clock_state(start: datetime, due: datetime | None, done_at: datetime | None, now: datetime,
                current: str) -> tuple[str, datetime | None]:
    """The colour of one SLA clock and the next moment it may change (None: never again)."""
    if due is None:
        return "ok", None
    if done_at is not None:
        return ("met" if done_at <= due and current != "breached" else "breached"), None
    if now >= due:
        return "breached", None
    yellow = start + timedelta(seconds=(due - start).total_seconds() * YELLOW_AT)
    if now >= yellow:
        return "yellow", due
    return "ok", yellow


def level_up(level: str) -> str:
    index = LEVELS.index(level) if level in LEVELS else 0
    return LEVELS[min(index + 1, len(LEVELS) - 1)]


def level_of(severity: str | None, level: str | None) -> str:
    """An alarm's incident level: its explicit level, else from its severity."""
    if level in LEVELS:
        return str(level)
    aliases = {"一般": "general", "较大": "large", "重大": "major", "特别重大": "especially_major",
               "iv": "general", "iii": "large", "ii": "major", "i": "especially_major",
               "4": "general", "3": "large", "2": "major", "1": "especially_major",
               "critical": "major", "high": "large", "major": "large"}
    for key in (level, severity):
        if isinstance(key, str) and key.strip().lower() in aliases:
            return aliases[key.strip().lower()]
    return "general"
