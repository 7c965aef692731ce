"""The IoT domain's logic: registry, provisioning, tokens, payload validation and mapping, dead letters.

The RPC request store (`rpc_requests.py`) and the dead letters' reading (`dead_letter_reader.py`) live in
their own modules and are mixed into `IotService`, one object per tenant for its callers.

No HTTP and no MQTT here: `ingest(envelopes)` takes already-received messages (from the MQTT
worker, the HTTP device API or a replay), and commits, in ONE transaction:

- the readings, through `cityos.hub.observations.upsert_observations` (newest observedAt wins,
  every reading in history, duplicates stored once);
- the Device entities' status/battery/last-seen changes;
- the registry rows (last seen, status, battery, data-quality state);
- a dead letter for every message or reading that could not be used, with its reason.

Only after that commit may a caller acknowledge the messages. Events (`iot.device.alarm`,
`iot.device.online`, `iot.data.quality`) go on the event bus after the commit, through a bounded
background publisher (`self.events`), so slow handlers never hold up the acknowledgements.

Python API for in-process callers (the simulator):

    iot = app.state.iot                                # an IotService
    device_id, token = await iot.provision(DeviceIn(name="aq-1", profile="air-quality", lon=110.3, lat=20.0,
                                                     district="Meilan", department="EPB"))
    result = await iot.provision_many([DeviceIn(...), ...])   # BulkResult: .created [{row,id,name,token}], .errors
    report = await iot.ingest([Envelope.telemetry("aq-1", b'{"pm25": 12}')])
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import and_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_int
from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import AlreadyExists, BadRequestData, Conflict, ProblemError, ResourceNotFound
from cityos.core.events import BackgroundPublisher, EventBus
from cityos.hub.model import check_name
from cityos.hub.observations import ObservedEntity, Reading, upsert_observations
from cityos.hub.service import HubService
from cityos.hub.sources import SourceConflict, Writer, refusal_reason
from cityos.iot.dead_letter_reader import DeadLetterReader
from cityos.iot.models import (
    NAME_PATTERN,
    Device,
    DeviceIn,
    KeySpec,
    Profile,
    dead_letters,
    device_id,
    device_name,
    devices,
    load_profiles,
)
from cityos.iot.outbox import EventOutbox
from cityos.iot.rpc_requests import RpcRequests
from cityos.iot.units import UNIT_SEPARATOR, UnitError, to_canonical
from cityos.security.policy import Principal, Resource, authorize

log = logging.getLogger("cityos.iot")

TOPIC_ALARM = "iot.device.alarm"
TOPIC_ONLINE = "iot.device.online"
TOPIC_OFFLINE = "iot.device.offline"
TOPIC_QUALITY = "iot.data.quality"
TOPIC_CREDENTIALS = "iot.device.credentials"  # a token rotated or revoked, or the device deleted
TOPIC_PROVISIONED = "iot.device.provisioned"  # devices registered (with their first tokens)
BATTERY_ALARM_PERCENT = 20.0
FIRMWARE_KEYS = ("fw_version", "firmwareVersion", "firmware")
KINDS = ("telemetry", "attributes", "gateway/connect", "gateway/disconnect", "gateway/telemetry",
         "gateway/attributes", "rpc/response")



@dataclass(frozen=True)
class IotSettings:
    max_payload_bytes: int = field(default_factory=lambda: env_int("CITYOS_IOT_MAX_PAYLOAD", 1024 * 1024))
    offline_intervals: int = field(default_factory=lambda: env_int("CITYOS_IOT_OFFLINE_INTERVALS", 3))
    backfill_hours: int = field(default_factory=lambda: env_int("CITYOS_IOT_BACKFILL_HOURS", 72))
    future_skew_seconds: int = field(default_factory=lambda: env_int("CITYOS_IOT_FUTURE_SKEW", 300))
    # Dead letters keep at most this much of a rejected payload (an attacker's 1 MiB stays out).
    dead_letter_bytes: int = field(default_factory=lambda: env_int("CITYOS_IOT_DEAD_LETTER_BYTES", 64 * 1024))
    # The Device entity's dateLastValueReported is refreshed at most every max(reporting interval, this):
    # rewriting it on every report doubled the entity writes of ingestion. The registry's last_seen,
    # which health uses, is exact.
    reported_every_seconds: int = field(default_factory=lambda: env_int("CITYOS_IOT_REPORTED_SECONDS", 300))
    # Devices may connect straight to NATS's MQTT listener: keep a bcrypt of each new token for its
    # generated users (deploy/nats-mqtt.md). Off by default: a bcrypt costs ~1-10 ms per device.
    nats_mqtt: bool = field(default_factory=lambda: env_int("CITYOS_NATS_MQTT", 0) == 1)
    # Device events still in the outbox after this long were left by a process that died: republished.
    event_redeliver_seconds: int = field(default_factory=lambda: env_int("CITYOS_IOT_EVENT_REDELIVER_SECONDS", 60))


def new_token() -> str:
    """160 random bits, URL-safe: what a device's firmware stores (ThingsBoard tokens are 20 chars)."""
    return secrets.token_urlsafe(20)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------------- messages


@dataclass
class Envelope:
    """One inbound message. `device` is the authenticated sender's name (None: unknown token)."""

    device: str | None
    kind: str
    payload: bytes
    source: str = "mqtt"
    topic: str | None = None
    received_at: datetime = field(default_factory=clock.now)
    rpc_id: int | None = None
    reason: str | None = None  # set when the transport already knows it is bad (unknown token, oversize)
    detail: str = ""
    replay_of: int | None = None  # dead-letter id being replayed

    @classmethod
    def telemetry(cls, device: str, payload: bytes | Any, source: str = "api") -> Envelope:
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return cls(device, "telemetry", raw, source)


@dataclass
class Rejection:
    reason: str
    detail: str
    device: str | None
    kind: str
    payload: bytes
    topic: str | None = None
    source: str = "mqtt"


@dataclass
class IngestReport:
    messages: int = 0
    readings: int = 0  # readings that passed validation
    stored: int = 0  # ... and were not duplicates
    duplicates: int = 0
    dead_letters: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    per_envelope: list[tuple[int, int]] = field(default_factory=list)  # (valid readings, rejections)


@dataclass
class BulkResult:
    created: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


class ReplayRejected(ProblemError):
    status, error_type, title = 422, "BadRequestData", "The replayed payload is still invalid"


