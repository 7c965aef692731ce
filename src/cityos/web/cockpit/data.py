"""What the cockpit shows, read through the platform's own APIs with the user's token.

Every reader tolerates a domain that is absent or refuses the user (403/404): the cockpit shows
what the APIs return to this user and nothing more. Nothing here computes access.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cityos.core import messages
from cityos.web.auth import ApiError, Session

log = logging.getLogger("cityos.web")

# China AQI categories (HJ 633-2012): upper bound, label, colour.
AQI_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (50, "优 Good", "#00e400"),
    (100, "良 Moderate", "#ffff00"),
    (150, "轻度污染 Light", "#ff7e00"),
    (200, "中度污染 Moderate pollution", "#ff0000"),
    (300, "重度污染 Heavy", "#99004c"),
    (10**9, "严重污染 Severe", "#7e0023"),
)
NO_AQI_COLOUR = "#334155"

DEVICE_COLOURS = {"normal": "#22c55e", "alarm": "#ef4444", "offline": "#64748b", "inactive": "#475569"}
SEVERITY_COLOURS = {"critical": "#dc2626", "major": "#f97316", "minor": "#eab308", "warning": "#eab308",
                    "info": "#38bdf8"}

OPEN_STATUSES = ("reported", "dispatched", "accepted", "on_site", "reopened")
# Display names from the one message catalogue (cityos.core.messages).
INCIDENT_STATUS_LABELS = {status: messages.label("status", status) for status in (
    "reported", "dispatched", "accepted", "on_site", "resolved", "closed", "reopened", "merged")}
SLA_LABELS = {**messages.SLA, "on_time": messages.SLA["ok"], "at_risk": messages.SLA["yellow"],
              "warning": messages.SLA["yellow"], "paused": "暂停 Paused"}
SLA_COLOURS = {"ok": "positive", "on_time": "positive", "met": "positive", "yellow": "warning", "at_risk": "warning",
               "warning": "warning", "breached": "negative", "paused": "grey"}


def aqi_category(aqi: float | None) -> tuple[str, str]:
    """(label, colour) of an AQI value in the China scale; grey for none."""
    if aqi is None:
        return "无数据 No data", NO_AQI_COLOUR
    for upper, label, colour in AQI_CATEGORIES:
        if aqi <= upper:
            return label, colour
    return AQI_CATEGORIES[-1][1], AQI_CATEGORIES[-1][2]


def district_key(ref: Any) -> str:
    """One key for a district however it is named: `urn:ngsi-ld:District:sim-district-01`, `district-01`."""
    text = str(ref or "")
    last = text.rsplit(":", 1)[-1]
    return last[4:] if last.startswith("sim-") else last


def _items(body: Any, *keys: str) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return [x for x in body if isinstance(x, dict)]
    if isinstance(body, dict):
        for key in (*keys, "items", "results", "data"):
            value = body.get(key)
            if isinstance(value, list):
                return [x for x in value if isinstance(x, dict)]
    return []


async def _get(session: Session, path: str, **params: Any) -> Any:
    """GET `path`; None when the API is missing or refuses this user (the cockpit shows what it may)."""
    try:
        return await session.api("GET", path, params={k: v for k, v in params.items() if v not in (None, "")})
    except ApiError as exc:
        if exc.status in (401, 403, 404, 405, 501):
            return None
        raise


def _value(attr: Any) -> Any:
    """A keyValues attribute, or a normalised one's value."""
    if isinstance(attr, dict) and "value" in attr:
        return attr["value"]
    return attr


# ------------------------------------------------------------------------------------ readers


async def districts(session: Session) -> list[dict[str, Any]]:
    """The hub's `District` entities: {id, key, name, geometry, population}."""
    body = await _get(session, "/ngsi-ld/v1/entities", type="District", options="keyValues", limit=1000)
    out = []
    for entity in _items(body):
        geometry = _value(entity.get("location"))
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        out.append({"id": entity.get("id"), "key": district_key(entity.get("id")),
                    # Chinese name first when the catalogue knows the place ("秀英区 Xiuying").
                    "name": messages.place(str(_value(entity.get("name")) or district_key(entity.get("id")))),
                    "geometry": geometry, "population": _value(entity.get("population"))})
    return out


