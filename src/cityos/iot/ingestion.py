"""IoT ingestion: a batch of received messages decoded, checked, mapped and committed in ONE
transaction (see `cityos.iot.service`), gateway messages, a device's own report over HTTP or
CoAP, and replaying a dead letter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.hub.observations import ObservedEntity, upsert_observations
from cityos.iot.messages import KINDS, DeviceCall, Envelope, IngestReport, Rejection, ReplayRejected
from cityos.iot.models import NAME_PATTERN, Device, dead_letters, device_id, device_name, devices
from cityos.iot.readings import IotReadings, _Batch, _Checked, _Touch
from cityos.iot.rpc_requests import RpcRequests
from cityos.security.policy import Principal, Resource, authorize

LAST_PROFILE_CACHE = 500_000  # device names remembered for early validation (a city-size registry)


class IotIngestion(IotReadings, RpcRequests):
    """`ingest(envelopes)` and what feeds it: device reports, replays. A device's RPC answer is recorded in
    the ingest's transaction (`RpcRequests._record_answers`)."""

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

    async def ingest(self, envelopes: Sequence[Envelope], urgent: bool = False) -> IngestReport:
        """Validate, map and commit a batch of messages (see the docstring of `cityos.iot.service`); raises only
        when the infrastructure fails, so the caller must not acknowledge then."""
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
            obs = await upsert_observations(self.hub, self.tenant, prepare=prepare, urgent=urgent)
        finally:
            self.hub.sources.forget_held()  # flags of committed readings were stored by the commit's listener
        if state.answers:
            self.answer_signal.committed()
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
                answer = self._rpc_answer(sender, env, doc)
                if answer is not None:
                    state.answers.append(answer)
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

        await self._record_answers(conn, state.answers)
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
