"""The logic of ops.rules: versioned rules, evaluation of hub changes and IoT events, window state,
the timer, alarms and their Alert entities in the hub. No HTTP here.

Flow of a hub change: the hub publishes `hub.entity.changed` after its commit → `on_entity_changed`
evaluates it in memory (`engine.Engine`) → outcomes are applied in ONE transaction on our tables
(raise / repeat / clear) → the Alert entities are written through `HubService` in the same tenant
→ `ops.alarm.raised|updated|cleared` go on the bus. An alarm whose Alert could not be written keeps
`hub_synced = 0` and is retried by the timer loop.

Window state is kept in memory and written behind in batches (`flush`: only changed keys, one
transaction, at most every `flush_seconds`, on `tick`, and at shutdown), so a restart resumes it.
`tick(now)` is the timer: it evaluates the windowed (rule, entity) pairs whose `due_at` has passed,
read from `ops_rule_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.bus_models import claim
from cityos.core.clock import as_utc
from cityos.core.errors import AlreadyExists, Conflict, ProblemError, ResourceNotFound
from cityos.core.events import Event, EventBus
from cityos.core.metrics import RULE_EVALUATION
from cityos.hub import service as hub_service_module
from cityos.hub.service import HubService
from cityos.ops.rules import spec
from cityos.ops.rules.engine import Engine, Key, Outcome, epoch, from_epoch
from cityos.ops.rules.models import alarms, rule_state, rule_versions, rules
from cityos.ops.rules.nodes import attr_value

log = logging.getLogger("cityos.ops.rules")

TOPIC_RAISED = "ops.alarm.raised"
TOPIC_UPDATED = "ops.alarm.updated"
TOPIC_CLEARED = "ops.alarm.cleared"
DEVICE_TOPICS = ("iot.device.offline", "iot.device.online", "iot.device.alarm", "iot.data.quality")
BATTERY_OK_PERCENT = 20.0
ALERT_PREFIX = "urn:ngsi-ld:Alert:alarm-"
MAX_PAGE = 1000


def alert_id(alarm_id: int) -> str:
    return f"{ALERT_PREFIX}{alarm_id}"


def _iso(value: datetime | None) -> str | None:
    return clock.iso(as_utc(value)) if value is not None else None


def alarm_view(row: Any) -> dict[str, Any]:
    """An alarm as the API and the bus show it."""
    incident = {"category": row.incident_category, "level": row.incident_level} if row.incident_category else None
    return {
        "id": int(row.id), "alertId": alert_id(int(row.id)), "ruleId": row.rule_id, "ruleVersion": row.rule_version,
        "ruleName": row.rule_name, "entityId": row.entity_id, "entityType": row.entity_type, "status": row.status,
        "severity": row.severity, "category": row.category, "subCategory": row.sub_category,
        "description": row.description, "district": row.district, "department": row.department,
        "incident": incident, "value": (row.value or {}).get("v"), "location": row.location, "count": int(row.count),
        "raisedAt": _iso(row.raised_at), "lastSeen": _iso(row.last_seen),
        "acknowledgedAt": _iso(row.acknowledged_at), "acknowledgedBy": row.acknowledged_by,
        "clearedAt": _iso(row.cleared_at), "clearedBy": row.cleared_by, "clearReason": row.clear_reason,
    }


def alert_entity(alarm: Mapping[str, Any]) -> dict[str, Any]:
    """The Smart Data Models `Alert` entity of an alarm (normalised NGSI-LD, core @context)."""

    def prop(value: Any) -> dict[str, Any]:
        return {"type": "Property", "value": value}

    body: dict[str, Any] = {
        "id": alarm["alertId"], "type": "Alert",
        "category": prop(alarm["category"]),
        "severity": prop(spec.SDM_SEVERITY.get(alarm["severity"], "medium")),
        "alarmSeverity": prop(alarm["severity"]),
        "alertSource": {"type": "Relationship", "object": alarm["entityId"]},
        "dateIssued": prop(alarm["raisedAt"]),
        "validFrom": prop(alarm["raisedAt"]),
        "alarmStatus": prop(alarm["status"]),
        "ruleId": prop(alarm["ruleId"]),
        "name": prop(alarm["ruleName"]),
    }
    optional = {"subCategory": alarm["subCategory"], "description": alarm["description"],
                "validTo": alarm["clearedAt"], "district": alarm["district"], "department": alarm["department"],
                "acknowledgedAt": alarm["acknowledgedAt"], "acknowledgedBy": alarm["acknowledgedBy"]}
    if alarm["incident"]:
        optional["incidentCategory"] = alarm["incident"]["category"]
        optional["incidentLevel"] = alarm["incident"].get("level")
    for name, value in optional.items():
        if value is not None:
            body[name] = prop(value)
    location = alarm.get("location")
    if isinstance(location, dict) and "type" in location and "coordinates" in location:
        body["location"] = {"type": "GeoProperty", "value": location}
    return body


def load_default_rules() -> list[dict[str, Any]]:
    text = resources.files("cityos.ops.rules").joinpath("defaults.yaml").read_text(encoding="utf-8")
    doc = spec.parse_yaml(text)
    found: list[dict[str, Any]] = doc["rules"]
    return found


@dataclass
class _Applied:
    topic: str
    tenant: str
    alarm: dict[str, Any]
    hub: bool  # the Alert entity must be (re)written

    @classmethod
    def of(cls, topic: str, row: Any, hub: bool) -> _Applied:
        return cls(topic, row.tenant, alarm_view(row), hub)


@dataclass
class RulesSettings:
    tick_seconds: float = 5.0
    flush_seconds: float = 1.0
    resync_seconds: float = 30.0
    builtin_device_rules: bool = True
    defaults: list[dict[str, Any]] = field(default_factory=list)


class RulesService:
    def __init__(self, db: AsyncEngine, hub: HubService, bus: EventBus, expand: Any, compact: Any,
                 core_context: Any, settings: RulesSettings | None = None) -> None:
        self.db = db
        self.hub = hub
        self.bus = bus
        self.ctx = core_context
        self.settings = settings or RulesSettings()
        self.engine = Engine(expand, compact)
        self._device_type = expand("Device")
        self._battery = expand("batteryLevel")
        self._device_kinds: dict[str, set[str]] = {}  # tenant → device kinds with a rule (enabled or not)
        self._flush_lock = asyncio.Lock()
        self._tick_lock = asyncio.Lock()
        self._postgres = db.dialect.name == "postgresql"

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        # The hub store's writer: on SQLite it holds the one writer lock every domain shares.
        async with self.hub.store.write() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.connect() as conn:
            yield conn

    # ------------------------------------------------------------------ loading

    async def reload(self) -> None:
        """Forget everything in memory and load rules, open alarms and window state (a restart)."""
        self.discard()
        async with self._read() as conn:
            rows = (await conn.execute(select(rules.c.tenant, rules.c.doc, rules.c.version, rules.c.enabled))).all()
            open_rows = (await conn.execute(select(alarms.c.tenant, alarms.c.entity_id, alarms.c.rule_id)
                                            .where(alarms.c.open_key.is_not(None)))).all()
            state_rows = (await conn.execute(select(rule_state.c.tenant, rule_state.c.rule_id,
                                                    rule_state.c.entity_id, rule_state.c.state))).all()
        self._load_rules(rows)
        for tenant, entity_id, rule_id in open_rows:
            self.engine.mark_open(tenant, entity_id, rule_id)
        for tenant, rule_id, entity_id, state in state_rows:
            self.engine.states[(tenant, rule_id, entity_id)] = dict(state)

    def discard(self) -> None:
        self.engine.tenants.clear()
        self.engine.states.clear()
        self.engine.dirty.clear()
        self.engine.open.clear()
        self._device_kinds.clear()

    async def refresh(self) -> None:
        """Re-read rules and open alarms (what other processes may have changed); window state stays."""
        async with self._read() as conn:
            rows = (await conn.execute(select(rules.c.tenant, rules.c.doc, rules.c.version, rules.c.enabled))).all()
            open_rows = (await conn.execute(select(alarms.c.tenant, alarms.c.entity_id, alarms.c.rule_id)
                                            .where(alarms.c.open_key.is_not(None)))).all()
        self.engine.tenants.clear()
        self._device_kinds.clear()
        self._load_rules(rows)
        self.engine.open.clear()
        for tenant, entity_id, rule_id in open_rows:
            self.engine.mark_open(tenant, entity_id, rule_id)

    def _load_rules(self, rows: Iterable[Any]) -> None:
        by_tenant: dict[str, list[tuple[dict[str, Any], int, bool]]] = {}
        for tenant, doc, version, enabled in rows:
            by_tenant.setdefault(tenant, []).append((dict(doc), int(version), bool(enabled)))
        for tenant, docs in by_tenant.items():
            self._index(tenant, docs)

    def _index(self, tenant: str, docs: list[tuple[dict[str, Any], int, bool]]) -> None:
        failed = self.engine.load_tenant(tenant, docs)
        for rule_id in failed:
            log.error("rule %s in tenant %r does not compile; it is not evaluated", rule_id, tenant)
        self._device_kinds[tenant] = {d["condition"]["device"] for d, _v, _e in docs if "device" in d["condition"]}

    async def _reindex(self, tenant: str) -> None:
        async with self._read() as conn:
            rows = (await conn.execute(select(rules.c.doc, rules.c.version, rules.c.enabled)
                                       .where(rules.c.tenant == tenant))).all()
        self._index(tenant, [(dict(d), int(v), bool(e)) for d, v, e in rows])

    # ------------------------------------------------------------------ rules

    @staticmethod
    def rule_view(row: Any) -> dict[str, Any]:
        return {**row.doc, "enabled": bool(row.enabled), "version": int(row.version),
                "createdAt": _iso(row.created_at), "createdBy": row.created_by,
                "updatedAt": _iso(row.updated_at), "updatedBy": row.updated_by}

    async def _docs(self, conn: AsyncConnection, tenant: str) -> dict[str, dict[str, Any]]:
        rows = await conn.execute(select(rules.c.id, rules.c.doc).where(rules.c.tenant == tenant))
        return {rule_id: dict(doc) for rule_id, doc in rows}

    async def validate(self, tenant: str, doc: Any, rule_id: str | None = None) -> dict[str, Any]:
        async with self._read() as conn:
            docs = await self._docs(conn, tenant)
        return spec.validate_rule(doc, rule_id=rule_id, lookup=docs.get)

    async def create_rule(self, tenant: str, doc: Any, actor: str | None = None) -> dict[str, Any]:
        now = clock.now()
        async with self._write() as conn:
            docs = await self._docs(conn, tenant)
            clean = spec.validate_rule(doc, lookup=docs.get)
            if clean["id"] in docs:
                raise AlreadyExists(f"rule {clean['id']!r} already exists; PUT /api/ops/rules/{clean['id']} "
                                    "stores a new version")
            last = (await conn.execute(select(func.max(rule_versions.c.version)).where(
                rule_versions.c.tenant == tenant, rule_versions.c.rule_id == clean["id"]))).scalar()
            version = int(last or 0) + 1
            await conn.execute(insert(rules).values(
                tenant=tenant, id=clean["id"], version=version, name=clean["name"], enabled=int(clean["enabled"]),
                severity=clean["severity"], department=clean.get("department"),
                entity_types=" ".join(clean["entityTypes"]), doc=clean, created_at=now, created_by=actor,
                updated_at=now, updated_by=actor))
            await conn.execute(insert(rule_versions).values(tenant=tenant, rule_id=clean["id"], version=version,
                                                            change="created", doc=clean, changed_at=now,
                                                            changed_by=actor))
        await self._reindex(tenant)
        return await self.get_rule(tenant, clean["id"])

    async def get_rule(self, tenant: str, rule_id: str) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(select(rules).where(rules.c.tenant == tenant, rules.c.id == rule_id))).first()
        if row is None:
            raise ResourceNotFound(f"rule {rule_id!r} not found")
        return self.rule_view(row)

    async def list_rules(self, tenant: str, *, enabled: bool | None = None, entity_type: str | None = None,
                         department: str | None = None, severity: str | None = None, limit: int = 100,
                         offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        conds = [rules.c.tenant == tenant]
        if enabled is not None:
            conds.append(rules.c.enabled == int(enabled))
        if department:
            conds.append(rules.c.department == department)
        if severity:
            conds.append(rules.c.severity == severity)
        if entity_type:
            padded = " " + rules.c.entity_types + " "
            conds.append(padded.contains(f" {entity_type} ", autoescape=True))
        async with self._read() as conn:
            total = int((await conn.execute(select(func.count()).select_from(rules).where(*conds))).scalar_one())
            rows = (await conn.execute(select(rules).where(*conds).order_by(rules.c.id).limit(limit)
                                       .offset(offset))).all()
        return [self.rule_view(r) for r in rows], total

    async def _current(self, conn: AsyncConnection, tenant: str, rule_id: str) -> Any:
        stmt = select(rules).where(rules.c.tenant == tenant, rules.c.id == rule_id)
        if self._postgres:
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise ResourceNotFound(f"rule {rule_id!r} not found")
        return row

    async def _new_version(self, conn: AsyncConnection, tenant: str, row: Any, doc: dict[str, Any], change: str,
                           actor: str | None) -> None:
        now = clock.now()
        version = int(row.version) + 1
        last = (await conn.execute(select(func.max(rule_versions.c.version)).where(
            rule_versions.c.tenant == tenant, rule_versions.c.rule_id == row.id))).scalar()
        version = max(version, int(last or 0) + 1)
        await conn.execute(update(rules).where(rules.c.tenant == tenant, rules.c.id == row.id).values(
            version=version, name=doc["name"], enabled=int(doc["enabled"]), severity=doc["severity"],
            department=doc.get("department"), entity_types=" ".join(doc["entityTypes"]), doc=doc, updated_at=now,
            updated_by=actor))
        await conn.execute(insert(rule_versions).values(tenant=tenant, rule_id=row.id, version=version, change=change,
                                                        doc=doc, changed_at=now, changed_by=actor))

    async def update_rule(self, tenant: str, rule_id: str, doc: Any, actor: str | None = None,
                          expected_version: int | None = None) -> dict[str, Any]:
        async with self._write() as conn:
            row = await self._current(conn, tenant, rule_id)
            if expected_version is not None and int(row.version) != expected_version:
                raise Conflict(f"rule {rule_id!r} is at version {row.version}, not {expected_version}")
            docs = await self._docs(conn, tenant)
            clean = spec.validate_rule(doc, rule_id=rule_id, lookup=docs.get)
            referrers = self._referrers(docs, rule_id)
            if referrers and "device" in clean["condition"]:
                raise spec.RuleError(f"condition: rule {rule_id!r} is referenced by {', '.join(referrers)} and "
                                     "cannot become a device rule")
            await self._new_version(conn, tenant, row, clean, "updated", actor)
        for affected in (rule_id, *referrers):
            self.engine.drop_rule_state(tenant, affected)
        await self._reindex(tenant)
        if not clean["enabled"]:
            await self._clear_rule_alarms(tenant, rule_id, "rule disabled", actor)
        return await self.get_rule(tenant, rule_id)

    async def set_enabled(self, tenant: str, rule_id: str, enabled: bool, actor: str | None = None) -> dict[str, Any]:
        async with self._write() as conn:
            row = await self._current(conn, tenant, rule_id)
            if bool(row.enabled) != enabled:
                doc = {**row.doc, "enabled": enabled}
                await self._new_version(conn, tenant, row, doc, "enabled" if enabled else "disabled", actor)
        self.engine.drop_rule_state(tenant, rule_id)
        await self._reindex(tenant)
        if not enabled:
            await self._clear_rule_alarms(tenant, rule_id, "rule disabled", actor)
        return await self.get_rule(tenant, rule_id)

    @staticmethod
    def _referrers(docs: Mapping[str, Mapping[str, Any]], rule_id: str) -> list[str]:
        return sorted(other for other, d in docs.items()
                      if other != rule_id and rule_id in spec.references(d["condition"]))

    async def delete_rule(self, tenant: str, rule_id: str, actor: str | None = None) -> None:
        async with self._write() as conn:
            row = await self._current(conn, tenant, rule_id)
            referrers = self._referrers(await self._docs(conn, tenant), rule_id)
            if referrers:
                raise Conflict(f"rule {rule_id!r} is referenced by {', '.join(referrers)}; change those first")
            last = (await conn.execute(select(func.max(rule_versions.c.version)).where(
                rule_versions.c.tenant == tenant, rule_versions.c.rule_id == rule_id))).scalar()
            await conn.execute(insert(rule_versions).values(
                tenant=tenant, rule_id=rule_id, version=int(last or row.version) + 1, change="deleted", doc=row.doc,
                changed_at=clock.now(), changed_by=actor))
            await conn.execute(delete(rules).where(rules.c.tenant == tenant, rules.c.id == rule_id))
        self.engine.drop_rule_state(tenant, rule_id)
        await self._reindex(tenant)
        await self._clear_rule_alarms(tenant, rule_id, "rule deleted", actor)

    async def versions(self, tenant: str, rule_id: str) -> list[dict[str, Any]]:
        async with self._read() as conn:
            rows = (await conn.execute(select(rule_versions).where(
                rule_versions.c.tenant == tenant, rule_versions.c.rule_id == rule_id)
                .order_by(rule_versions.c.version))).all()
        if not rows:
            raise ResourceNotFound(f"rule {rule_id!r} not found")
        return [{"version": int(r.version), "change": r.change, "changedAt": _iso(r.changed_at),
                 "changedBy": r.changed_by, "rule": r.doc} for r in rows]

    async def version(self, tenant: str, rule_id: str, version: int) -> dict[str, Any]:
        for item in await self.versions(tenant, rule_id):
            if item["version"] == version:
                return item
        raise ResourceNotFound(f"rule {rule_id!r} has no version {version}")

    async def install_defaults(self, tenant: str = "", actor: str | None = "system") -> list[str]:
        """Install the shipped default rules that the tenant does not have yet (idempotent)."""
        created: list[str] = []
        for doc in self.settings.defaults or load_default_rules():
            try:
                await self.create_rule(tenant, doc, actor)
                created.append(doc["id"])
            except AlreadyExists:
                continue
            except IntegrityError:
                continue  # another process installed it at the same moment
        return created

    # ------------------------------------------------------------------ events in

    async def on_entity_changed(self, event: Event) -> None:
        tenant = event.payload.get("tenant", "")
        change = event.payload.get("change")
        if change is None:
            return
        with RULE_EVALUATION.time():
            outcomes = self.engine.evaluate(tenant, change, clock.now().timestamp())
        battery = self._battery_recovered(tenant, change)
        if battery:
            outcomes.extend(battery)
        if outcomes:
            await self.apply(outcomes, event)

    def _battery_recovered(self, tenant: str, change: Any) -> list[Outcome]:
        after = change.after
        if after is None or self._battery not in change.changed_attrs or self._device_type not in after.types:
            return []
        index = self.engine.tenants.get(tenant)
        low = index.device.get("lowBattery") if index else None
        if not low:
            return []
        level = attr_value(after.attrs, self._battery)
        if not isinstance(level, int | float) or isinstance(level, bool) or level <= BATTERY_OK_PERCENT:
            return []
        found: list[Outcome] = []
        for rule in low:
            if self.engine.is_open(tenant, change.entity_id, rule.id):
                self.engine.mark_closed(tenant, change.entity_id, rule.id)
                found.append(Outcome(rule, tenant, change.entity_id, False, level, self.engine.meta(after),
                                     "battery recovered"))
        return found

    async def on_device_event(self, event: Event) -> None:
        payload = event.payload
        tenant = payload.get("tenant", "")
        device = payload.get("device")
        if not isinstance(device, str):
            return
        topic = event.topic
        if topic == "iot.device.online":
            kind, active = "offline", False
        elif topic == "iot.device.offline":
            kind, active = "offline", True
        elif topic == "iot.device.alarm" and payload.get("kind") == "lowBattery":
            kind, active = "lowBattery", True
        elif topic == "iot.data.quality" and payload.get("kind") in ("spike", "frozen"):
            kind, active = str(payload["kind"]), True
        else:
            return
        if active and self.settings.builtin_device_rules and kind not in self._device_kinds.get(tenant, set()):
            await self._install_builtin(tenant, kind)
        index = self.engine.tenants.get(tenant)
        targets = index.device.get(kind, []) if index else []
        if not targets:
            return
        value: Any = {"offline": payload.get("lastSeen"), "lowBattery": payload.get("battery")}.get(kind)
        if kind in ("spike", "frozen"):
            value = {"attr": payload.get("attr"), "value": payload.get("value")}
        outcomes: list[Outcome] = []
        meta: dict[str, Any] | None = None
        for rule in targets:
            is_open = self.engine.is_open(tenant, device, rule.id)
            if not active:
                if is_open:
                    self.engine.mark_closed(tenant, device, rule.id)
                    outcomes.append(Outcome(rule, tenant, device, False, value, {}, "device back online"))
                continue
            if meta is None:
                meta = {"type": "Device", "district": payload.get("district"),
                        "department": payload.get("department"),
                        "location": None if is_open else await self._location(tenant, device)}
            self.engine.mark_open(tenant, device, rule.id)
            outcomes.append(Outcome(rule, tenant, device, True, value, meta))
        if outcomes:
            await self.apply(outcomes, event)

    async def _location(self, tenant: str, entity_id: str) -> dict[str, Any] | None:
        try:
            record = await self.hub.retrieve(tenant, entity_id)
        except ProblemError:
            return None
        location: dict[str, Any] | None = self.engine.meta(record).get("location")
        return location

    async def _install_builtin(self, tenant: str, kind: str) -> None:
        for doc in self.settings.defaults or load_default_rules():
            if doc["condition"].get("device") == kind:
                with contextlib.suppress(AlreadyExists, IntegrityError):
                    await self.create_rule(tenant, doc, "system")
                return
        self._device_kinds.setdefault(tenant, set()).add(kind)  # nothing shipped for it: do not look again

    # ------------------------------------------------------------------ alarms

    async def apply(self, outcomes: list[Outcome], event: Event | None = None) -> list[dict[str, Any]]:
        """Write the outcomes in one transaction, then the Alert entities, then the bus events.

        `event` (the change that produced them) is claimed in that transaction: an event redelivered
        by JetStream (its acknowledgement lost) counts an alarm once, not twice. Only events with
        outcomes are recorded, so the claim costs nothing on the readings that raise nothing."""
        applied: list[_Applied] = []
        now = clock.now()
        async with self._write() as conn:
            if not await claim(conn, "rules", event):
                return []
            for outcome in outcomes:
                result = await (self._raise(conn, outcome, now) if outcome.active
                                else self._auto_clear(conn, outcome, now))
                if result is not None:
                    applied.append(result)
        await self._publish(applied)
        return [a.alarm for a in applied]

    async def _raise(self, conn: AsyncConnection, outcome: Outcome, now: datetime) -> _Applied | None:
        rule = outcome.rule
        key = f"{rule.id} {outcome.entity_id}"
        seen = from_epoch(outcome.at) if outcome.at else now
        row = (await conn.execute(update(alarms).where(alarms.c.tenant == outcome.tenant, alarms.c.open_key == key)
                                  .values(count=alarms.c.count + 1, value={"v": outcome.value}, last_seen=seen,
                                          updated_at=now).returning(*alarms.c))).first()
        if row is not None:
            return _Applied.of(TOPIC_UPDATED, row, False)
        doc = rule.doc
        incident = doc.get("incident") or {}
        meta = outcome.meta
        category = doc.get("category") or ("device" if rule.device else
                                           str(incident.get("category", "cityOperations")).split(".")[0])
        values = dict(
            tenant=outcome.tenant, rule_id=rule.id, rule_version=rule.version, rule_name=rule.name,
            entity_id=outcome.entity_id, entity_type=meta.get("type"), status="active", severity=rule.severity,
            category=category, sub_category=doc.get("subCategory") or rule.device or rule.id,
            description=doc.get("description") or rule.name, district=meta.get("district"),
            department=meta.get("department") or rule.department, incident_category=incident.get("category"),
            incident_level=incident.get("level"), value={"v": outcome.value}, location=meta.get("location"), count=1,
            raised_at=seen, last_seen=seen, open_key=key, hub_synced=0, updated_at=now)
        try:
            async with conn.begin_nested():
                row = (await conn.execute(insert(alarms).values(**values).returning(*alarms.c))).first()
        except IntegrityError:
            # Another process opened it a moment ago: this is a repeat.
            row = (await conn.execute(update(alarms).where(alarms.c.tenant == outcome.tenant,
                                                           alarms.c.open_key == key)
                                      .values(count=alarms.c.count + 1, value={"v": outcome.value}, last_seen=seen,
                                              updated_at=now).returning(*alarms.c))).first()
            return _Applied.of(TOPIC_UPDATED, row, False) if row is not None else None
        assert row is not None
        return _Applied.of(TOPIC_RAISED, row, True)

    async def _auto_clear(self, conn: AsyncConnection, outcome: Outcome, now: datetime) -> _Applied | None:
        key = f"{outcome.rule.id} {outcome.entity_id}"
        row = (await conn.execute(update(alarms).where(alarms.c.tenant == outcome.tenant, alarms.c.open_key == key)
                                  .values(status="cleared", cleared_at=now, cleared_by="system",
                                          clear_reason=outcome.reason[:256] or "condition no longer holds",
                                          open_key=None, hub_synced=0, updated_at=now)
                                  .returning(*alarms.c))).first()
        return _Applied.of(TOPIC_CLEARED, row, True) if row is not None else None

    async def _clear_rule_alarms(self, tenant: str, rule_id: str, reason: str, actor: str | None) -> None:
        now = clock.now()
        async with self._write() as conn:
            rows = (await conn.execute(update(alarms).where(alarms.c.tenant == tenant, alarms.c.rule_id == rule_id,
                                                            alarms.c.open_key.is_not(None))
                                       .values(status="cleared", cleared_at=now, cleared_by=actor or "system",
                                               clear_reason=reason, open_key=None, hub_synced=0, updated_at=now)
                                       .returning(*alarms.c))).all()
        for row in rows:
            self.engine.mark_closed(tenant, row.entity_id, rule_id)
        await self._publish([_Applied.of(TOPIC_CLEARED, r, True) for r in rows])

    async def _publish(self, applied: list[_Applied]) -> None:
        if not applied:
            return
        by_tenant: dict[str, dict[int, dict[str, Any]]] = {}
        for item in applied:
            if item.hub:
                by_tenant.setdefault(item.tenant, {})[item.alarm["id"]] = item.alarm  # the latest state wins
        for tenant, items in by_tenant.items():
            await self._sync_alerts(tenant, list(items.values()))
        for item in applied:
            await self.bus.publish(item.topic, {"tenant": item.tenant, "alarm": item.alarm})

    async def _sync_alerts(self, tenant: str, items: list[dict[str, Any]]) -> None:
        """Write the Alert entities; mark the alarms synced when the hub accepted them."""
        guard = getattr(hub_service_module, "write_guard", None)
        token = guard.set(None) if guard is not None else None  # our own write, not the caller's
        try:
            result = await self.hub.batch_write(tenant, [alert_entity(a) for a in items], self.ctx, "upsert", set())
        except Exception as exc:
            log.warning("writing %d Alert entities failed (retried later): %r", len(items), exc)
            return
        finally:
            if guard is not None and token is not None:
                guard.reset(token)
        done = set(result.success)
        if result.errors:
            log.warning("the hub refused Alert entities: %s", result.errors[:3])
        synced = [{"b_id": a["id"], "b_status": a["status"]} for a in items if a["alertId"] in done]
        if synced:
            async with self._write() as conn:
                await conn.execute(update(alarms).where(alarms.c.id == bindparam("b_id"),
                                                        alarms.c.status == bindparam("b_status"))
                                   .values(hub_synced=1), synced)

    async def sync_pending(self, limit: int = 500) -> int:
        """Write Alert entities that an earlier attempt could not (the alarm outbox)."""
        async with self._read() as conn:
            rows = (await conn.execute(select(alarms).where(alarms.c.hub_synced == 0).order_by(alarms.c.id)
                                       .limit(limit))).all()
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant, []).append(alarm_view(row))
        for tenant, items in by_tenant.items():
            await self._sync_alerts(tenant, items)
        return len(rows)

    async def get_alarm(self, tenant: str, alarm_id: int) -> dict[str, Any]:
        async with self._read() as conn:
            row = (await conn.execute(select(alarms).where(alarms.c.tenant == tenant, alarms.c.id == alarm_id))).first()
        if row is None:
            raise ResourceNotFound(f"alarm {alarm_id} not found")
        return alarm_view(row)

    async def list_alarms(self, tenant: str, *, status: str | None = None, severity: str | None = None,
                          entity_type: str | None = None, district: str | None = None,
                          department: str | None = None, rule_id: str | None = None, entity_id: str | None = None,
                          limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        conds = [alarms.c.tenant == tenant]
        if status == "open":
            conds.append(alarms.c.open_key.is_not(None))
        elif status:
            conds.append(alarms.c.status == status)
        for column, value in ((alarms.c.severity, severity), (alarms.c.entity_type, entity_type),
                              (alarms.c.district, district), (alarms.c.department, department),
                              (alarms.c.rule_id, rule_id), (alarms.c.entity_id, entity_id)):
            if value:
                conds.append(column == value)
        async with self._read() as conn:
            total = int((await conn.execute(select(func.count()).select_from(alarms).where(*conds))).scalar_one())
            rows = (await conn.execute(select(alarms).where(*conds).order_by(alarms.c.id.desc()).limit(limit)
                                       .offset(offset))).all()
        return [alarm_view(r) for r in rows], total

    async def acknowledge(self, tenant: str, alarm_id: int, actor: str) -> dict[str, Any]:
        now = clock.now()
        async with self._write() as conn:
            row = (await conn.execute(update(alarms).where(alarms.c.tenant == tenant, alarms.c.id == alarm_id,
                                                           alarms.c.status == "active")
                                      .values(status="acknowledged", acknowledged_at=now, acknowledged_by=actor,
                                              hub_synced=0, updated_at=now).returning(*alarms.c))).first()
        if row is None:
            current = await self.get_alarm(tenant, alarm_id)  # 404 when it does not exist
            raise Conflict(f"alarm {alarm_id} is {current['status']}; only an active alarm can be acknowledged")
        applied = _Applied.of(TOPIC_UPDATED, row, True)
        await self._publish([applied])
        return applied.alarm

    async def clear(self, tenant: str, alarm_id: int, actor: str, reason: str | None = None) -> dict[str, Any]:
        now = clock.now()
        async with self._write() as conn:
            row = (await conn.execute(update(alarms).where(alarms.c.tenant == tenant, alarms.c.id == alarm_id,
                                                           alarms.c.status != "cleared")
                                      .values(status="cleared", cleared_at=now, cleared_by=actor,
                                              clear_reason=(reason or "cleared by hand")[:256], open_key=None,
                                              hub_synced=0, updated_at=now).returning(*alarms.c))).first()
        if row is None:
            await self.get_alarm(tenant, alarm_id)
            raise Conflict(f"alarm {alarm_id} is already cleared")
        self.engine.mark_closed(tenant, row.entity_id, row.rule_id)
        applied = _Applied.of(TOPIC_CLEARED, row, True)
        await self._publish([applied])
        return applied.alarm

    # ------------------------------------------------------------------ window state and the timer

    async def flush(self) -> int:
        """Write the changed window states in one transaction (deleted ones are removed)."""
        async with self._flush_lock:
            keys = self.engine.dirty
            if not keys:
                return 0
            self.engine.dirty = set()
            now = clock.now()
            rows: list[dict[str, Any]] = []
            gone: list[dict[str, Any]] = []
            for tenant, rule_id, entity_id in keys:
                state = self.engine.states.get((tenant, rule_id, entity_id))
                if state is None:
                    gone.append({"b_tenant": tenant, "b_rule": rule_id, "b_entity": entity_id})
                else:
                    due = state.get("due")
                    rows.append({"tenant": tenant, "rule_id": rule_id, "entity_id": entity_id, "state": state,
                                 "due_at": from_epoch(due) if due is not None else None, "updated_at": now})
            try:
                async with self._write() as conn:
                    if gone:
                        await conn.execute(delete(rule_state).where(
                            rule_state.c.tenant == bindparam("b_tenant"), rule_state.c.rule_id == bindparam("b_rule"),
                            rule_state.c.entity_id == bindparam("b_entity")), gone)
                    if rows:
                        stmt = (pg_insert(rule_state) if self._postgres else sqlite_insert(rule_state))
                        stmt = stmt.on_conflict_do_update(
                            index_elements=[rule_state.c.tenant, rule_state.c.rule_id, rule_state.c.entity_id],
                            set_={"state": stmt.excluded.state, "due_at": stmt.excluded.due_at,
                                  "updated_at": stmt.excluded.updated_at})
                        await conn.execute(stmt, rows)
            except Exception:
                self.engine.dirty |= keys
                raise
            return len(keys)

    async def tick(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The timer: evaluate windowed (rule, entity) pairs whose due time has passed; returns what changed."""
        moment = now or clock.now()
        async with self._tick_lock:
            await self.flush()
            async with self._read() as conn:
                due = (await conn.execute(select(rule_state.c.tenant, rule_state.c.rule_id, rule_state.c.entity_id)
                                          .where(rule_state.c.due_at <= moment))).all()
            outcomes: list[Outcome] = []
            for tenant, rule_id, entity_id in due:
                key: Key = (tenant, rule_id, entity_id)
                outcome = self.engine.evaluate_due(key, epoch(moment))
                if outcome is not None:
                    outcomes.append(outcome)
            changed = await self.apply(outcomes) if outcomes else []
            await self.flush()
            await self.sync_pending()
        return changed

    async def run(self, stop: asyncio.Event) -> None:
        """The background loop: timer, write-behind of window state, Alert retries, rule resync."""
        last_tick = last_resync = asyncio.get_running_loop().time()
        step = max(0.05, min(self.settings.flush_seconds, self.settings.tick_seconds))
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), step)
            if stop.is_set():
                break
            now = asyncio.get_running_loop().time()
            try:
                await self.flush()
                if now - last_tick >= self.settings.tick_seconds:
                    last_tick = now
                    await self.tick()
                if now - last_resync >= self.settings.resync_seconds:
                    last_resync = now
                    await self.refresh()
            except Exception as exc:
                log.error("ops.rules background step failed: %r", exc)
        with contextlib.suppress(Exception):
            await self.flush()


__all__ = ["TOPIC_CLEARED", "TOPIC_RAISED", "TOPIC_UPDATED", "RulesService", "RulesSettings", "alarm_view",
           "alert_entity", "alert_id", "load_default_rules"]