_PLAIN_NUMBERS = (int, float)  # exact types: bool is an int subclass and is not a number here


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_series(doc: Any) -> list[tuple[Any, Any]]:
    """ThingsBoard payload forms → [(ts or None, values)]: flat, {ts, values}, or an array of these."""
    items = doc if isinstance(doc, list) else [doc]
    out: list[tuple[Any, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each entry must be a JSON object")
        if "values" in item and set(item) <= {"ts", "values"}:
            out.append((item.get("ts"), item["values"]))
        else:
            out.append((None, item))
    return out


def _ts_of(raw: Any, received: datetime, settings: IotSettings) -> datetime:
    if raw is None:
        return received
    if not _num(raw) or raw < 0:
        raise ValueError(f"ts must be epoch milliseconds, got {str(raw)[:40]!r}")
    ts = datetime.fromtimestamp(int(raw) / 1000, UTC)
    if ts > received + timedelta(seconds=settings.future_skew_seconds):
        raise ValueError(f"ts {int(raw)} is in the future")
    if ts < received - timedelta(hours=settings.backfill_hours):
        raise ValueError(f"ts {int(raw)} is older than the {settings.backfill_hours} h backfill window")
    return ts


def check_value(spec: KeySpec, value: Any) -> tuple[str, str] | None:
    """(reason, detail) when the value does not fit the key's profile, else None."""
    if spec.kind == "boolean":
        return None if isinstance(value, bool) else ("wrong_type", f"{spec.key} must be a boolean")
    if spec.kind == "string":
        if not isinstance(value, str):
            return "wrong_type", f"{spec.key} must be a string"
        if spec.enum and value not in spec.enum:
            return "out_of_range", f"{spec.key}={value[:40]!r} is not one of {', '.join(spec.enum)}"
        return None
    if not _num(value):
        return "wrong_type", f"{spec.key} must be a finite number, got {type(value).__name__}"
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        return "out_of_range", f"{spec.key}={value} is outside [{spec.min}, {spec.max}]"
    return None


# ---------------------------------------------------------------------- the service


@dataclass
class _Batch:
    """What one ingest transaction accumulates (reset when the transaction is retried)."""

    rejections: list[Rejection] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)  # the events' rows in the outbox
    readings: int = 0
    per_envelope: list[tuple[int, int]] = field(default_factory=list)
    source_refusals: list[SourceConflict] = field(default_factory=list)  # 一数一源, listed once committed


@dataclass
class DeviceCall:
    """What a device's report over HTTP or CoAP comes to: ok, unauthorized, oversize or rejected."""

    outcome: str
    detail: str = ""
    report: IngestReport | None = None

    def body(self) -> dict[str, Any]:
        """The answer's JSON body when the report was taken (ok), or the rejections' list."""
        report = self.report
        if report is None:
            return {}
        rejected = [{"reason": r.reason, "detail": r.detail} for r in report.rejections]
        if self.outcome != "ok":
            return {"rejected": rejected}
        body: dict[str, Any] = {"readings": report.readings, "stored": report.stored,
                                "duplicates": report.duplicates}
        if rejected:
            body["rejected"] = rejected
        return body


LAST_PROFILE_CACHE = 500_000  # device names remembered for early validation (a city-size registry)


class IotService(RpcRequests, DeadLetterReader):
    def __init__(self, hub: HubService, engine: AsyncEngine, bus: EventBus, expand: Any, tenant: str = "",
                 settings: IotSettings | None = None) -> None:
        self.hub = hub
        self.engine = engine
        self.bus = bus
        self.events = BackgroundPublisher(bus)
        self.expand = expand
        self.tenant = tenant
        self.settings = settings or IotSettings()
        self.outbox = EventOutbox(engine, bus, self.events, tenant, hub.store.write,
                                  self.settings.event_redeliver_seconds)
        bus.outboxed(TOPIC_ALARM, TOPIC_ONLINE, TOPIC_OFFLINE, TOPIC_QUALITY)  # they cross processes from the outbox
        self.profiles: dict[str, Profile] = load_profiles()
        self._postgres = engine.dialect.name == "postgresql"
        self._type_iri: dict[str, str] = {}
        self._iris: dict[str, str] = {}
        # device name → its profile when last read under lock: a hint for validating early (`_check_early`)
        self._last_profile: dict[str, str] = {}
        # device name → how often its credentials changed in this process (sessions remember the epoch they began in)
        self.token_epoch: dict[str, int] = {}

    # ------------------------------------------------------------------ profiles

    def profile(self, profile_id: str) -> Profile:
        found = self.profiles.get(profile_id)
        if found is None:
            raise ResourceNotFound(f"device profile {profile_id!r} not found")
        return found

    def observed_id(self, profile: Profile, name: str) -> str:
        return f"urn:ngsi-ld:{profile.entity_type}:{name}"

    def _iri(self, term: str) -> str:
        found = self._iris.get(term)
        if found is None:  # the core context is fixed: a term always expands to the same IRI
            found = self._iris[term] = self.expand(term)
        return found

    # ------------------------------------------------------------------ registry

    async def provision(self, spec: DeviceIn | dict[str, Any]) -> tuple[str, str]:
        """Register one device and create its hub entities; returns (device id, token). The token is shown once."""
        result = await self.provision_many([spec])
        if result.errors:
            error = result.errors[0]["error"]
            raise (AlreadyExists if error["status"] == 409 else BadRequestData)(error["detail"])
        row = result.created[0]
        return row["id"], row["token"]

    async def provision_many(self, specs: Sequence[DeviceIn | dict[str, Any]], first_row: int = 0) -> BulkResult:
        """Register many devices in one transaction; invalid rows are reported with their row number."""
        result = BulkResult()
        valid: list[tuple[int, DeviceIn]] = []
        names: set[str] = set()
        for index, raw in enumerate(specs):
            row = first_row + index
            try:
                spec = raw if isinstance(raw, DeviceIn) else DeviceIn.model_validate(raw)
                if spec.profile not in self.profiles:
                    raise BadRequestData(f"unknown device profile {spec.profile!r}")
                if spec.name in names:
                    raise AlreadyExists(f"device {spec.name!r} appears twice")
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                result.errors.append({"row": row, "error": BadRequestData(detail).to_problem()})
                continue
            except ProblemError as exc:
                result.errors.append({"row": row, "error": exc.to_problem()})
                continue
            names.add(spec.name)
            valid.append((row, spec))
        if not valid:
            return result
        tokens: dict[str, str] = {}
        nats_secrets: dict[str, str | None] = {}

        async def prepare(conn: AsyncConnection) -> list[ObservedEntity]:
            result.created.clear()
            del result.errors[len(result.errors) - sum(1 for e in result.errors if e.get("_db")):]
            taken = await self._existing_names(conn, [s.name for _, s in valid])
            now = clock.now()
            rows: list[dict[str, Any]] = []
            items: list[ObservedEntity] = []
            for row_no, spec in valid:
                if spec.name in taken:
                    result.errors.append({"row": row_no, "_db": True,
                                          "error": AlreadyExists(f"device {spec.name!r} already exists").to_problem()})
                    continue
                token = tokens.setdefault(spec.name, new_token())
                if spec.name not in nats_secrets:
                    nats_secrets[spec.name] = self._nats_secret(token)
                rows.append({"tenant": self.tenant, "id": device_id(spec.name), "name": spec.name,
                             "profile_id": spec.profile, "lon": spec.lon, "lat": spec.lat, "district": spec.district,
                             "department": spec.department, "status": "inactive", "firmware": spec.firmware,
                             "token_hash": hash_token(token), "nats_secret": nats_secrets[spec.name],
                             "gateway": 1 if spec.gateway else 0,
                             "gateway_name": spec.gatewayName, "quality": {}, "created_at": now,
                             "updated_at": now})
                result.created.append({"row": row_no, "id": device_id(spec.name), "name": spec.name, "token": token})
                device = Device(self.tenant, device_id(spec.name), spec.name, spec.profile, spec.lon, spec.lat,
                                spec.district, spec.department, "inactive", spec.firmware, spec.gateway,
                                spec.gatewayName, None, None, None, None, {}, now)
                items.extend(self._initial_entities(device))
            if rows:
                await conn.execute(insert(devices), rows)
            return items

        await upsert_observations(self.hub, self.tenant, prepare=prepare)
        if result.created:
            await self.bus.publish(TOPIC_PROVISIONED, {"tenant": self.tenant,
                                                       "devices": [row["name"] for row in result.created]})
        for error in result.errors:
            error.pop("_db", None)
        result.errors.sort(key=lambda e: e["row"])
        return result

    async def _existing_names(self, conn: AsyncConnection, names: list[str]) -> set[str]:
        if self._postgres:  # a join, not IN: see geoquery.delete_geometries on bulk loads without statistics
            rows = await conn.execute(text(
                "SELECT d.name FROM iot_devices AS d JOIN unnest(CAST(:names AS text[])) AS u(name) "
                "ON d.name = u.name WHERE d.tenant = :tenant"), {"names": names, "tenant": self.tenant})
        else:
            rows = await conn.execute(select(devices.c.name).where(devices.c.tenant == self.tenant,
                                                                   devices.c.name.in_(names)))
        return {r.name for r in rows}

    def _initial_entities(self, device: Device, gateway: Device | None = None) -> list[ObservedEntity]:
        profile = self.profile(device.profile_id)
        static = self._device_static(device, profile)
        items = [ObservedEntity(device.id, self._iri("Device"), [], static)]
        observed = self.observed_id(profile, device.name)
        if observed != device.id:
            items.append(ObservedEntity(observed, self._iri(profile.entity_type), [],
                                        self._observed_static(device)))
        return items

    def _location(self, device: Device) -> dict[str, Any] | None:
        if device.lon is None or device.lat is None:
            return None
        return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [device.lon, device.lat]}}

    def _device_static(self, device: Device, profile: Profile) -> dict[str, list[dict[str, Any]]]:
        attrs: dict[str, list[dict[str, Any]]] = {
            self._iri("name"): [{"type": "Property", "value": device.name}],
            self._iri("deviceCategory"): [{"type": "Property", "value": profile.category or profile.id}],
            self._iri("deviceProfile"): [{"type": "Property", "value": profile.id}],
            self._iri("deviceState"): [{"type": "Property", "value": device.status}],
            self._iri("isGateway"): [{"type": "Property", "value": device.gateway}],
        }
        location = self._location(device)
        if location:
            attrs[self._iri("location")] = [location]
        for key, value in (("district", device.district), ("department", device.department),
                           ("firmwareVersion", device.firmware)):
            if value is not None:
                attrs[self._iri(key)] = [{"type": "Property", "value": value}]
        if device.gateway_name:
            attrs[self._iri("refGateway")] = [{"type": "Relationship", "object": device_id(device.gateway_name)}]
        return attrs

    def _observed_static(self, device: Device) -> dict[str, list[dict[str, Any]]]:
        attrs: dict[str, list[dict[str, Any]]] = {
            self._iri("refDevice"): [{"type": "Relationship", "object": device.id}]}
        location = self._location(device)
        if location:
            attrs[self._iri("location")] = [location]
        if device.district is not None:
            attrs[self._iri("district")] = [{"type": "Property", "value": device.district}]
        return attrs

    async def import_csv(self, text: str) -> BulkResult:
        """CSV with a header row: name,profile,lon,lat,district,department[,firmware,gateway]. Row 1 is the header."""
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"name", "profile"} <= {f.strip() for f in reader.fieldnames}:
            raise BadRequestData("the CSV needs a header row with at least the columns name and profile")
        specs: list[dict[str, Any]] = []
        for record in reader:
            row = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in record.items() if k}
            spec: dict[str, Any] = {k: v for k, v in row.items() if v not in ("", None)}
            if "gateway" in spec:
                spec["gateway"] = str(spec["gateway"]).lower() in ("1", "true", "yes", "y")
            specs.append(spec)
        return await self.provision_many(specs, first_row=2)

    async def list_devices(self, *, profile: str | None = None, district: str | None = None,
                           department: str | None = None, status: str | None = None, gateway: bool | None = None,
                           limit: int = 100, offset: int = 0) -> tuple[list[Device], int]:
        conds = [devices.c.tenant == self.tenant]
        for column, value in ((devices.c.profile_id, profile), (devices.c.district, district),
                              (devices.c.department, department), (devices.c.status, status)):
            if value is not None:
                conds.append(column == value)
        if gateway is not None:
            conds.append(devices.c.gateway == (1 if gateway else 0))
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(devices).where(and_(*conds)))).scalar_one()
            rows = await conn.execute(select(devices).where(and_(*conds)).order_by(devices.c.name)
                                      .limit(limit).offset(offset))
            return [Device.from_row(r) for r in rows], int(total)

    async def get_device(self, ident: str) -> Device:
        name = device_name(ident)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(devices).where(devices.c.tenant == self.tenant,
                                                            devices.c.name == name))).first()
        if row is None:
            raise ResourceNotFound(f"device {ident!r} not found")
        return Device.from_row(row)

    async def rotate_token(self, ident: str) -> str:
        device = await self.get_device(ident)
        token = new_token()
        await self._set_token(device, hash_token(token), self._nats_secret(token))
        return token

    async def revoke_token(self, ident: str) -> None:
        await self._set_token(await self.get_device(ident), None, None)

    def _nats_secret(self, token: str) -> str | None:
        if not self.settings.nats_mqtt:
            return None
        from cityos.iot.nats_mqtt import nats_password_hash

        return nats_password_hash(token)

    async def _set_token(self, device: Device, token_hash: str | None, nats_secret: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(devices).where(devices.c.tenant == self.tenant, devices.c.id == device.id)
                               .values(token_hash=token_hash, nats_secret=nats_secret, updated_at=clock.now()))
        await self._credentials_changed(device)

    async def _credentials_changed(self, device: Device) -> None:
        """Sessions opened with the device's old token must end now, not at their next reconnect: an
        embedded broker in this process checks `token_epoch` on every message and drops the session
        on the event; an outside broker re-asks `/mqtt/acl`, which checks the token (deploy/iot.md)."""
        self.token_epoch[device.name] = self.token_epoch.get(device.name, 0) + 1
        await self.bus.publish(TOPIC_CREDENTIALS, {**self._event(device), "epoch": self.token_epoch[device.name]})

    async def delete_device(self, ident: str) -> None:
        device = await self.get_device(ident)
        async with self.engine.begin() as conn:
            await conn.execute(delete(devices).where(devices.c.tenant == self.tenant, devices.c.id == device.id))
        await self._credentials_changed(device)
        with contextlib.suppress(ResourceNotFound):
            await self.hub.delete_entity(self.tenant, device.id)

    async def device_by_token(self, token: str) -> Device | None:
        if not token or len(token) > 256:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(devices).where(devices.c.token_hash == hash_token(token)))).first()
        return Device.from_row(row) if row is not None else None

    async def device_report(self, token: str, kind: str, raw: bytes, source: str,
                            oversize: bool = False) -> DeviceCall:
        """A device's own report over a request/response protocol (HTTP, CoAP): authenticate its token,
        ingest, and say what to answer. What is refused is dead-lettered like an MQTT message."""
        device = await self.device_by_token(token)
        name = device.name if device is not None else None
        topic = f"/api/v1/***/{kind}"
        limit = self.settings.max_payload_bytes
        if device is None:
            await self.ingest([Envelope(None, kind, raw, source, topic, reason="unknown_token",
                                        detail="unknown or revoked access token")])
            return DeviceCall("unauthorized", "unknown or revoked access token")
        if oversize or len(raw) > limit:
            await self.ingest([Envelope(name, kind, raw[:self.settings.dead_letter_bytes], source, topic,
                                        reason="oversize", detail=f"more than {limit} bytes")])
            return DeviceCall("oversize", f"the payload is larger than {limit} bytes")
        principal = Principal.device(device.id, device.tenant, device.department, device.district)
        if not authorize(principal, "telemetry.write", Resource("device", device.tenant, id=device.id,
                                                                owner=device.id)):
            return DeviceCall("unauthorized", "this device may not send telemetry")
        report = await self.ingest([Envelope(name, kind, raw, source, topic)])
        if report.rejections and report.readings == 0:
            first = report.rejections[0]
            return DeviceCall("rejected", f"{first.reason}: {first.detail}", report)
        return DeviceCall("ok", "", report)

    # ------------------------------------------------------------------ broker integration

    async def mqtt_authenticate(self, username: str | None) -> Device | None:
        """The broker's authentication hook: username = device access token (ThingsBoard convention)."""
        device = await self.device_by_token(username or "")
        if device is None or device.status == "disabled":
            return None
        return device

    @staticmethod
    def mqtt_allowed(device: Device, topic: str, action: str, prefix: str) -> bool:
        """A device may publish to its own ThingsBoard topics (or their mapped form) and read its RPC requests."""
        own = f"{prefix}/{device.name}/"
        if action == "publish":
            mine = ("v1/devices/me/telemetry", "v1/devices/me/attributes", "v1/devices/me/rpc/response/", own)
            return topic.startswith(mine) or (device.gateway and topic.startswith("v1/gateway/"))
        return topic.startswith(("v1/devices/me/rpc/request/", own + "rpc/request/", "v1/devices/me/attributes"))

    # ------------------------------------------------------------------ ingestion

    async def ingest(self, envelopes: Sequence[Envelope]) -> IngestReport:
        """Validate, map and commit a batch of messages (see the module docstring); raises only when the
        infrastructure fails, so the caller must not acknowledge then."""
        report = IngestReport(messages=len(envelopes))
        parsed: list[tuple[Envelope, Any]] = []
        names: set[str] = set()
        early: list[Rejection] = []
        for env in envelopes:
            doc, rejection = self._decode(env)
            if rejection is not None:
                early.append(rejection)
                parsed.append((env, None))
                continue
            parsed.append((env, doc))
            if env.device:
                names.add(env.device)
            if env.kind in ("gateway/telemetry", "gateway/attributes") and isinstance(doc, dict):
                names.update(k for k in doc if isinstance(k, str) and NAME_PATTERN.match(k))
            elif (env.kind in ("gateway/connect", "gateway/disconnect") and isinstance(doc, dict)
                  and isinstance(doc.get("device"), str) and NAME_PATTERN.match(doc["device"])):
                names.add(doc["device"])
        checked = self._check_early(parsed)
        state = _Batch()

        async def prepare(conn: AsyncConnection) -> list[ObservedEntity]:
            nonlocal state
            state = _Batch(rejections=list(early))
            return await self._prepare(conn, parsed, names, state, checked)

        try:
            obs = await upsert_observations(self.hub, self.tenant, prepare=prepare)
        finally:
            self.hub.sources.forget_held()  # flags of committed readings were stored by the commit's listener
        # Listed only now: a retried or failed transaction (whose messages come again) lists nothing twice.
        self.hub.sources.refused.extend(state.source_refusals)
        report.readings = state.readings
        report.stored = obs.stored
        report.duplicates = obs.duplicates
        report.rejections = state.rejections
        report.dead_letters = len(state.rejections)
        report.per_envelope = state.per_envelope
        # Off the ingest path (the broker is waiting for our acks); the outbox has them if we die first.
        await self.outbox.publish(state.outbox_ids, state.events)
        return report

    def _check_early(self, parsed: list[tuple[Envelope, Any]]) -> dict[Any, _Checked]:
        """Validate telemetry before the transaction, against the profile each sender had when last seen.

        The batch's transaction holds its devices' and entities' row locks, which serialise ingest
        workers sharing devices; the less it does, the more workers run in parallel. Under the
        locks `_prepare` uses these results only if the sender still has the same profile."""
        out: dict[Any, _Checked] = {}  # by message index, or (index, device) for a gateway's devices
        last = self._last_profile
        for index, (env, doc) in enumerate(parsed):
            if doc is None:
                continue
            if env.kind == "telemetry":
                profile = self.profiles.get(last.get(env.device or "", ""))
                if profile is not None:
                    out[index] = self._check_telemetry(env, doc, profile, env.device or "")
            elif env.kind == "gateway/telemetry" and isinstance(doc, dict):
                for name, body in doc.items():
                    profile = self.profiles.get(last.get(name, ""))
                    if profile is not None:
                        out[(index, name)] = self._check_telemetry(_child_envelope(env, name, body), body, profile,
                                                                   name)
        return out

    def _decode(self, env: Envelope) -> tuple[Any, Rejection | None]:
        if env.reason:
            return None, Rejection(env.reason, env.detail or env.reason, env.device, env.kind,
                                   env.payload[:self.settings.dead_letter_bytes], env.topic, env.source)
        if env.kind not in KINDS:
            return None, Rejection("unknown_topic", f"unknown message kind {env.kind!r}", env.device, env.kind,
                                   env.payload[:self.settings.dead_letter_bytes], env.topic, env.source)
        limit = self.settings.max_payload_bytes
        if len(env.payload) > limit:
            return None, Rejection("oversize", f"{len(env.payload)} bytes is more than {limit}", env.device,
                                   env.kind, env.payload[:self.settings.dead_letter_bytes], env.topic, env.source)
        try:
            doc = orjson.loads(env.payload) if env.payload.strip() else None
        except orjson.JSONDecodeError as exc:
            return None, Rejection("malformed_json", f"not valid JSON: {exc}", env.device, env.kind,
                                   env.payload[:self.settings.dead_letter_bytes], env.topic, env.source)
        if doc is None and env.kind not in ("rpc/response", "gateway/connect", "gateway/disconnect"):
            return None, Rejection("malformed_json", "empty payload", env.device, env.kind, env.payload, env.topic,
                                   env.source)
        return doc, None

    async def _lock_devices(self, conn: AsyncConnection, names: Iterable[str]) -> dict[str, Device]:
        wanted = sorted(set(names))
        found: dict[str, Device] = {}
        for start in range(0, len(wanted), 5000):
            chunk = wanted[start:start + 5000]
            stmt = (select(devices).where(devices.c.tenant == self.tenant, devices.c.name.in_(chunk))
                    .order_by(devices.c.id))
            if self._postgres:
                stmt = stmt.with_for_update()
            for row in await conn.execute(stmt):
                found[row.name] = Device.from_row(row)
        if len(self._last_profile) > LAST_PROFILE_CACHE:
            self._last_profile.clear()
        self._last_profile.update((name, d.profile_id) for name, d in found.items())
        return found

    async def _prepare(self, conn: AsyncConnection, parsed: list[tuple[Envelope, Any]], names: set[str],
                       state: _Batch, checked: dict[Any, _Checked]) -> list[ObservedEntity]:
        known = await self._lock_devices(conn, names)
        touched: dict[str, _Touch] = {}
        replayed: list[int] = []

        def touch(device: Device) -> _Touch:
            found = touched.get(device.name)
            if found is None:
                found = touched[device.name] = _Touch(device, self.profile(device.profile_id))
            return found

        def reject(env: Envelope, reason: str, detail: str, device: str | None, payload: Any = None,
                   kind: str | None = None) -> None:
            state.rejections.append(self._rejection(env, reason, detail, device, payload, kind))

        for index, (env, doc) in enumerate(parsed):
            before_rej, before_readings = len(state.rejections), state.readings
            if doc is None and env.kind not in ("rpc/response", "gateway/connect", "gateway/disconnect"):
                state.per_envelope.append((0, 1))
                continue
            sender = known.get(env.device or "")
            if sender is None:
                reject(env, "unknown_device", f"device {env.device!r} is not registered", env.device)
            elif sender.status == "disabled":
                reject(env, "device_disabled", f"device {sender.name!r} is disabled", sender.name)
            elif env.kind == "telemetry":
                early = checked.get(index)
                self._telemetry(env, doc, touch(sender), state,
                                early if early is not None and early.profile_id == sender.profile_id else None)
            elif env.kind == "attributes":
                self._attributes(env, doc, touch(sender), reject)
            elif env.kind == "rpc/response":
                await self._rpc_response(conn, sender, env, doc)
                touch(sender).contact = True
            elif not sender.gateway:
                reject(env, "not_a_gateway", f"device {sender.name!r} is not a gateway", sender.name)
            else:
                touch(sender).contact = True
                await self._gateway(conn, env, doc, sender, known, touch, state, reject, index, checked)
            if env.replay_of is not None:
                if len(state.rejections) > before_rej:
                    raise ReplayRejected("; ".join(f"{r.reason}: {r.detail}" for r in state.rejections[before_rej:]))
                replayed.append(env.replay_of)
            state.per_envelope.append((state.readings - before_readings, len(state.rejections) - before_rej))

        items: list[ObservedEntity] = []
        updates: list[dict[str, Any]] = []
        now = clock.now()
        for t in touched.values():
            items.extend(self._finish(t, now, state))
            d = t.device
            updates.append({"b_id": d.id, "status": d.status, "last_seen": d.last_seen, "last_contact": now,
                            "reported_at": d.reported_at, "battery": d.battery, "quality": d.quality,
                            "firmware": d.firmware, "updated_at": now})
        if updates and self._postgres:
            await _update_devices_pg(conn, self.tenant, updates)
        elif updates:
            await conn.execute(
                update(devices).where(devices.c.tenant == self.tenant, devices.c.id == bindparam("b_id"))
                .values(status=bindparam("status"), last_seen=bindparam("last_seen"),
                        last_contact=bindparam("last_contact"), reported_at=bindparam("reported_at"),
                        battery=bindparam("battery"), quality=bindparam("quality"), firmware=bindparam("firmware"),
                        updated_at=bindparam("updated_at")), updates)
        if state.rejections:
            await conn.execute(insert(dead_letters), [
                {"tenant": self.tenant, "received_at": now, "source": r.source, "kind": r.kind,
                 "topic": r.topic, "device": r.device, "reason": r.reason, "detail": r.detail[:2000],
                 "payload": r.payload, "status": "pending"} for r in state.rejections])
        if replayed:
            await conn.execute(update(dead_letters).where(dead_letters.c.id.in_(replayed))
                               .values(status="replayed", replayed_at=now))
        state.outbox_ids = await self.outbox.record(conn, state.events)
        return items

    def _rejection(self, env: Envelope, reason: str, detail: str, device: str | None, payload: Any = None,
                   kind: str | None = None) -> Rejection:
        raw = env.payload if payload is None else orjson.dumps(payload)
        return Rejection(reason, detail, device, kind or env.kind, raw[:self.settings.dead_letter_bytes], env.topic,
                         env.source)

    def _telemetry(self, env: Envelope, doc: Any, t: _Touch, state: _Batch, checked: _Checked | None = None) -> None:
        """Apply a telemetry message to its device's touch: checked now, or before the batch's locks."""
        if checked is None:
            checked = self._check_telemetry(env, doc, t.profile, t.device.name)
        readings = self._from_authoritative_source(env, t, checked.readings, state)
        t.readings.extend(readings)
        state.readings += len(readings)
        state.rejections.extend(checked.rejections)
        t.contact = t.contact or checked.contact

    def _from_authoritative_source(self, env: Envelope, t: _Touch, readings: list[_Valid],
                                   state: _Batch) -> list[_Valid]:
        """一数一源 on device ingest: a device writes for its department from the system `iot`. Readings of an
        attribute whose declared authoritative source is another department or system are refused (dead
        letter, conflict listed) or kept and flagged, as the data office declared (cityos.hub.sources)."""
        d, profile = t.device, t.profile
        observed = self.observed_id(profile, d.name)
        subject = self._iri("Device") if observed == d.id else self._iri(profile.entity_type)
        policies = self.hub.sources
        if not readings or not policies.declared(self.tenant, subject):
            return readings
        writer = Writer(d.department, frozenset({d.department}) if d.department else frozenset(), "iot",
                        f"device:{d.name}")
        refused, flagged = policies.judge(self.tenant, subject, observed, {r[3].attr for r in readings}, writer)
        policies.hold(flagged)  # stored by the data domain's commit listener if the entity's write commits
        if not refused:
            return readings
        state.source_refusals.extend(refused)
        denied = {c.field for c in refused}
        kept = [r for r in readings if r[3].attr not in denied]
        dropped = [r for r in readings if r[3].attr in denied]
        state.rejections.append(self._rejection(
            env, "source_refused", refusal_reason(writer, refused), d.name,
            {"ts": int(dropped[0][2].timestamp() * 1000), "values": {r[0].key: r[1] for r in dropped}}, "telemetry"))
        return kept

    def _check_telemetry(self, env: Envelope, doc: Any, profile: Profile, device: str) -> _Checked:
        """Validate one telemetry payload against a profile; pure, so it can run outside the transaction."""
        out = _Checked(profile.id)
        try:
            series = parse_series(doc)
        except ValueError as exc:
            out.rejections.append(self._rejection(env, "bad_payload", str(exc), device, None if env.payload else doc))
            out.contact = False
            return out
        iri = self._iri
        keys = profile.keys
        for raw_ts, values in series:
            try:
                ts = _ts_of(raw_ts, env.received_at, self.settings)
            except ValueError as exc:
                out.rejections.append(self._rejection(env, "bad_timestamp", str(exc), device,
                                                      {"ts": raw_ts, "values": values}, "telemetry"))
                continue
            if not isinstance(values, dict) or not values:
                out.rejections.append(self._rejection(env, "bad_payload", "values must be a non-empty JSON object",
                                                      device, {"ts": raw_ts, "values": values}, "telemetry"))
                continue
            bad: dict[str, Any] = {}
            reasons: list[tuple[str, str]] = []
            for raw_key, raw_value in values.items():
                spec = keys.get(raw_key)
                if spec is not None and spec.kind == "number" and type(raw_value) in _PLAIN_NUMBERS \
                        and UNIT_SEPARATOR not in raw_key \
                        and math.isfinite(raw_value) and (spec.min is None or raw_value >= spec.min) \
                        and (spec.max is None or raw_value <= spec.max):
                    # The common case, a known numeric key without a unit suffix and in range: what
                    # to_canonical and check_value below would accept unchanged, without their cost.
                    out.readings.append((spec, raw_value, ts, Reading(iri(spec.attr), raw_value, ts, spec.unit_code)))
                    continue
                try:  # "<key>@<unit>": converted to the profile's canonical unit first (cityos.iot.units)
                    key, value = to_canonical(profile, raw_key, raw_value)
                except UnitError as exc:
                    bad[raw_key] = raw_value
                    reasons.append((exc.reason, exc.detail))
                    continue
                spec = keys.get(key)
                problem = ("unknown_key", f"{key!r} is not a key of profile {profile.id}") if spec is None \
                    else check_value(spec, value)
                if problem is not None and raw_key != key:
                    problem = (problem[0], f"{problem[1]} (reported as {raw_key}={raw_value})")
                if problem is not None or spec is None:
                    bad[raw_key] = raw_value
                    reasons.append(problem or ("unknown_key", key))
                    continue
                out.readings.append((spec, value, ts, Reading(iri(spec.attr), value, ts, spec.unit_code)))
            if bad:
                ts_out = raw_ts if raw_ts is not None else int(ts.timestamp() * 1000)
                out.rejections.append(self._rejection(env, reasons[0][0], "; ".join(d for _, d in reasons), device,
                                                      {"ts": ts_out, "values": bad}, "telemetry"))
        return out

    def _attributes(self, env: Envelope, doc: Any, t: _Touch, reject: Any) -> None:
        if not isinstance(doc, dict) or not doc:
            reject(env, "bad_payload", "attributes must be a non-empty JSON object", t.device.name)
            return
        bad: dict[str, Any] = {}
        for key, value in doc.items():
            if key in FIRMWARE_KEYS and isinstance(value, str) and len(value) <= 64:
                t.device.firmware = value
                t.entity_changes = True
                continue
            try:
                check_name(key)
                if key in ("id", "type", "location", "deviceState", "name") or value is None:
                    raise BadRequestData(f"attribute {key!r} is reserved")
                orjson.dumps(value)
            except (ProblemError, TypeError):
                bad[key] = value
                continue
            t.attributes[self._iri(key)] = [{"type": "Property", "value": value}]
        if bad:
            reject(env, "bad_attribute", f"attributes not accepted: {', '.join(sorted(bad))[:200]}", t.device.name,
                   bad, "attributes")
        t.contact = True

    async def _gateway(self, conn: AsyncConnection, env: Envelope, doc: Any, gateway: Device,
                       known: dict[str, Device], touch: Any, state: _Batch, reject: Any, index: int,
                       checked: dict[Any, _Checked]) -> None:
        if env.kind in ("gateway/connect", "gateway/disconnect"):
            name = doc.get("device") if isinstance(doc, dict) else None
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                reject(env, "bad_payload", 'expected {"device": "<name>"}', gateway.name)
                return
            child = known.get(name)
            if child is None and env.kind == "gateway/connect":
                profile_id = doc.get("type")
                if profile_id not in self.profiles:
                    reject(env, "unknown_device", f"device {name!r} is not registered and type {profile_id!r} is "
                           "not a device profile", name)
                    return
                child = await self._provision_child(conn, gateway, name, str(profile_id))
                known[name] = child
                touch(child).created = True
            if child is None:
                reject(env, "unknown_device", f"device {name!r} is not registered", name)
                return
            touch(child).contact = env.kind == "gateway/connect"
            return
        if not isinstance(doc, dict) or not doc:
            reject(env, "bad_payload", 'expected {"<device name>": ...}', gateway.name)
            return
        for name, body in doc.items():
            child = known.get(name)
            sub = _child_envelope(env, name, body)
            if child is None:
                reject(sub, "unknown_device", f"device {name!r} is not registered", name if isinstance(name, str)
                       and NAME_PATTERN.match(name) else None, body)
            elif child.status == "disabled":
                reject(sub, "device_disabled", f"device {name!r} is disabled", name, body)
            elif sub.kind == "telemetry":
                early = checked.get((index, name))
                self._telemetry(sub, body, touch(child), state,
                                early if early is not None and early.profile_id == child.profile_id else None)
            else:
                self._attributes(sub, body, touch(child), reject)

    async def _provision_child(self, conn: AsyncConnection, gateway: Device, name: str, profile_id: str) -> Device:
        now = clock.now()
        row: dict[str, Any] = {"tenant": self.tenant, "id": device_id(name), "name": name, "profile_id": profile_id,
               "lon": gateway.lon, "lat": gateway.lat, "district": gateway.district,
               "department": gateway.department, "status": "inactive", "firmware": None, "token_hash": None,
               "gateway": 0, "gateway_name": gateway.name, "quality": {}, "created_at": now, "updated_at": now}
        await conn.execute(insert(devices), [row])
        return Device(self.tenant, device_id(name), name, profile_id, gateway.lon, gateway.lat, gateway.district,
                      gateway.department, "inactive", None, False, gateway.name, None, None, None, None, {}, now)

    def _finish(self, t: _Touch, now: datetime, state: _Batch) -> list[ObservedEntity]:
        """Registry state, events and hub items for one device touched by the batch."""
        d, profile = t.device, t.profile
        items: list[ObservedEntity] = []
        if t.created:
            items.extend(self._initial_entities(d))
        readings: list[Reading] = []
        newest = as_utc(d.last_seen) if d.last_seen is not None else None
        battery_reading: tuple[datetime, float] | None = None
        for spec, value, ts, reading in sorted(t.readings, key=_by_time):
            readings.append(reading)
            if newest is None or ts >= newest:
                if spec.attr == "batteryLevel" and _num(value):
                    battery_reading = (ts, float(value))
                else:
                    self._quality(d, spec, value, ts, state, profile)
                newest = ts
        device_readings: list[Reading] = []
        device_static: dict[str, list[dict[str, Any]]] = {}
        observed = self.observed_id(profile, d.name)
        if t.readings:
            if d.status in ("inactive", "offline"):
                if d.status == "offline":
                    state.events.append((TOPIC_ONLINE, self._event(d)))
                d.status = "active"
                device_static[self._iri("deviceState")] = [{"type": "Property", "value": "active"}]
            if newest is not None and (d.last_seen is None or newest > as_utc(d.last_seen)):
                d.last_seen = newest
                every = timedelta(seconds=max(profile.interval_seconds, self.settings.reported_every_seconds))
                stale = d.reported_at is None or now - as_utc(d.reported_at) >= every
                if stale or device_static:
                    d.reported_at = now
                    device_static[self._iri("dateLastValueReported")] = [
                        {"type": "Property", "value": clock.iso(newest)}]
        if battery_reading is not None:
            ts, level = battery_reading
            if level <= BATTERY_ALARM_PERCENT and (d.battery is None or d.battery > BATTERY_ALARM_PERCENT):
                state.events.append((TOPIC_ALARM, {**self._event(d), "kind": "lowBattery", "battery": level,
                                                   "observedAt": clock.iso(ts)}))
            if d.battery != level and observed != d.id:
                device_readings.append(Reading(self._iri("batteryLevel"), level, ts, "P1"))
            d.battery = level
        if t.entity_changes and d.firmware is not None:
            device_static[self._iri("firmwareVersion")] = [{"type": "Property", "value": d.firmware}]
        device_static.update(t.attributes)
        if readings:
            if observed == d.id:
                items.append(ObservedEntity(d.id, self._iri("Device"), readings + device_readings, device_static))
                return items
            items.append(ObservedEntity(observed, self._iri(profile.entity_type), readings))
        if device_readings or device_static:
            items.append(ObservedEntity(d.id, self._iri("Device"), device_readings, device_static))
        return items

    def _quality(self, d: Device, spec: KeySpec, value: Any, ts: datetime, state: _Batch, profile: Profile) -> None:
        if not (type(value) in _PLAIN_NUMBERS and math.isfinite(value)) and not _num(value):
            return
        ms = int(ts.timestamp() * 1000)
        prev = d.quality.get(spec.key)
        if prev is None:
            d.quality[spec.key] = {"v": value, "n": 1, "ts": ms, "f": False}
            return
        if ms <= prev.get("ts", 0):
            return
        previous = prev.get("v")
        if _num(previous):
            threshold = spec.spike_threshold
            # A setpoint jumps when commanded (a lamp from off to full at dusk): not a spike either.
            if threshold is not None and not spec.setpoint and abs(value - previous) > threshold:
                state.events.append((TOPIC_QUALITY, {**self._event(d), "kind": "spike", "key": spec.key,
                                                     "attr": spec.attr, "value": value, "previous": previous,
                                                     "observedAt": clock.iso(ts)}))
        # A repeated floor or ceiling value (no smoke, an empty road at night, a lamp at full power,
        # saturated humidity in rain) is the world, not a stuck sensor: only values strictly inside
        # the range count towards "frozen".
        if previous == value and value != 0 and value != spec.min and value != spec.max and not spec.setpoint:
            count = int(prev.get("n", 1)) + 1
            flagged = bool(prev.get("f"))
            if count >= profile.frozen_intervals and not flagged:
                flagged = True
                state.events.append((TOPIC_QUALITY, {**self._event(d), "kind": "frozen", "key": spec.key,
                                                     "attr": spec.attr, "value": value, "count": count,
                                                     "observedAt": clock.iso(ts)}))
            d.quality[spec.key] = {"v": value, "n": count, "ts": ms, "f": flagged}
        else:
            d.quality[spec.key] = {"v": value, "n": 1, "ts": ms, "f": False}

    def _event(self, d: Device) -> dict[str, Any]:
        return {"tenant": self.tenant, "device": d.id, "name": d.name, "profile": d.profile_id,
                "district": d.district, "department": d.department}

    # ------------------------------------------------------------------ dead letters (reading: DeadLetterReader)

    async def replay(self, letter_id: int, payload: Any = None, device: str | None = None) -> IngestReport:
        """Re-ingest a dead letter, as stored or with a corrected payload; it is marked replayed only if all of it
        is now accepted (else 422 and nothing is written)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(dead_letters).where(dead_letters.c.tenant == self.tenant,
                                                                 dead_letters.c.id == letter_id))).first()
        if row is None:
            raise ResourceNotFound(f"dead letter {letter_id} not found")
        if row.status == "replayed":
            raise Conflict(f"dead letter {letter_id} was already replayed")
        name = device_name(device) if device else row.device
        if not name:
            raise BadRequestData("this dead letter has no device; name one in the body ({\"device\": ...})")
        raw = orjson.dumps(payload) if payload is not None else bytes(row.payload)
        kind = row.kind if row.kind in KINDS else "telemetry"
        return await self.ingest([Envelope(name, kind, raw, "replay", None, clock.now(), replay_of=letter_id)])

    # ------------------------------------------------------------------ health

    async def mark_offline(self) -> list[Device]:
        """Devices silent for more than offline_intervals x their profile interval become offline."""
        now = clock.now()
        went: list[Device] = []
        async with self.hub.store.write() as conn:
            for profile in self.profiles.values():
                cutoff = now - timedelta(seconds=profile.interval_seconds * self.settings.offline_intervals)
                stmt = select(devices).where(devices.c.tenant == self.tenant, devices.c.status == "active",
                                             devices.c.profile_id == profile.id, devices.c.last_contact < cutoff)
                if self._postgres:
                    stmt = stmt.with_for_update(skip_locked=True)
                rows = [Device.from_row(r) for r in await conn.execute(stmt)]
                if rows:
                    await conn.execute(update(devices).where(devices.c.tenant == self.tenant,
                                                             devices.c.id.in_([d.id for d in rows]))
                                       .values(status="offline", updated_at=now))
                went.extend(rows)
            events = [(TOPIC_OFFLINE, {**self._event(d), "lastSeen": clock.iso(as_utc(d.last_contact))
                                       if d.last_contact else None}) for d in went]
            outbox_ids = await self.outbox.record(conn, events)
        if went:
            items = [ObservedEntity(d.id, self._iri("Device"), [],
                                    {self._iri("deviceState"): [{"type": "Property", "value": "offline"}]})
                     for d in went]
            await upsert_observations(self.hub, self.tenant, items)
            for d in went:
                d.status = "offline"
            await self.outbox.publish_now(outbox_ids, events)
        return went

    async def health_summary(self, department: str | None = None) -> dict[str, Any]:
        """Device counts by status, offline devices per district, low batteries: of one department, or all."""
        scope = [devices.c.tenant == self.tenant]
        if department is not None:
            scope.append(devices.c.department == department)
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(devices.c.status, devices.c.district, func.count())
                                      .where(*scope)
                                      .group_by(devices.c.status, devices.c.district))
            by_status: dict[str, int] = {}
            offline: dict[str, int] = {}
            total = 0
            for status, district, count in rows:
                total += int(count)
                by_status[status] = by_status.get(status, 0) + int(count)
                if status == "offline":
                    offline[district or ""] = offline.get(district or "", 0) + int(count)
            low = (await conn.execute(select(func.count()).select_from(devices).where(
                *scope, devices.c.battery <= BATTERY_ALARM_PERCENT))).scalar_one()
        return {"devices": total, "byStatus": by_status, "offlineByDistrict": offline, "lowBattery": int(low)}

    async def offline_by_district(self) -> dict[str, int]:
        summary = await self.health_summary()
        result: dict[str, int] = summary["offlineByDistrict"]
        return result


_PG_DEVICE_UPDATE = (
    "UPDATE iot_devices AS d SET status = u.status, last_seen = u.last_seen, last_contact = u.last_contact, "
    "reported_at = u.reported_at, battery = u.battery, quality = u.quality::jsonb, firmware = u.firmware, "
    "updated_at = u.updated_at "
    "FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[], $7::float8[], "
    "$8::text[], $9::text[], $10::timestamptz[]) "
    "AS u(id, status, last_seen, last_contact, reported_at, battery, quality, firmware, updated_at) "
    "WHERE d.tenant = $1 AND d.id = u.id"
)


async def _update_devices_pg(conn: AsyncConnection, tenant: str, updates: list[dict[str, Any]]) -> None:
    """The batch's registry rows in ONE statement. PostgreSQL runs an executemany row by row: about 170 µs
    of server CPU per row measured for these 1,000-row batches, against about 25 µs with unnest."""
    raw = await conn.get_raw_connection()  # the same connection and transaction, as for the history COPY
    driver = raw.driver_connection
    assert driver is not None
    await driver.execute(
        _PG_DEVICE_UPDATE, tenant, [u["b_id"] for u in updates], [u["status"] for u in updates],
        [u["last_seen"] for u in updates], [u["last_contact"] for u in updates], [u["reported_at"] for u in updates],
        [None if u["battery"] is None else float(u["battery"]) for u in updates],
        [orjson.dumps(u["quality"]).decode() for u in updates], [u["firmware"] for u in updates],
        [u["updated_at"] for u in updates])


def _child_envelope(gateway: Envelope, device: Any, body: Any) -> Envelope:
    """One device's part of a gateway message. A telemetry part keeps no bytes of its own (serialising
    every part cost more than validating it): a dead letter of it is written from the parsed body."""
    kind = gateway.kind.removeprefix("gateway/")
    payload = b"" if kind == "telemetry" else orjson.dumps(body)
    return Envelope(device, kind, payload, gateway.source, gateway.topic, gateway.received_at)


_Valid = tuple[KeySpec, Any, datetime, Reading]  # a reading that passed its profile: (spec, value, ts, hub reading)


def _by_time(valid: _Valid) -> datetime:
    return valid[2]


@dataclass
class _Checked:
    """One telemetry message validated against a profile (possibly before the batch's locks were taken)."""

    profile_id: str
    readings: list[_Valid] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    contact: bool = True


@dataclass
class _Touch:
    device: Device
    profile: Profile
    readings: list[_Valid] = field(default_factory=list)
    attributes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    contact: bool = False
    created: bool = False
    entity_changes: bool = False


__all__ = ["BulkResult", "Envelope", "IngestReport", "IntegrityError", "IotService", "IotSettings", "Rejection"]
