"""IoT tables and schemas: the device registry, dead letters and server-side RPC commands.

Tokens are never stored: `iot_devices.token_hash` is the hex SHA-256 of a 160-bit random token
(a token is high-entropy, so a fast hash is the right tool: no salt or KDF is needed to stop
guessing, and lookup by hash stays an index probe).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from cityos.core.clock import as_utc, as_utc_or_none
from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

# Device status: inactive (provisioned, never reported), active (reporting), offline (missed
# N intervals), disabled (switched off by an operator: its readings are refused).
STATUSES = ("inactive", "active", "offline", "disabled")

devices = Table(
    "iot_devices",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(512), nullable=False),
    Column("name", String(64), nullable=False),
    Column("profile_id", String(64), nullable=False),
    Column("lon", Float, nullable=True),
    Column("lat", Float, nullable=True),
    Column("district", String(128), nullable=True),
    Column("department", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("firmware", String(64), nullable=True),
    Column("token_hash", String(64), nullable=True),
    # bcrypt of the token, for NATS's MQTT listener (its config accepts bcrypt, not SHA-256): written only
    # when CITYOS_NATS_MQTT is on (cityos.iot.nats_mqtt), NULL otherwise and for devices with no token.
    Column("nats_secret", String(60), nullable=True),
    Column("gateway", Integer, nullable=False, default=0),
    Column("gateway_name", String(64), nullable=True),  # the gateway a child device reports through
    Column("last_seen", Timestamp, nullable=True),  # newest reading time (device clock) seen
    Column("last_contact", Timestamp, nullable=True),  # when the platform last heard from it
    Column("reported_at", Timestamp, nullable=True),  # when the Device entity's lastSeen was last written
    Column("battery", Float, nullable=True),
    Column("quality", JsonDoc, nullable=True),  # per-key {v, n, ts, frozen}: frozen/spike detection state
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_iot_devices"),
    Index("ux_iot_devices_name", "tenant", "name", unique=True),
    Index("ux_iot_devices_token", "token_hash", unique=True),
    Index("ix_iot_devices_status", "tenant", "status", "district"),
)

dead_letters = Table(
    "iot_dead_letters",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Column("source", String(16), nullable=False),  # mqtt | http | replay
    Column("kind", String(32), nullable=False),  # telemetry | attributes | gateway/telemetry | ...
    Column("topic", String(512), nullable=True),
    Column("device", String(64), nullable=True),  # device name, when known
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # pending | replayed
    Column("replayed_at", Timestamp, nullable=True),
    Index("ix_iot_dead_letters_status", "tenant", "status", "id"),
)

rpc_requests = Table(
    "iot_rpc",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("device", String(64), nullable=False),
    Column("method", String(128), nullable=False),
    Column("params", JsonDoc, nullable=True),
    Column("oneway", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),  # queued | sent | delivered | succeeded | failed | timed_out
    Column("response", JsonDoc, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_iot_rpc_open", "status", "expires_at"),
)

# Device events (online, offline, low battery, spike, frozen) written in the transaction that caused
# them and deleted once published on the event bus: a process that dies between its commit and the
# publication leaves the row, and another round publishes it (at least once; handlers are idempotent).
event_outbox = Table(
    "iot_event_outbox",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("topic", String(64), nullable=False),
    Column("payload", JsonDoc, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_iot_event_outbox_created", "created_at"),
    sqlite_autoincrement=True,  # ids never reused: see sqltypes.AutoId
)

TABLES = (devices, dead_letters, rpc_requests)
OUTBOX_TABLES = (event_outbox,)

# ---------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class KeySpec:
    key: str  # the payload key the firmware sends
    attr: str  # the NGSI-LD attribute (short name) it lands in
    kind: str = "number"  # number | boolean | string | list (of objects, `items`) | relationship (`object_type`)
    unit_code: str | None = None
    min: float | None = None
    max: float | None = None
    enum: tuple[str, ...] | None = None
    data_class: str = "internal"
    spike: float | None = None  # largest plausible jump between consecutive readings
    # A commanded level (a lamp's dimming step, a valve's opening) repeats by design while the command
    # stands and jumps when a new one is given: checked neither for "frozen" (a stuck sensor) nor for
    # spikes, or every lamp would raise work orders every night.
    setpoint: bool = False
    # A list's items are objects with exactly these fields (each a number, boolean or string with its own
    # bounds), at most `max_items` of them: a zone detector's standing vehicles, say. Checked whole: one bad
    # item refuses the list (a half-taken list would read as "fewer vehicles standing").
    items: tuple[KeySpec, ...] = ()
    max_items: int | None = None
    object_type: str | None = None  # a relationship's target entity type: the device sends its id

    @property
    def spike_threshold(self) -> float | None:
        if self.spike is not None:
            return self.spike
        if self.min is not None and self.max is not None:
            return (self.max - self.min) * 0.5
        return None


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    entity_type: str
    interval_seconds: int
    keys: dict[str, KeySpec]
    category: str | None = None
    frozen_intervals: int = 10
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


KINDS = ("number", "boolean", "string", "list", "relationship")
ITEM_KINDS = ("number", "boolean", "string")  # a list item's fields: no nested lists or relationships


def _spec(key: str, raw: dict[str, Any], kinds: tuple[str, ...] = KINDS) -> KeySpec:
    enum = raw.get("enum")
    kind = raw.get("type", "number")
    if kind not in kinds:
        raise ValueError(f"profile key {key!r}: type {kind!r} is not one of {', '.join(kinds)}")
    items = tuple(_spec(name, field, ITEM_KINDS) for name, field in raw.get("items", {}).items())
    if kind == "list" and (not items or not isinstance(raw.get("maxItems"), int)):
        raise ValueError(f"profile key {key!r}: a list declares its items' fields and maxItems")
    if kind == "relationship" and not raw.get("objectType"):
        raise ValueError(f"profile key {key!r}: a relationship declares its objectType")
    return KeySpec(key=key, attr=raw.get("attr", key), kind=kind, unit_code=raw.get("unitCode"),
                   min=raw.get("min"), max=raw.get("max"), enum=tuple(enum) if enum else None,
                   data_class=raw.get("dataClass", "internal"), spike=raw.get("spike"),
                   setpoint=bool(raw.get("setpoint", False)), items=items, max_items=raw.get("maxItems"),
                   object_type=raw.get("objectType"))


@lru_cache(maxsize=1)
def load_profiles() -> dict[str, Profile]:
    text = resources.files("cityos.iot").joinpath("profiles.json").read_text(encoding="utf-8")
    found: dict[str, Profile] = {}
    for raw in json.loads(text)["profiles"]:
        keys = {k: _spec(k, v) for k, v in raw["attributes"].items()}
        found[raw["id"]] = Profile(id=raw["id"], name=raw["name"], entity_type=raw["entityType"],
                                   interval_seconds=int(raw["intervalSeconds"]), keys=keys,
                                   category=raw.get("category"), frozen_intervals=int(raw.get("frozenIntervals", 10)),
                                   raw=raw)
    return found


# ---------------------------------------------------------------------- schemas

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class DeviceIn(BaseModel):
    """What provisioning needs; the same fields as a CSV import row."""

    name: str = Field(description="unique device name: letters, digits, '_', '.', '-'; at most 64")
    profile: str = Field(description="device profile id, see GET /api/iot/profiles")
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    district: str | None = Field(default=None, max_length=128)
    department: str | None = Field(default=None, max_length=128)
    firmware: str | None = Field(default=None, max_length=64)
    gateway: bool = False
    # The gateway a child device reports through: its Device entity gets `refGateway`, which lets the
    # incident correlation see a gateway's silence as the root cause of its devices' silence.
    gatewayName: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
                                    description="the gateway this device reports through, if any")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("name must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return value


class RpcIn(BaseModel):
    method: str = Field(min_length=1, max_length=128)
    params: Any = None
    timeout: int = Field(default=10_000, ge=100, le=3_600_000, description="milliseconds")
    oneway: bool = False


class ReplayIn(BaseModel):
    payload: Any = Field(default=None, description="a corrected JSON payload; omitted, the stored one is replayed")
    device: str | None = Field(default=None, description="the device to attribute it to, if the letter has none")


@dataclass
class Device:
    tenant: str
    id: str
    name: str
    profile_id: str
    lon: float | None
    lat: float | None
    district: str | None
    department: str | None
    status: str
    firmware: str | None
    gateway: bool
    gateway_name: str | None
    last_seen: datetime | None
    last_contact: datetime | None
    reported_at: datetime | None
    battery: float | None
    quality: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Device:
        return cls(tenant=row.tenant, id=row.id, name=row.name, profile_id=row.profile_id, lon=row.lon, lat=row.lat,
                   district=row.district, department=row.department, status=row.status, firmware=row.firmware,
                   gateway=bool(row.gateway), gateway_name=row.gateway_name, last_seen=as_utc_or_none(row.last_seen),
                   last_contact=as_utc_or_none(row.last_contact), reported_at=as_utc_or_none(row.reported_at),
                   battery=row.battery,
                   quality=dict(row.quality or {}), created_at=as_utc(row.created_at))

    def public(self) -> dict[str, Any]:
        from cityos.core.clock import iso

        return {"id": self.id, "name": self.name, "profile": self.profile_id,
                "location": None if self.lon is None or self.lat is None else {"lon": self.lon, "lat": self.lat},
                "district": self.district, "department": self.department, "status": self.status,
                "firmware": self.firmware, "gateway": self.gateway, "gatewayName": self.gateway_name,
                "lastSeen": iso(as_utc(self.last_seen)) if self.last_seen else None,
                "battery": self.battery, "createdAt": iso(as_utc(self.created_at))}


def device_id(name: str) -> str:
    return f"urn:ngsi-ld:Device:{name}"


def device_name(ident: str) -> str:
    """A device's registry name from its name or its Device entity id."""
    return ident.removeprefix("urn:ngsi-ld:Device:")
