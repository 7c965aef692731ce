"""IoT readings and attributes: a telemetry payload checked against its device's profile, the
authoritative-source rule (一数一源), attribute messages, data quality (spikes, frozen values),
and a touched device's registry state, events and hub items at the end of a batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import BadRequestData, ProblemError
from cityos.hub.model import check_name
from cityos.hub.observations import ObservedEntity, Reading
from cityos.hub.sources import SourceConflict, Writer, refusal_reason
from cityos.iot.messages import (
    _PLAIN_NUMBERS,
    BATTERY_ALARM_PERCENT,
    FIRMWARE_KEYS,
    TOPIC_ALARM,
    TOPIC_ONLINE,
    TOPIC_QUALITY,
    Envelope,
    Rejection,
    _num,
    _ts_of,
    check_value,
    parse_series,
    related_id,
)
from cityos.iot.models import Device, KeySpec, Profile
from cityos.iot.registry import IotRegistry
from cityos.iot.units import UNIT_SEPARATOR, UnitError, to_canonical


class IotReadings(IotRegistry):
    """What one device's messages in a batch come to: checked readings, attributes, quality, hub items."""

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
                out.readings.append(_valid(spec, value, ts, iri(spec.attr)))
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


@dataclass
class _Batch:
    """What one ingest transaction accumulates (reset when the transaction is retried)."""

    rejections: list[Rejection] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)  # the events' rows in the outbox
    readings: int = 0
    per_envelope: list[tuple[int, int]] = field(default_factory=list)
    source_refusals: list[SourceConflict] = field(default_factory=list)  # 一数一源, listed once committed
    answers: list[dict[str, Any]] = field(default_factory=list)  # devices' answers to RPC requests


_Valid = tuple[KeySpec, Any, datetime, Reading]  # a reading that passed its profile: (spec, value, ts, hub reading)


def _valid(spec: KeySpec, value: Any, ts: datetime, attr: str) -> _Valid:
    """A checked reading; a relationship lands as one, its target named by its URN."""
    if spec.kind == "relationship":
        value = related_id(spec, value)
        return spec, value, ts, Reading(attr, value, ts, None, "Relationship")
    return spec, value, ts, Reading(attr, value, ts, spec.unit_code)


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
