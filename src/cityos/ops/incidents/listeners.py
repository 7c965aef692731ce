"""Incidents from other domains, through the event bus and the hub (never their tables).

- ``ops.alarm.raised`` / ``ops.alarm.updated`` with an ``incident`` spec open (or raise the level of)
  the alarm's incident, deduplicated by the alarm id while open; ``ops.alarm.cleared`` notes it.
- ``ops.incident.requested`` (environment) opens an incident for the environment department,
  deduplicated by its ``dedupKey`` while open.
- ``hub.entity.changed`` on an active ``Alert`` entity carrying ``incidentCategory``, and a
  reconciliation at start-up over the hub's active Alerts, cover a crash between the alarm's
  commit and the incident's (the dedup key makes the replays harmless).

With correlation on (`correlation.py`) titles come from the category and the place, and a device
alarm is enriched from the device's hub entity: its gateway (`refGateway`) is its network segment,
and a gateway's own offline alarm becomes its segment's outage incident (root cause first).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from cityos.core.bus_models import AlreadyApplied
from cityos.core.errors import NonexistentTenant, ProblemError
from cityos.core.events import Event, EventBus
from cityos.hub.service import ENTITY_CHANGED
from cityos.hub.store import EntityQuery
from cityos.ops.incidents import correlation as corr
from cityos.ops.incidents.core import SYSTEM, NewIncident
from cityos.ops.incidents.models import CATEGORY_PATTERN, LEVELS
from cityos.ops.incidents.routing import level_of
from cityos.ops.incidents.service import IncidentService

log = logging.getLogger(__name__)

ALERT_PREFIX = "urn:ngsi-ld:Alert:alarm-"
_CATEGORY = re.compile(CATEGORY_PATTERN)


def _short(iri: str) -> str:
    return iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1]


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value is not None else None


def _location(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and "type" in value and "coordinates" in value else None


def alarm_incident(alarm: dict[str, Any]) -> NewIncident | None:
    spec = alarm.get("incident")
    if not isinstance(spec, dict) or not isinstance(spec.get("category"), str):
        return None
    category = spec["category"]
    if not _CATEGORY.match(category):
        log.warning("alarm %s: bad incident category %r", alarm.get("id"), category)
        return None
    message = _text(alarm.get("message"), 1000) or ""
    title = f"Alarm: {message or alarm.get('ruleId') or category}"[:200]
    return NewIncident(
        category=category, title=title, description=message, source="alarm",
        level=level_of(_text(alarm.get("severity"), 24), _text(spec.get("level"), 24)),
        severity=_text(alarm.get("severity"), 24), location=_location(alarm.get("location")),
        entity_id=_text(alarm.get("entityId"), 512), dedup_key=f"alarm:{alarm.get('id')}"[:300],
        fallback_department=_text(alarm.get("department"), 128), district=_text(alarm.get("district"), 256),
        fault=_text(alarm.get("subCategory"), 64) if alarm.get("category") == "device" else None)


def environment_incident(payload: dict[str, Any]) -> NewIncident | None:
    category = payload.get("category")
    if not isinstance(category, str) or not _CATEGORY.match(category):
        return None
    key = payload.get("dedupKey")
    level = payload.get("level")
    return NewIncident(
        category=category, title=(_text(payload.get("title"), 200) or category),
        description=_text(payload.get("description"), 4000) or "", source="environment",
        level=level if level in LEVELS else level_of(None, _text(level, 24)),
        location=_location(payload.get("location")), entity_id=_text(payload.get("entityId"), 512),
        dedup_key=f"env:{key}"[:300] if key else None, department="environment",
        district=_text(payload.get("district"), 256))


def alert_alarm(entity_id: str, values: dict[str, Any]) -> dict[str, Any] | None:
    """An active Alert entity (short attribute names → values) as the alarm event would carry it."""
    if not entity_id.startswith(ALERT_PREFIX) or values.get("alarmStatus") != "active":
        return None
    category = values.get("incidentCategory")
    if not isinstance(category, str):
        return None
    return {"id": entity_id[len(ALERT_PREFIX):], "severity": values.get("alarmSeverity") or values.get("severity"),
            "message": values.get("description"), "entityId": values.get("alertSource"),
            "location": values.get("location"), "district": values.get("district"),
            "department": values.get("department"), "category": values.get("category"),
            "subCategory": values.get("subCategory"),
            "incident": {"category": category, "level": values.get("incidentLevel")}}


def _values(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for iri, instances in attrs.items():
        if instances:
            inst = instances[0]
            out[_short(iri)] = inst.get("value", inst.get("object"))
    return out


class Listeners:
    def __init__(self, service: IncidentService, bus: EventBus) -> None:
        self.service = service
        self.bus = bus
        self._unsubscribe = [
            bus.subscribe("ops.alarm.raised", self.on_alarm, group="incidents"),
            bus.subscribe("ops.alarm.updated", self.on_alarm, group="incidents"),
            bus.subscribe("ops.alarm.cleared", self.on_alarm_cleared, group="incidents"),
            bus.subscribe("ops.incident.requested", self.on_requested, group="incidents"),
            bus.subscribe(ENTITY_CHANGED, self.on_entity, group="incidents"),
        ]

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    async def _open(self, tenant: str, new: NewIncident, event: Event) -> None:
        if self.service.correlation.enabled:
            await correlate(self.service, tenant, new)
        try:
            await self.service.create(tenant, new, actor=SYSTEM, cause=event)
        except AlreadyApplied:
            log.info("%s %s: applied before (redelivered)", event.topic, event.id)
        except ProblemError as exc:
            log.warning("incident for %s refused: %s", new.dedup_key, exc.detail)

    async def on_alarm(self, event: Event) -> None:
        alarm = event.payload.get("alarm")
        if not isinstance(alarm, dict) or alarm.get("id") is None:
            return
        new = alarm_incident(alarm)
        if new is not None:
            await self._open(str(event.payload.get("tenant") or ""), new, event)

    async def on_alarm_cleared(self, event: Event) -> None:
        alarm = event.payload.get("alarm")
        if isinstance(alarm, dict) and alarm.get("id") is not None:
            await self.service.note(str(event.payload.get("tenant") or ""), f"alarm:{alarm['id']}"[:300],
                                    "alarm.cleared", "the alarm was cleared", cause=event)

    async def on_requested(self, event: Event) -> None:
        new = environment_incident(event.payload)
        if new is not None:
            await self._open(str(event.payload.get("tenant") or ""), new, event)

    async def on_entity(self, event: Event) -> None:
        change = event.payload.get("change")
        after = getattr(change, "after", None)
        record = after or getattr(change, "before", None)
        if record is not None and any(t == self.service.district_type for t in record.types):
            self.service.forget_districts(str(event.payload.get("tenant") or ""))
            return
        if after is None or not after.id.startswith(ALERT_PREFIX):
            return
        if not any(_short(t) == "Alert" for t in after.types):
            return
        alarm = alert_alarm(after.id, _values(after.attrs))
        if alarm is not None:
            new = alarm_incident(alarm)
            if new is not None:
                await self._open(str(event.payload.get("tenant") or ""), new, event)

    async def reconcile(self) -> int:
        return await reconcile(self.service)


def _device_name(entity_id: str | None) -> str | None:
    prefix = "urn:ngsi-ld:Device:"
    return entity_id[len(prefix):] if entity_id and entity_id.startswith(prefix) else None


async def correlate(service: IncidentService, tenant: str, new: NewIncident) -> None:
    """Prepare a machine report for correlation: a generated title; for a device fault, its segment.

    The device's hub entity says whether it is a gateway and which gateway it reports through; a
    device without a gateway belongs to its district's segment."""
    if new.source not in corr.MACHINE_SOURCES:
        return
    new.auto_title = True
    if not corr.is_maintenance(new.category):
        return
    name = _device_name(new.entity_id)
    new.place = name or new.entity_id
    values: dict[str, Any] = {}
    if new.entity_id:
        try:
            record = await service.hub.retrieve(tenant, new.entity_id)
        except ProblemError:
            record = None
        if record is not None:
            values = _values(record.attrs)
    gateway = values.get("refGateway")
    if isinstance(gateway, str):
        new.segment = f"gateway:{_device_name(gateway) or gateway}"
    elif values.get("isGateway") is True and name:
        new.segment = f"gateway:{name}"
    elif new.district or isinstance(values.get("district"), str):
        new.segment = f"district:{new.district or values.get('district')}"
    if values.get("isGateway") is True and name and new.fault == "offline":
        # Root cause first: the gateway's silence is the incident; its devices' faults join it.
        new.category = corr.SEGMENT_CATEGORY
        new.segment_root = True
        new.level = "large"
        new.dedup_key = f"{corr.SEGMENT_PREFIX}{new.segment}"[:300]
        new.department = None
        new.fallback_department = None


async def reconcile(service: IncidentService) -> int:
    """Open (or merge) the incidents of active Alert entities that have none (after a crash); returns how many."""
    hub = service.hub
    async with hub.store.read() as conn:
        tenants = sorted({"", *await hub.store.list_tenants(conn)})
    opened = 0
    alert_type = service.ctx.expand("Alert")
    for tenant in tenants:
        offset = 0
        while True:
            try:
                records, _ = await hub.query(tenant, EntityQuery(types=[alert_type], limit=1000, offset=offset))
            except NonexistentTenant:
                break
            for record in records:
                alarm = alert_alarm(record.id, _values(record.attrs))
                new = alarm_incident(alarm) if alarm else None
                if new is not None:
                    if service.correlation.enabled:
                        await correlate(service, tenant, new)
                    result = await service.create(tenant, new, actor=SYSTEM)
                    opened += result.outcome in ("created", "merged")
            if len(records) < 1000:
                break
            offset += 1000
    return opened
