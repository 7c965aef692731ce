"""Alarm correlation: root cause first, one incident per episode and area, storm protection.

Pure rules plus the statements the report transaction runs (`IncidentService._create_tx` calls them
on its connection, so every decision and its writes commit together):

- **Maintenance work orders.** A device's own fault (category ``device`` / ``device.*``: offline,
  low battery, data quality) is a work order for IT operations (`kind` "maintenance"), not a city
  incident: the incident list leaves them out unless asked for them.
- **Root cause first.** A device's work order carries its network segment (the gateway it reports
  through, else its district). When the gateway itself goes silent, or `segment_min_devices` devices
  of one segment go offline within `segment_minutes`, ONE incident (``network.outage``, kind
  "segment") opens for the segment and the devices' work orders merge into it; later ones of that
  segment join it while it is open. Its `attributes.affectedDevices` lists the devices.
- **One episode, one incident.** Machine reports (alarms, environment) of a category with an area
  kind in routing.yaml (``area_by_category``) merge into the running incident of the same area (a
  district; for floods a river reach) whatever rule or station saw them.
- **Storm protection.** When `storm_per_minute` new incidents of one category open within a
  minute, the next ones join a storm group (kind "storm", one per category while open) instead of
  opening incidents of their own; each stays a merged member that can be split out again.

`CITYOS_INCIDENT_CORRELATION=0` switches all of it off (the behaviour before: radius merging only),
which is what the hygiene benchmark uses as its baseline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, or_, select

from cityos.ops.incidents.models import OPEN_STATUSES, incidents

SEGMENT_CATEGORY = "network.outage"
SEGMENT_PREFIX = "segment:"
STORM_PREFIX = "storm:"
MAX_AFFECTED = 2000  # devices listed on one segment incident (the count keeps going)
MACHINE_SOURCES = frozenset({"alarm", "environment"})


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class CorrelationSettings:
    enabled: bool = field(default_factory=lambda: os.environ.get("CITYOS_INCIDENT_CORRELATION", "1") != "0")
    storm_per_minute: int = field(default_factory=lambda: _env_int("CITYOS_INCIDENT_STORM_PER_MINUTE", 10))
    segment_min_devices: int = field(default_factory=lambda: _env_int("CITYOS_INCIDENT_SEGMENT_MIN_DEVICES", 3))
    segment_minutes: float = field(default_factory=lambda: _env_float("CITYOS_INCIDENT_SEGMENT_MINUTES", 30.0))


def is_maintenance(category: str) -> bool:
    """A device's own fault: a work order for IT operations, not a city incident."""
    return category == "device" or category.startswith("device.")


def kind_of(category: str, dedup_key: str | None) -> str:
    """What an incident row is: "segment" (a network outage), "storm" (a storm group), "maintenance"
    (a device work order) or "incident"."""
    key = dedup_key or ""
    if key.startswith(SEGMENT_PREFIX):
        return "segment"
    if key.startswith(STORM_PREFIX):
        return "storm"
    return "maintenance" if is_maintenance(category) else "incident"


def maintenance_condition() -> Any:
    t = incidents
    return or_(t.c.category == "device", t.c.category.like("device.%"))


def open_by_key(conn: Connection, tenant: str, key: str, sqlite: bool) -> Row[Any] | None:
    stmt = select(incidents).where(incidents.c.tenant == tenant, incidents.c.dedup_open == key,
                                   incidents.c.parent_id.is_(None))
    return conn.execute(stmt if sqlite else stmt.with_for_update()).first()


def area_candidate(conn: Connection, tenant: str, category: str, area: str, since: datetime) -> Row[Any] | None:
    """The running incident of `category` in `area` (updated since `since`), the oldest first."""
    t = incidents
    rows = conn.execute(select(t).where(
        t.c.tenant == tenant, t.c.category == category, t.c.parent_id.is_(None),
        t.c.status.in_(OPEN_STATUSES), t.c.updated_at >= since).order_by(t.c.id).limit(500)).all()
    for row in rows:
        attributes = row.attributes or {}
        if attributes.get("area") == area and kind_of(row.category, row.dedup_key) == "incident":
            return row
    return None


def storm_load(conn: Connection, tenant: str, category: str, now: datetime) -> int:
    """New incidents of `category` in the last minute: top-level ones and storm members."""
    t = incidents
    rows = conn.execute(select(t.c.parent_id, t.c.attributes, t.c.dedup_key).where(
        t.c.tenant == tenant, t.c.category == category, t.c.reported_at >= now - timedelta(minutes=1))
        .limit(5000)).all()
    count = 0
    for row in rows:
        if (row.dedup_key or "").startswith((STORM_PREFIX, SEGMENT_PREFIX)):
            continue
        if row.parent_id is None or (row.attributes or {}).get("storm") is True:
            count += 1
    return count


def segment_orders(conn: Connection, tenant: str, segment: str, since: datetime | None) -> list[Row[Any]]:
    """Open top-level device work orders of `segment` for an offline device (reported since `since`)."""
    t = incidents
    conds = [t.c.tenant == tenant, maintenance_condition(), t.c.parent_id.is_(None),
             t.c.status.in_(OPEN_STATUSES)]
    if since is not None:
        conds.append(t.c.reported_at >= since)
    rows = conn.execute(select(t).where(*conds).order_by(t.c.id).limit(5000)).all()
    return [r for r in rows if (r.attributes or {}).get("segment") == segment
            and (r.attributes or {}).get("fault") == "offline"]


def with_affected(attributes: dict[str, Any] | None, devices: list[str]) -> dict[str, Any]:
    """A segment incident's attributes with `devices` added to its affected devices (once each)."""
    out = dict(attributes or {})
    listed = list(out.get("affectedDevices") or [])
    seen = set(listed)
    added = 0
    for device in devices:
        if device and device not in seen:
            seen.add(device)
            added += 1
            if len(listed) < MAX_AFFECTED:
                listed.append(device)
    out["affectedDevices"] = listed
    out["affectedCount"] = int(out.get("affectedCount") or 0) + added
    return out


def collapse_merges(entries: list[dict[str, Any]], titles: dict[str, str]) -> list[dict[str, Any]]:
    """Consecutive "merge" entries of an incident (reports that joined it) as one entry listing them."""
    out: list[dict[str, Any]] = []
    for entry in entries:
        detail = entry.get("detail") or {}
        children = detail.get("children") or ([detail["child"]] if detail.get("child") else [])
        if entry["action"] != "merge" or not children:
            out.append(entry)
            continue
        previous = out[-1] if out else None
        if previous is not None and previous["action"] == "merge" and "children" in (previous.get("detail") or {}):
            merged = previous["detail"]["children"]
            previous["at"] = entry["at"]
        else:
            previous = {**entry, "detail": {k: v for k, v in detail.items() if k not in ("child", "children")}}
            previous["detail"]["children"] = merged = []
            out.append(previous)
        for child in children:
            merged.append({"id": str(child), "title": titles.get(str(child), "")})
        previous["detail"]["count"] = len(merged)
    return out
