"""Parking: car parks, reservations, plate sessions with pay-without-stopping, disputes and refunds.

Capacity is exact under concurrency: a reservation (or an entry without one) first takes a space with one
conditional UPDATE of the car park's counters (`occupied + held < total`) and only then writes its row,
in the same transaction; any refusal after the UPDATE rolls the space back. A reservation holds its space
from booking until the vehicle leaves, is cancelled, or is released as a no-show (GRACE after its start).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import dialect_insert, write_transaction
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.messages import city_zone
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.security.audit import AuditEvent
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden, require_allowed
from cityos.traffic.parking import guidance
from cityos.traffic.parking.models import carparks, payments, plate_events, reservations, sessions, vehicles
from cityos.traffic.parking.payments import PaymentProvider, SandboxPaymentProvider
from cityos.traffic.parking.tariff import BadPlate, Tariff, display_plate, fee, mask_plate, normalise_plate

log = logging.getLogger("cityos.traffic.parking")

GRACE = timedelta(minutes=15)            # a reservation not used by start + GRACE is released (no-show)
EARLY_ARRIVAL = timedelta(minutes=30)    # a reserved vehicle may enter this much before its window
MAX_WINDOW = timedelta(hours=24)
# Spaces are held from booking to departure, so booking far ahead would idle them: one day ahead at most.
MAX_AHEAD = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=5)        # a gate event may be stamped this far in the future
MAX_TOTAL = 20_000


class Audit(Protocol):
    async def append_in(self, conn: AsyncConnection, events: list[AuditEvent]) -> list[int]: ...


class CarParkFull(Conflict):
    title = "Car park full (车位已满)"


def check(principal: Principal | None, action: str, tenant: str, department: str | None = None,
          owner: str | None = None) -> None:
    require_allowed(principal, action, Resource("parking", tenant, department=department, owner=owner))


def may(principal: Principal | None, action: str, tenant: str, department: str | None = None) -> bool:
    return bool(authorize(principal, action, Resource("parking", tenant, department=department)))


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def plate_of(raw: object) -> str:
    try:
        return normalise_plate(raw)
    except BadPlate as exc:
        raise BadRequestData(str(exc)) from exc


def moment_of(raw: object, name: str) -> datetime:
    if not isinstance(raw, str) or len(raw) > 40:
        raise BadRequestData(f"{name} must be an ISO 8601 date-time with an offset")
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise BadRequestData(f"{name} must be an ISO 8601 date-time with an offset") from exc
    if value.tzinfo is None:  # a wall time without a zone is ambiguous: refused rather than guessed
        raise BadRequestData(f"{name} must carry a time-zone offset")
    # In UTC before it is stored: SQLite keeps a datetime's wall time and drops its offset, so a window
    # given in city time (+08:00, as the portal sends it) would come back eight hours late.
    return value.astimezone(UTC)


def int_member(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestData(f"{name} must be an integer")
    if not low <= value <= high:
        raise BadRequestData(f"{name} must be between {low} and {high}")
    return value


def text_member(body: dict[str, Any], name: str, limit: int = 128, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{name} must be a non-empty string of at most {limit} characters")
    return value.strip()


def clock_time(raw: object, name: str) -> str:
    if not isinstance(raw, str) or len(raw) != 5 or raw[2] != ":":
        raise BadRequestData(f"{name} must be HH:MM")
    try:
        hours, minutes = int(raw[:2]), int(raw[3:])
    except ValueError as exc:
        raise BadRequestData(f"{name} must be HH:MM") from exc
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise BadRequestData(f"{name} must be HH:MM")
    return raw


def minute_of_day(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def is_open(opens: str, closes: str, moment: datetime) -> bool:
    if opens == closes:
        return True
    local = moment.astimezone(city_zone())
    now, start, end = local.hour * 60 + local.minute, minute_of_day(opens), minute_of_day(closes)
    return start <= now < end if start < end else (now >= start or now < end)


def tariff_of(row: Any) -> Tariff:
    return Tariff(row.free_minutes, row.hour_rate, row.night_rate, row.night_start, row.night_end, row.daily_cap)


def free_spaces(row: Any) -> int:
    return max(0, row.total - row.occupied - row.held)


def carpark_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "department": row.department,
            "location": {"lat": row.lat, "lon": row.lon}, "totalSpotNumber": row.total,
            "availableSpotNumber": free_spaces(row), "occupiedSpotNumber": row.occupied, "reservedSpotNumber": row.held,
            "tariff": {"freeMinutes": row.free_minutes, "hourRate": row.hour_rate, "nightRate": row.night_rate,
                       "nightStart": row.night_start, "nightEnd": row.night_end, "dailyCap": row.daily_cap,
                       "currency": "CNY", "unit": "fen"},
            "openingHours": {"opens": row.opens, "closes": row.closes}, "evChargers": row.ev_chargers}


def reservation_view(row: Any, clear: bool) -> dict[str, Any]:
    return {"id": row.id, "carparkId": row.carpark_id, "person": row.person if clear else None,
            "plate": display_plate(row.plate) if clear else mask_plate(row.plate),
            "start": clock.iso(clock.as_utc(row.start)), "end": clock.iso(clock.as_utc(row.end)),
            "status": row.status, "releaseAt": clock.iso(clock.as_utc(row.start) + GRACE)}


def session_view(row: Any, clear: bool) -> dict[str, Any]:
    return {"id": row.id, "carparkId": row.carpark_id,
            "plate": display_plate(row.plate) if clear else mask_plate(row.plate),
            "reservationId": row.reservation_id, "entry": clock.iso(clock.as_utc(row.entry_at)),
            "exit": clock.iso(clock.as_utc(row.exit_at)) if row.exit_at is not None else None,
            "fee": row.fee, "status": row.status, "dispute": row.dispute if clear else None}


def entity_id(carpark_id: str) -> str:
    return f"urn:ngsi-ld:OffStreetParking:{carpark_id}"


def carpark_entity(row: Any) -> dict[str, Any]:
    """The Smart Data Models `OffStreetParking` view of a car park (NGSI-LD normalised)."""
    stamp = clock.iso(clock.now())
    free = free_spaces(row)
    return {
        "id": entity_id(row.id), "type": "OffStreetParking",
        "name": {"type": "Property", "value": row.name},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [row.lon, row.lat]}},
        "totalSpotNumber": {"type": "Property", "value": row.total},
        "availableSpotNumber": {"type": "Property", "value": free, "observedAt": stamp},
        "occupiedSpotNumber": {"type": "Property", "value": row.total - free, "observedAt": stamp},
        "occupancy": {"type": "Property", "value": round((row.total - free) / row.total, 3) if row.total else 0.0},
        "status": {"type": "Property", "value": ["spacesAvailable"] if free else ["full"]},
        "category": {"type": "Property", "value": ["public", "feeCharged", "barrierAccess"]},
        "chargeType": {"type": "Property", "value": ["temporaryPrice"]},
        "allowedVehicleType": {"type": "Property", "value": ["car"]},
        "openingHours": {"type": "Property",
                         "value": "Mo-Su" if row.opens == row.closes else f"Mo-Su {row.opens}-{row.closes}"},
        "extraSpotNumber": {"type": "Property", "value": row.ev_chargers},
    }


class ParkingService:
    def __init__(self, engine: AsyncEngine, write_lock: Any, audit: Audit | None = None,
                 hub: HubService | None = None, ctx: ActiveContext | None = None,
                 provider: PaymentProvider | None = None) -> None:
        self.engine = engine
        self._lock = write_lock
        self.audit = audit
        self.hub = hub
        self.ctx = ctx
        self.provider: PaymentProvider = provider or SandboxPaymentProvider()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._lock) as conn:
            yield conn

    async def _audit(self, conn: AsyncConnection, principal: Principal | None, action: str, resource: str,
                     tenant: str, **detail: Any) -> None:
        if self.audit is not None:
            await self.audit.append_in(conn, [AuditEvent.of(principal, action, resource, tenant=tenant, **detail)])

    async def _publish(self, tenant: str, carpark_ids: set[str]) -> None:
        """Upsert the car parks' live availability to the hub (after the commit; a failure is logged)."""
        if self.hub is None or self.ctx is None or not carpark_ids:
            return
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(carparks).where(carparks.c.tenant == tenant,
                                                              carparks.c.id.in_(sorted(carpark_ids))))).all()
        bodies = [carpark_entity(row) for row in rows]
        for start in range(0, len(bodies), 500):
            try:
                result = await self.hub.batch_write(tenant, bodies[start:start + 500], self.ctx, "upsert", set())
            except Exception:  # the hub's view catches up at the next change or occupancy step
                log.exception("car parks not published")
                return
            for error in result.errors:
                log.warning("car park not published: %s", error)

    # ------------------------------------------------------------------ car parks

    async def register(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        department = text_member(body, "department", required=False)
        check(principal, "parking.manage", tenant, department)
        name = text_member(body, "name", 256)
        lat, lon = body.get("lat"), body.get("lon")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
            raise BadRequestData("lat and lon must be numbers")
        assert isinstance(lat, int | float) and isinstance(lon, int | float)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise BadRequestData("lat must be in [-90, 90] and lon in [-180, 180]")
        tariff = body.get("tariff", {})
        if not isinstance(tariff, dict):
            raise BadRequestData("tariff must be an object")
        hours = body.get("openingHours", {"opens": "00:00", "closes": "00:00"})
        if not isinstance(hours, dict):
            raise BadRequestData("openingHours must be an object {opens, closes}")
        now = clock.now()
        row: dict[str, Any] = {"tenant": tenant, "id": new_id(), "name": name, "department": department,
               "lat": float(lat),
               "lon": float(lon), "total": int_member(body, "totalSpotNumber", None, 1, MAX_TOTAL),
               "occupied": 0, "held": 0,
               "free_minutes": int_member(tariff, "freeMinutes", 15, 0, 1440),
               "hour_rate": int_member(tariff, "hourRate", 500, 0, 1_000_000),
               "night_rate": int_member(tariff, "nightRate", 100, 0, 1_000_000),
               "night_start": int_member(tariff, "nightStart", 22, 0, 23),
               "night_end": int_member(tariff, "nightEnd", 7, 0, 23),
               "daily_cap": int_member(tariff, "dailyCap", 0, 0, 1_000_000),
               "opens": clock_time(hours.get("opens", "00:00"), "opens"),
               "closes": clock_time(hours.get("closes", "00:00"), "closes"),
               "ev_chargers": int_member(body, "evChargers", 0, 0, MAX_TOTAL),
               "created_at": now, "updated_at": now}
        if row["ev_chargers"] > row["total"]:
            raise BadRequestData("evChargers cannot exceed totalSpotNumber")
        async with self._write() as conn:
            await conn.execute(carparks.insert().values(**row))
            await self._audit(conn, principal, "parking.register", row["id"], tenant, name=name)
        await self._publish(tenant, {row["id"]})
        return carpark_view(SimpleNamespace(**row))

    async def _carpark(self, conn: AsyncConnection, tenant: str, carpark_id: str) -> Any:
        row = (await conn.execute(select(carparks).where(carparks.c.tenant == tenant,
                                                         carparks.c.id == carpark_id))).first()
        if row is None:
            raise ResourceNotFound(f"no car park {carpark_id!r}")
        return row

    async def carpark(self, principal: Principal | None, tenant: str, carpark_id: str) -> dict[str, Any]:
        check(principal, "parking.read", tenant)
        async with self.engine.connect() as conn:
            return carpark_view(await self._carpark(conn, tenant, carpark_id))

    async def list_carparks(self, principal: Principal | None, tenant: str, limit: int = 200) -> list[dict[str, Any]]:
        check(principal, "parking.read", tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(carparks).where(carparks.c.tenant == tenant)
                                       .order_by(carparks.c.name, carparks.c.id).limit(limit))).all()
        return [carpark_view(row) for row in rows]

    # ------------------------------------------------------------------ vehicles (a citizen's plates)

    async def add_vehicle(self, principal: Principal | None, tenant: str, raw_plate: object) -> dict[str, Any]:
        if principal is None:
            check(principal, "parking.reserve", tenant)
        assert principal is not None
        check(principal, "parking.reserve", tenant, owner=principal.id)
        plate = plate_of(raw_plate)
        async with self._write() as conn:
            inserted = await conn.execute(dialect_insert(conn, vehicles).values(
                tenant=tenant, plate=plate, person=principal.id, created_at=clock.now())
                .on_conflict_do_nothing(index_elements=["tenant", "plate"]))
            if inserted.rowcount != 1:
                owner = (await conn.execute(select(vehicles.c.person).where(
                    vehicles.c.tenant == tenant, vehicles.c.plate == plate))).scalar_one()
                if owner != principal.id:
                    raise Conflict("this plate is registered to another account; ask the car park office")
        return {"plate": display_plate(plate)}

    async def _my_plates(self, conn: AsyncConnection, tenant: str, person: str) -> list[str]:
        return list((await conn.execute(select(vehicles.c.plate).where(
            vehicles.c.tenant == tenant, vehicles.c.person == person))).scalars())

    # ------------------------------------------------------------------ reservations

    async def reserve(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        if principal is None:
            check(principal, "parking.reserve", tenant)
        assert principal is not None
        check(principal, "parking.reserve", tenant, owner=principal.id)
        carpark_id = text_member(body, "carparkId", 64)
        plate = plate_of(body.get("plate"))
        start, end = moment_of(body.get("start"), "start"), moment_of(body.get("end"), "end")
        now = clock.now()
        if end <= start:
            raise BadRequestData("the window ends before it starts")
        if start < now - timedelta(minutes=1):
            raise BadRequestData("the window starts in the past; choose a later time")
        if end - start > MAX_WINDOW:
            raise BadRequestData("a reservation holds at most 24 hours")
        if start > now + MAX_AHEAD:
            raise BadRequestData("reservations open 24 hours ahead")
        async with self._write() as conn:
            carpark = await self._carpark(conn, tenant, carpark_id or "")
            if not is_open(carpark.opens, carpark.closes, start):
                raise BadRequestData(f"the car park is closed then (open {carpark.opens}-{carpark.closes})")
            taken = await conn.execute(update(carparks).where(
                carparks.c.tenant == tenant, carparks.c.id == carpark.id,
                carparks.c.occupied + carparks.c.held < carparks.c.total)
                .values(held=carparks.c.held + 1, updated_at=now))
            if taken.rowcount != 1:
                raise CarParkFull("no space left to reserve in this car park")
            duplicate = (await conn.execute(select(reservations.c.id).where(
                reservations.c.tenant == tenant, reservations.c.carpark_id == carpark.id,
                reservations.c.plate == plate, reservations.c.status == "held"))).first()
            if duplicate is not None:
                raise Conflict(f"this vehicle already holds reservation {duplicate.id} here")
            row = {"tenant": tenant, "id": new_id(), "carpark_id": carpark.id, "person": principal.id,
                   "plate": plate, "start": start, "end": end, "status": "held", "created_at": now,
                   "updated_at": now}
            await conn.execute(reservations.insert().values(**row))
            await self._audit(conn, principal, "parking.reserve", row["id"], tenant, carpark=carpark.id)
        await self._publish(tenant, {carpark.id})
        return reservation_view(SimpleNamespace(**row), clear=True)

    async def _reservation(self, conn: AsyncConnection, tenant: str, reservation_id: str) -> Any:
        row = (await conn.execute(select(reservations).where(reservations.c.tenant == tenant,
                                                             reservations.c.id == reservation_id))).first()
        if row is None:
            raise ResourceNotFound(f"no reservation {reservation_id!r}")
        return row

    async def cancel(self, principal: Principal | None, tenant: str, reservation_id: str) -> dict[str, Any]:
        async with self._write() as conn:
            row = await self._reservation(conn, tenant, reservation_id)
            carpark = await self._carpark(conn, tenant, row.carpark_id)
            if principal is None or row.person != principal.id:
                check(principal, "parking.manage", tenant, carpark.department)
            if row.status != "held":
                raise Conflict(f"the reservation is {row.status}, not held")
            await self._end_reservation(conn, tenant, row, "cancelled")
            await self._audit(conn, principal, "parking.cancel", reservation_id, tenant)
        await self._publish(tenant, {row.carpark_id})
        return {**reservation_view(row, clear=True), "status": "cancelled"}

    async def _end_reservation(self, conn: AsyncConnection, tenant: str, row: Any, status: str) -> None:
        await conn.execute(update(reservations).where(reservations.c.tenant == tenant, reservations.c.id == row.id,
                                                      reservations.c.status == "held")
                           .values(status=status, updated_at=clock.now()))
        await conn.execute(update(carparks).where(carparks.c.tenant == tenant, carparks.c.id == row.carpark_id,
                                                  carparks.c.held > 0).values(held=carparks.c.held - 1))

    async def my_reservations(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        if principal is None:
            check(principal, "parking.reserve", tenant)
        assert principal is not None
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(reservations).where(
                reservations.c.tenant == tenant, reservations.c.person == principal.id)
                .order_by(reservations.c.start.desc()).limit(200))).all()
        return [reservation_view(row, clear=True) for row in rows]

    async def release_no_shows(self) -> int:
        """Release every reservation whose vehicle has not arrived by start + GRACE (scheduled step)."""
        now = clock.now()
        touched: dict[str, set[str]] = {}
        async with self._write() as conn:
            due = (await conn.execute(select(reservations).where(
                reservations.c.status == "held", reservations.c.start < now - GRACE).limit(1000))).all()
            for row in due:
                await self._end_reservation(conn, row.tenant, row, "released")
                await self._audit(conn, None, "parking.noshow", row.id, row.tenant, carpark=row.carpark_id)
                touched.setdefault(row.tenant, set()).add(row.carpark_id)
        for tenant, ids in touched.items():
            await self._publish(tenant, ids)
        return len(due)

    # ------------------------------------------------------------------ plate events → sessions → payment

    async def plate_event(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """A gate camera read a plate at entry or exit. Idempotent by `eventId`; a second entry read of a
        vehicle already inside (or exit read of one already out) answers the session it belongs to."""
        event_id = text_member(body, "eventId", 128)
        carpark_id = text_member(body, "carparkId", 64)
        direction = body.get("direction")
        if direction not in ("entry", "exit"):
            raise BadRequestData("direction must be entry or exit")
        plate = plate_of(body.get("plate"))
        at = moment_of(body.get("at"), "at") if body.get("at") is not None else clock.now()
        if at > clock.now() + CLOCK_SKEW:
            raise BadRequestData("the event is stamped in the future")
        async with self._write() as conn:
            carpark = await self._carpark(conn, tenant, carpark_id or "")
            check(principal, "parking.gate", tenant, carpark.department)
            # Lock the car park's row first: two reads of one vehicle under different event ids (two cameras)
            # then see each other's session instead of both opening one (PostgreSQL; SQLite's writer lock
            # already serialises them).
            await conn.execute(update(carparks).where(carparks.c.tenant == tenant, carparks.c.id == carpark.id)
                               .values(updated_at=clock.now()))
            recorded = await conn.execute(dialect_insert(conn, plate_events).values(
                tenant=tenant, event_id=event_id, carpark_id=carpark.id, direction=direction, plate=plate, at=at,
                session_id=None).on_conflict_do_nothing(index_elements=["tenant", "event_id"]))
            if recorded.rowcount != 1:
                return await self._repeated_event(conn, tenant, event_id or "", carpark.id, direction, plate)
            if direction == "entry":
                row, duplicate = await self._enter(conn, tenant, carpark, plate, at)
            else:
                row, duplicate = await self._leave(conn, principal, tenant, carpark, plate, at)
            await conn.execute(update(plate_events).where(plate_events.c.tenant == tenant,
                                                          plate_events.c.event_id == event_id)
                               .values(session_id=row.id))
        if not duplicate:
            await self._publish(tenant, {carpark.id})
        return {**session_view(row, clear=True), "duplicate": duplicate}

    async def _repeated_event(self, conn: AsyncConnection, tenant: str, event_id: str, carpark_id: str,
                              direction: str, plate: str) -> dict[str, Any]:
        known = (await conn.execute(select(plate_events).where(plate_events.c.tenant == tenant,
                                                               plate_events.c.event_id == event_id))).one()
        if (known.carpark_id, known.direction, known.plate) != (carpark_id, direction, plate):
            raise Conflict(f"event {event_id!r} was already received with other content")
        if known.session_id is None:
            raise Conflict(f"event {event_id!r} is being processed")
        row = (await conn.execute(select(sessions).where(sessions.c.tenant == tenant,
                                                         sessions.c.id == known.session_id))).one()
        return {**session_view(row, clear=True), "duplicate": True}

    async def _open_session(self, conn: AsyncConnection, tenant: str, carpark_id: str, plate: str) -> Any:
        return (await conn.execute(select(sessions).where(
            sessions.c.tenant == tenant, sessions.c.carpark_id == carpark_id, sessions.c.plate == plate,
            sessions.c.status == "open"))).first()

    async def _enter(self, conn: AsyncConnection, tenant: str, carpark: Any, plate: str,
                     at: datetime) -> tuple[Any, bool]:
        inside = await self._open_session(conn, tenant, carpark.id, plate)
        if inside is not None:
            return inside, True
        reservation = (await conn.execute(select(reservations).where(
            reservations.c.tenant == tenant, reservations.c.carpark_id == carpark.id,
            reservations.c.plate == plate, reservations.c.status == "held",
            reservations.c.start <= at + EARLY_ARRIVAL, reservations.c.end > at))).first()
        now = clock.now()
        if reservation is not None:
            await conn.execute(update(reservations).where(reservations.c.tenant == tenant,
                                                          reservations.c.id == reservation.id)
                               .values(status="used", updated_at=now))
        else:
            taken = await conn.execute(update(carparks).where(
                carparks.c.tenant == tenant, carparks.c.id == carpark.id,
                carparks.c.occupied + carparks.c.held < carparks.c.total)
                .values(occupied=carparks.c.occupied + 1, updated_at=now))
            if taken.rowcount != 1:
                raise CarParkFull("the car park is full; the barrier stays closed")
        row = {"tenant": tenant, "id": new_id(), "carpark_id": carpark.id, "plate": plate,
               "reservation_id": reservation.id if reservation is not None else None, "entry_at": at,
               "exit_at": None, "fee": None, "status": "open", "dispute": None, "created_at": now, "updated_at": now}
        await conn.execute(sessions.insert().values(**row))
        return SimpleNamespace(**row), False

    async def _leave(self, conn: AsyncConnection, principal: Principal | None, tenant: str, carpark: Any,
                     plate: str, at: datetime) -> tuple[Any, bool]:
        inside = await self._open_session(conn, tenant, carpark.id, plate)
        if inside is None:
            last = (await conn.execute(select(sessions).where(
                sessions.c.tenant == tenant, sessions.c.carpark_id == carpark.id, sessions.c.plate == plate,
                sessions.c.exit_at.is_not(None)).order_by(sessions.c.exit_at.desc()).limit(1))).first()
            if last is not None and abs(clock.as_utc(last.exit_at) - at) <= CLOCK_SKEW:
                return last, True  # the exit camera read the same departure twice
            raise Conflict("no vehicle with this plate is inside this car park")
        entry = clock.as_utc(inside.entry_at)
        if at < entry:
            raise BadRequestData("the exit is stamped before the entry")
        amount = fee(entry, at, tariff_of(carpark), city_zone())
        counter = carparks.c.held if inside.reservation_id else carparks.c.occupied
        await conn.execute(update(carparks).where(carparks.c.tenant == tenant, carparks.c.id == carpark.id,
                                                  counter > 0).values({counter: counter - 1}))
        status = "paid"
        if amount > 0:
            status = await self._charge(conn, principal, tenant, inside.id, plate, amount)
        now = clock.now()
        await conn.execute(update(sessions).where(sessions.c.tenant == tenant, sessions.c.id == inside.id)
                           .values(exit_at=at, fee=amount, status=status, updated_at=now))
        return SimpleNamespace(**{**inside._mapping, "exit_at": at, "fee": amount, "status": status}), False

    async def _charge(self, conn: AsyncConnection, principal: Principal | None, tenant: str, session_id: str,
                      plate: str, amount: int) -> str:
        """Charge through the provider (the session id is its idempotency key); a decline leaves it unpaid."""
        result = await self.provider.charge(tenant, session_id, plate, amount)
        await conn.execute(payments.insert().values(
            tenant=tenant, id=new_id(), session_id=session_id, kind="charge", amount=amount,
            provider=self.provider.name, provider_ref=result.reference,
            status="succeeded" if result.ok else "failed", created_at=clock.now()))
        if not result.ok:
            await self._audit(conn, principal, "parking.charge", session_id, tenant, outcome="failed",
                              error=(result.error or "")[:200])
        return "paid" if result.ok else "unpaid"

    async def _session(self, conn: AsyncConnection, tenant: str, session_id: str) -> Any:
        row = (await conn.execute(select(sessions).where(sessions.c.tenant == tenant,
                                                         sessions.c.id == session_id))).first()
        if row is None:
            raise ResourceNotFound(f"no parking session {session_id!r}")
        return row

    async def _payments(self, conn: AsyncConnection, tenant: str, session_id: str) -> list[Any]:
        return list((await conn.execute(select(payments).where(
            payments.c.tenant == tenant, payments.c.session_id == session_id)
            .order_by(payments.c.created_at, payments.c.id))).all())

    @staticmethod
    def _payment_view(row: Any) -> dict[str, Any]:
        return {"id": row.id, "kind": row.kind, "amount": row.amount, "provider": row.provider,
                "reference": row.provider_ref, "status": row.status, "at": clock.iso(clock.as_utc(row.created_at))}

    async def session(self, principal: Principal | None, tenant: str, session_id: str) -> dict[str, Any]:
        """One session with its payments: the vehicle's owner or the car park's staff."""
        async with self.engine.connect() as conn:
            row = await self._session(conn, tenant, session_id)
            carpark = await self._carpark(conn, tenant, row.carpark_id)
            owner = principal is not None and row.plate in await self._my_plates(conn, tenant, principal.id)
            if not owner:
                check(principal, "parking.manage", tenant, carpark.department)
            paid = await self._payments(conn, tenant, session_id)
        return {**session_view(row, clear=True), "payments": [self._payment_view(p) for p in paid]}

    async def my_sessions(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        """My sessions and bills: those of the plates registered to my account."""
        if principal is None:
            check(principal, "parking.reserve", tenant)
        assert principal is not None
        async with self.engine.connect() as conn:
            plates = await self._my_plates(conn, tenant, principal.id)
            rows = (await conn.execute(select(sessions).where(
                sessions.c.tenant == tenant, sessions.c.plate.in_(plates))
                .order_by(sessions.c.entry_at.desc()).limit(200))).all() if plates else []
        return [session_view(row, clear=True) for row in rows]

    async def carpark_sessions(self, principal: Principal | None, tenant: str, carpark_id: str,
                               limit: int = 200) -> list[dict[str, Any]]:
        """A car park's sessions: plates in clear for its own staff, masked (粤B·***45) for monitors."""
        async with self.engine.connect() as conn:
            carpark = await self._carpark(conn, tenant, carpark_id)
            clear = may(principal, "parking.manage", tenant, carpark.department)
            if not clear:
                check(principal, "parking.monitor", tenant)
            rows = (await conn.execute(select(sessions).where(
                sessions.c.tenant == tenant, sessions.c.carpark_id == carpark_id)
                .order_by(sessions.c.entry_at.desc()).limit(limit))).all()
        return [session_view(row, clear) for row in rows]

    # ------------------------------------------------------------------ disputes and refunds (audited)

    async def dispute(self, principal: Principal | None, tenant: str, session_id: str,
                      reason: object) -> dict[str, Any]:
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
            raise BadRequestData("reason must be a non-empty string of at most 1000 characters")
        if principal is None:
            check(principal, "parking.reserve", tenant)
        assert principal is not None
        async with self._write() as conn:
            row = await self._session(conn, tenant, session_id)
            if row.plate not in await self._my_plates(conn, tenant, principal.id):
                raise Forbidden("only the vehicle's registered owner can dispute its bill")
            if row.status not in ("paid", "unpaid"):
                raise Conflict(f"the session is {row.status}; only a closed bill can be disputed")
            await conn.execute(update(sessions).where(sessions.c.tenant == tenant, sessions.c.id == session_id)
                               .values(status="disputed", dispute=reason.strip(), updated_at=clock.now()))
            await self._audit(conn, principal, "parking.dispute", session_id, tenant, reason=reason.strip()[:200])
        return {**session_view(row, clear=True), "status": "disputed", "dispute": reason.strip()}

    async def refund(self, principal: Principal | None, tenant: str, session_id: str, amount: object,
                     reason: object) -> dict[str, Any]:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise BadRequestData("amount must be a positive integer (fen)")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
            raise BadRequestData("reason must be a non-empty string of at most 1000 characters")
        async with self._write() as conn:
            row = await self._session(conn, tenant, session_id)
            carpark = await self._carpark(conn, tenant, row.carpark_id)
            check(principal, "parking.manage", tenant, carpark.department)
            paid = await self._payments(conn, tenant, session_id)
            charge = next((p for p in paid if p.kind == "charge" and p.status == "succeeded"), None)
            if charge is None:
                raise Conflict("nothing was charged for this session")
            refunded = sum(p.amount for p in paid if p.kind == "refund" and p.status == "succeeded")
            if amount > charge.amount - refunded:
                raise BadRequestData(f"at most {charge.amount - refunded} fen can still be refunded")
            result = await self.provider.refund(tenant, charge.provider_ref, amount)
            if not result.ok:
                raise Conflict(f"the payment provider refused the refund: {result.error}")
            await conn.execute(payments.insert().values(
                tenant=tenant, id=new_id(), session_id=session_id, kind="refund", amount=amount,
                provider=self.provider.name, provider_ref=result.reference, status="succeeded",
                created_at=clock.now()))
            await conn.execute(update(sessions).where(sessions.c.tenant == tenant, sessions.c.id == session_id)
                               .values(status="refunded", updated_at=clock.now()))
            await self._audit(conn, principal, "parking.refund", session_id, tenant, amount=amount,
                              reason=reason.strip()[:200])
        return await self.session(principal, tenant, session_id)


    # ------------------------------------------------------------------ guidance and occupancy history

    async def guidance(self, principal: Principal | None, tenant: str, lat: float, lon: float,
                       arrival: datetime | None, radius_m: float, limit: int) -> list[dict[str, Any]]:
        check(principal, "parking.read", tenant)
        return await guidance.nearest(self.engine, tenant, lat, lon, arrival, radius_m, limit)

    async def record_occupancy(self) -> int:
        """One occupancy sample per car park (scheduled), then the hub's availability refreshed."""
        async with self._write() as conn:
            count = await guidance.record_occupancy(conn)
            rows = (await conn.execute(select(carparks.c.tenant, carparks.c.id))).all()
        by_tenant: dict[str, set[str]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant, set()).add(row.id)
        for tenant, ids in by_tenant.items():
            await self._publish(tenant, ids)
        return count
