"""The IoT device registry: profiles, provisioning (one, many, CSV), devices and their tokens,
the broker's authentication hooks, and device health (offline marking, summaries).

The service (`cityos.iot.service.IotService`) is composed of one part per responsibility; this
is the part the others build on."""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import AlreadyExists, BadRequestData, ProblemError, ResourceNotFound
from cityos.core.events import BackgroundPublisher, EventBus
from cityos.hub.observations import ObservedEntity, upsert_observations
from cityos.hub.service import HubService
from cityos.iot.messages import (
    BATTERY_ALARM_PERCENT,
    TOPIC_ALARM,
    TOPIC_CREDENTIALS,
    TOPIC_OFFLINE,
    TOPIC_ONLINE,
    TOPIC_PROVISIONED,
    TOPIC_QUALITY,
    BulkResult,
    IotSettings,
    hash_token,
    new_token,
)
from cityos.iot.models import Device, DeviceIn, Profile, device_id, device_name, devices, load_profiles
from cityos.iot.outbox import EventOutbox
from cityos.iot.rpc_requests import AnswerSignal


class IotRegistry:
    """The service's state (one per tenant), profiles, the device registry and device health."""

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
        self.answer_signal = AnswerSignal()

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

    def _event(self, d: Device) -> dict[str, Any]:
        return {"tenant": self.tenant, "device": d.id, "name": d.name, "profile": d.profile_id,
                "district": d.district, "department": d.department}

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
