"""Small helpers shared by the cockpit pages."""

from __future__ import annotations

from typing import Any

from cityos.core import messages
from cityos.web.auth import COCKPIT_ROLES

__all__ = ["COCKPIT_ROLES", "fmt_minutes", "fmt_time", "incident_location", "incident_title"]


def fmt_time(value: Any) -> str:
    """An ISO time as `MM-DD HH:MM CST` in the city's zone (CITYOS_TIMEZONE), whatever the server's zone."""
    return messages.local_time(value)


def fmt_minutes(minutes: float | None) -> str:
    if minutes is None:
        return "—"
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


def incident_title(item: dict[str, Any]) -> str:
    return str(item.get("title") or item.get("name") or item.get("description") or item.get("category")
               or item.get("id"))


def incident_location(item: dict[str, Any]) -> tuple[float, float] | None:
    """(lat, lon) of an incident or alarm: `location` as GeoJSON Point, {lat, lon} or lat/lon fields."""
    loc = item.get("location")
    if isinstance(loc, dict) and "value" in loc and isinstance(loc["value"], dict):
        loc = loc["value"]
    if isinstance(loc, dict):
        if loc.get("type") == "Point" and isinstance(loc.get("coordinates"), list | tuple):
            lon, lat = loc["coordinates"][:2]
            return float(lat), float(lon)
        if "lat" in loc and ("lon" in loc or "lng" in loc):
            return float(loc["lat"]), float(loc["lon"] if "lon" in loc else loc["lng"])
    lat, lon = item.get("lat"), item.get("lon")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        return float(lat), float(lon)
    return None


_SLA_ORDER = ("breached", "yellow", "at_risk", "warning", "ok", "on_time", "met", "paused")


def incident_sla(item: dict[str, Any]) -> str:
    """The incident's SLA state: the worse of its response and resolution clocks ('' when unknown)."""
    sla = item.get("sla")
    candidates: list[Any] = [item.get("slaState"), item.get("sla_state")]
    if isinstance(sla, dict):
        candidates += [sla.get("state"), sla.get("response", {}).get("state") if isinstance(sla.get("response"), dict)
                       else sla.get("responseState"),
                       sla.get("resolution", {}).get("state") if isinstance(sla.get("resolution"), dict)
                       else sla.get("resolutionState")]
    elif isinstance(sla, str):
        candidates.append(sla)
    candidates += [item.get("responseState"), item.get("response_state"), item.get("resolutionState"),
                   item.get("resolution_state")]
    states = [str(c) for c in candidates if c]
    for state in _SLA_ORDER:
        if state in states:
            return state
    return states[0] if states else ""


def incident_time(item: dict[str, Any]) -> Any:
    return item.get("reportedAt") or item.get("reported_at") or item.get("createdAt") or item.get("created_at")
