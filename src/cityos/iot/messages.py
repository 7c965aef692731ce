"""What the IoT service takes and gives: its settings and event topics, device tokens, inbound
message envelopes, ingest and bulk reports, and the pure checks of a telemetry payload."""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cityos.config import env_int
from cityos.core import clock
from cityos.core.errors import ProblemError
from cityos.iot.models import KeySpec

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
    if spec.kind == "list":
        return check_list(spec, value)
    if spec.kind == "relationship":
        return None if related_id(spec, value) is not None else (
            "wrong_type", f"{spec.key} must be the id of a {spec.object_type} (letters, digits, '_', '.', '-', ':')")
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


def check_list(spec: KeySpec, value: Any) -> tuple[str, str] | None:
    """A list-valued key: a list of at most `max_items` objects, each with exactly the declared fields, each
    field fitting its own spec. The first problem found names the item and field."""
    if not isinstance(value, list):
        return "wrong_type", f"{spec.key} must be a list of objects, got {type(value).__name__}"
    if spec.max_items is not None and len(value) > spec.max_items:
        return "out_of_range", f"{spec.key} has {len(value)} items, at most {spec.max_items}"
    names = {field.key for field in spec.items}
    for index, item in enumerate(value):
        where = f"{spec.key}[{index}]"
        if not isinstance(item, dict):
            return "wrong_type", f"{where} must be an object with {', '.join(sorted(names))}"
        unknown = sorted(str(k) for k in item if k not in names)
        if unknown:
            return "unknown_key", f"{where}: {unknown[0][:40]!r} is not one of {', '.join(sorted(names))}"
        for field_spec in spec.items:
            if field_spec.key not in item:
                return "missing_field", f"{where} lacks {field_spec.key}"
            problem = check_value(field_spec, item[field_spec.key])
            if problem is not None:
                return problem[0], f"{where}.{problem[1]}"
    return None


_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$")


def related_id(spec: KeySpec, value: Any) -> str | None:
    """A relationship's target as a URN (`urn:ngsi-ld:<objectType>:<id>`), from the bare id or the URN itself;
    None when the value is neither."""
    if not isinstance(value, str):
        return None
    prefix = f"urn:ngsi-ld:{spec.object_type}:"
    bare = value.removeprefix(prefix)
    if bare.startswith("urn:") or not _ID_PATTERN.match(bare):
        return None  # another type's URN, or no id at all
    return prefix + bare



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