async def devices(session: Session, limit: int = 2000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while len(out) < limit:
        body = await _get(session, "/api/iot/devices", limit=min(1000, limit - len(out)), offset=offset)
        page = _items(body)
        out.extend(page)
        if not page or not isinstance(body, dict) or offset + len(page) >= int(body.get("total") or 0):
            break
        offset += len(page)
    return out


async def device_health(session: Session) -> dict[str, Any]:
    body = await _get(session, "/api/iot/health")
    return body if isinstance(body, dict) else {}


def devices_online(health: dict[str, Any]) -> tuple[int, int, int]:
    """(online, devices, offline) as the IoT health round counts them (`/api/iot/health`): online is the
    devices whose state is active, out of every registered device. The demo console shows the same."""
    by_status = health.get("byStatus") or {}
    return int(by_status.get("active") or 0), int(health.get("devices") or 0), int(by_status.get("offline") or 0)


async def alarms(session: Session, active_only: bool = True) -> list[dict[str, Any]]:
    """Open alarms (active or acknowledged, not cleared), newest first as the API gives them."""
    body = await _get(session, "/api/ops/alarms", status="open" if active_only else None, limit=500)
    return _items(body, "alarms")


async def incidents(session: Session, **filters: Any) -> list[dict[str, Any]]:
    body = await _get(session, "/api/ops/incidents", limit=filters.pop("limit", 500), **filters)
    return _items(body, "incidents")


async def departments(session: Session) -> list[str]:
    """Departments incidents are routed to (the routing table), for the dispatch choice."""
    body = await _get(session, "/api/ops/incidents/routing")
    if not isinstance(body, dict):
        return []
    names = {str(r.get("department")) for r in body.get("routes") or [] if isinstance(r, dict) and r.get("department")}
    if body.get("default"):
        names.add(str(body["default"]))
    return sorted(names)


async def incident(session: Session, incident_id: str) -> dict[str, Any] | None:
    body = await _get(session, f"/api/ops/incidents/{incident_id}")
    return body if isinstance(body, dict) else None


async def sla_report(session: Session) -> dict[str, Any]:
    body = await _get(session, "/api/ops/incidents/reports/sla")
    return body if isinstance(body, dict) else {}


async def waste_sorting(session: Session, days: int = 30) -> dict[str, Any]:
    """The city's waste sorting over `days` (the communities of /api/waste/stats summed): participation =
    cards with a deposit ÷ registered cards, accuracy = correct ÷ checked deposits; None where nothing counts."""
    rows = [r for r in _items(await _get(session, "/api/waste/stats", days=days)) if isinstance(r, dict)]
    cards, active = sum(int(r.get("cards") or 0) for r in rows), sum(int(r.get("activeCards") or 0) for r in rows)
    checked, correct = sum(int(r.get("checked") or 0) for r in rows), sum(int(r.get("correct") or 0) for r in rows)
    return {"participation": 100.0 * active / cards if cards else None, "cards": cards,
            "accuracy": 100.0 * correct / checked if checked else None, "checked": checked,
            "communities": len(rows)}


async def aqi(session: Session) -> dict[str, dict[str, Any]]:
    """AQI by district key: {aqi, category, primary}."""
    body = await _get(session, "/api/ops/environment/aqi")
    rows = _items(body, "districts")
    if not rows and isinstance(body, dict):  # {district: value|{aqi,…}}
        rows = [{"district": k, **(v if isinstance(v, dict) else {"aqi": v})} for k, v in body.items()
                if isinstance(v, dict | int | float)]
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = district_key(row.get("district") or row.get("districtId") or row.get("id") or row.get("refDistrict"))
        value = row.get("aqi", row.get("AQI"))
        if isinstance(value, dict):
            value = value.get("value")
        out[key] = {"aqi": float(value) if isinstance(value, int | float) else None,
                    "primary": row.get("primaryPollutant") or row.get("primary"),
                    "name": row.get("name") or row.get("districtName")}
    return out


async def rules(session: Session) -> list[dict[str, Any]]:
    return _items(await _get(session, "/api/ops/rules"), "rules")


# ------------------------------------------------------------------------------ readings rate


@dataclass
class RateMeter:
    """Readings per second over a sliding window, counted from the hub's change events on the bus.

    In-process: with several API workers each cockpit shows its own worker's share.
    """

    window: float = 10.0
    _events: deque[tuple[float, int]] = field(default_factory=deque)
    _unsubscribe: Any = None

    def attach(self, bus: Any) -> None:
        if self._unsubscribe is None and bus is not None:
            from cityos.hub.service import ENTITY_CHANGED

            self._unsubscribe = bus.subscribe(ENTITY_CHANGED, self._on_change, every_process=True)

    async def _on_change(self, event: Any) -> None:
        change = event.payload.get("change")
        attrs = getattr(getattr(change, "after", None), "attrs", None) or {}
        # Readings land on the devices' observed entities (they carry refDevice) and on Device entities.
        if not (str(getattr(change, "entity_id", "")).startswith("urn:ngsi-ld:Device:")
                or any(name.endswith("refDevice") for name in attrs)):
            return
        # Each moved attribute is one reading (battery level included).
        count = len(getattr(change, "changed_attrs", ()) or ()) or 1
        self._events.append((time.monotonic(), count))

    def rate(self) -> float:
        now = time.monotonic()
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()
        return sum(c for _, c in self._events) / self.window


RATE = RateMeter()


class Pulse:
    """Bumped on ops bus events (alarms, incidents): open cockpits refresh at once instead of waiting."""

    version = 0
    _attached = False

    @classmethod
    def attach(cls, bus: Any) -> None:
        if cls._attached or bus is None:
            return
        cls._attached = True

        async def bump(event: Any) -> None:
            if str(event.topic).startswith(("ops.alarm.", "ops.incident.", "iot.device.")):
                cls.version += 1

        bus.subscribe("*", bump, every_process=True)


def attach_bus(app: Any) -> None:
    bus = getattr(app.state, "bus", None)
    RATE.attach(bus)
    Pulse.attach(bus)


async def gather(*coroutines: Any) -> list[Any]:
    """Run readers concurrently; a failed reader gives None and a log line, not a broken page."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    out: list[Any] = []
    for result in results:
        if isinstance(result, BaseException):
            log.warning("cockpit reader failed: %r", result)
            out.append(None)
        else:
            out.append(result)
    return out
