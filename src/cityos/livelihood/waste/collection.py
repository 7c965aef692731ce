"""Collection tasks (清运任务): a smart bin that reports itself full becomes one task for the sanitation department.

Bins are IoT devices of the profile ``waste-bin``; their readings reach the hub as changes of the observed
entity ``urn:ngsi-ld:WasteContainer:<name>`` (attribute ``fillingLevel``, 0–1). This module listens to those
changes on the event bus (it reads no IoT table): a reading at or above ``FULL_AT`` opens a task unless the bin
already has an open one (one task per bin until it is emptied: the unique ``open_key`` holds the bin while the
task is open and NULL after, and NULLs never collide). The task closes when the crew marks it emptied, or when
the bin itself reports a level below ``EMPTY_BELOW`` (the sensor saw the emptying). A full reading observed
before the last emptying (a late, buffered reading) opens nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Float, Index, PrimaryKeyConstraint, String, Table, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError

from cityos.core import clock
from cityos.core.db import WritingService
from cityos.core.errors import BadRequestData, Conflict, ResourceNotFound
from cityos.core.events import EventBus
from cityos.core.sqltypes import Timestamp
from cityos.livelihood.waste.models import metadata
from cityos.security.policy import Principal, Resource
from cityos.security.service import require_allowed

log = logging.getLogger(__name__)

FULL_AT = 0.8
EMPTY_BELOW = 0.3
SANITATION = "sanitation"          # the department that owns collection tasks
BIN_PREFIX = "urn:ngsi-ld:WasteContainer:"
OPENED_TOPIC = "waste.collection.opened"
EMPTIED_TOPIC = "waste.collection.emptied"
STATUSES = ("open", "emptied")

collections = Table(
    "waste_collections", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("bin", String(256), nullable=False),            # the WasteContainer entity id
    Column("open_key", String(256), nullable=True),        # = bin while open, NULL once emptied (dedup key)
    Column("district", String(64), nullable=True),
    Column("lon", Float, nullable=True),
    Column("lat", Float, nullable=True),
    Column("fill", Float, nullable=False),                 # the latest level seen while open
    Column("status", String(16), nullable=False),          # open | emptied
    Column("opened_at", Timestamp, nullable=False),        # when the full reading was observed
    Column("last_reading_at", Timestamp, nullable=False),
    Column("emptied_at", Timestamp, nullable=True),
    Column("emptied_by", String(256), nullable=True),      # a crew member's id, or "sensor"
    PrimaryKeyConstraint("tenant", "id", name="pk_waste_collections"),
    UniqueConstraint("tenant", "open_key", name="uq_waste_collections_open"),
)
Index("ix_waste_collections_bin", collections.c.tenant, collections.c.bin, collections.c.opened_at)
Index("ix_waste_collections_status", collections.c.tenant, collections.c.status, collections.c.opened_at)
COLLECTION_TABLES = [collections]


def task_view(row: Any) -> dict[str, Any]:
    """A task: the bin, where, how full, since when, and who emptied it (no personal data about residents)."""
    return {"id": row.id, "bin": row.bin, "name": row.bin.removeprefix(BIN_PREFIX), "district": row.district,
            "location": [row.lon, row.lat] if row.lon is not None and row.lat is not None else None,
            "fill": round(row.fill, 3), "status": row.status, "opened": clock.iso(clock.as_utc(row.opened_at)),
            "lastReading": clock.iso(clock.as_utc(row.last_reading_at)),
            "emptied": clock.iso(clock.as_utc(row.emptied_at)) if row.emptied_at is not None else None,
            "emptiedBy": row.emptied_by,
            "waitingMinutes": round(((row.emptied_at and clock.as_utc(row.emptied_at)) or clock.now())
                                    .timestamp() / 60 - clock.as_utc(row.opened_at).timestamp() / 60, 1)}


def bin_reading(change: Any) -> dict[str, Any] | None:
    """The fill level, time, district and location of a WasteContainer change, or None for anything else."""
    after = getattr(change, "after", None)
    if after is None or not str(after.id).startswith(BIN_PREFIX):
        return None
    found: dict[str, Any] = {}
    for iri, instances in after.attrs.items():
        name = iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
        if instances and isinstance(instances[0], dict) and name in ("fillingLevel", "district", "location"):
            found[name] = instances[0]
    fill = found.get("fillingLevel", {})
    level = fill.get("value")
    if isinstance(level, bool) or not isinstance(level, int | float):
        return None
    observed = fill.get("observedAt")
    try:
        at = clock.parse_iso(observed) if isinstance(observed, str) else clock.now()
    except ValueError:
        at = clock.now()
    district = found.get("district", {}).get("value")
    point = found.get("location", {}).get("value")
    coordinates = point.get("coordinates") if isinstance(point, dict) and point.get("type") == "Point" else None
    return {"bin": str(after.id), "fill": float(level), "at": at,
            "district": str(district)[:64] if isinstance(district, str) else None,
            "lon": float(coordinates[0]) if coordinates else None,
            "lat": float(coordinates[1]) if coordinates else None}


class CollectionService(WritingService):
    """Opens, deduplicates and closes collection tasks; lists them for the sanitation department."""

    bus: EventBus | None = None

    async def on_entity_changed(self, event: Any) -> None:
        reading = bin_reading(event.payload.get("change"))
        if reading is None:
            return
        await self.observe(str(event.payload.get("tenant") or ""), reading)

    async def observe(self, tenant: str, reading: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one bin reading; returns the task it opened or closed, if any."""
        fill, at = reading["fill"], reading["at"]
        async with self.engine.connect() as conn:
            current = (await conn.execute(select(collections).where(
                collections.c.tenant == tenant, collections.c.open_key == reading["bin"]))).first()
        if current is None and fill < FULL_AT:
            return None  # the common case: a bin that is not full and has no task
        async with self._write() as conn:
            current = (await conn.execute(select(collections).where(
                collections.c.tenant == tenant, collections.c.open_key == reading["bin"]))).first()
            if current is not None:
                if at <= clock.as_utc(current.last_reading_at):
                    return None  # an older reading than the one already applied
                if fill < EMPTY_BELOW:
                    await self._close(conn, tenant, current.id, at, "sensor")
                    opened_or_closed = {"id": current.id, "status": "emptied", "bin": current.bin}
                else:
                    await conn.execute(update(collections).where(
                        collections.c.tenant == tenant, collections.c.id == current.id)
                        .values(fill=fill, last_reading_at=at))
                    return None
            else:
                last_emptied = (await conn.execute(select(collections.c.emptied_at).where(
                    collections.c.tenant == tenant, collections.c.bin == reading["bin"],
                    collections.c.status == "emptied").order_by(collections.c.emptied_at.desc()).limit(1))) \
                    .scalar_one_or_none()
                if last_emptied is not None and at <= clock.as_utc(last_emptied):
                    return None  # observed before the bin was emptied: it arrived late
                row = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "bin": reading["bin"],
                       "open_key": reading["bin"], "district": reading["district"], "lon": reading["lon"],
                       "lat": reading["lat"], "fill": fill, "status": "open", "opened_at": at,
                       "last_reading_at": at, "emptied_at": None, "emptied_by": None}
                try:
                    async with conn.begin_nested():
                        await conn.execute(collections.insert().values(**row))
                except IntegrityError:
                    return None  # another process opened it first: still one task per bin
                opened_or_closed = {"id": row["id"], "status": "open", "bin": row["bin"]}
        if self.bus is not None:
            topic = OPENED_TOPIC if opened_or_closed["status"] == "open" else EMPTIED_TOPIC
            await self.bus.publish(topic, {"tenant": tenant, "task": opened_or_closed})
        return opened_or_closed

    @staticmethod
    async def _close(conn: Any, tenant: str, task_id: str, at: datetime, by: str) -> bool:
        changed = await conn.execute(update(collections).where(
            collections.c.tenant == tenant, collections.c.id == task_id, collections.c.status == "open")
            .values(status="emptied", open_key=None, emptied_at=at, emptied_by=by))
        return bool(changed.rowcount == 1)

    async def list_tasks(self, principal: Principal | None, tenant: str, status: str | None,
                         district: str | None, limit: int = 200) -> list[dict[str, Any]]:
        """Open tasks longest-waiting first; emptied ones most recent first."""
        require_allowed(principal, "waste.collect", Resource("waste", tenant, department=SANITATION))
        if status not in (None, "all", *STATUSES):
            raise BadRequestData("status must be open, emptied or all")
        query = select(collections).where(collections.c.tenant == tenant)
        if status in STATUSES:
            query = query.where(collections.c.status == status)
        if district:
            query = query.where(collections.c.district == district)
        order = collections.c.opened_at if status == "open" else collections.c.opened_at.desc()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(order).limit(limit))).all()
        return [task_view(r) for r in rows]

    async def mark_emptied(self, principal: Principal | None, tenant: str, task_id: str) -> dict[str, Any]:
        require_allowed(principal, "waste.collect", Resource("waste", tenant, department=SANITATION))
        assert principal is not None
        async with self._write() as conn:
            row = (await conn.execute(select(collections).where(collections.c.tenant == tenant,
                                                                collections.c.id == task_id))).first()
            if row is None:
                raise ResourceNotFound(f"no collection task {task_id!r}")
            if not await self._close(conn, tenant, task_id, clock.now(), principal.id):
                raise Conflict("this bin was already emptied")
            updated = (await conn.execute(select(collections).where(collections.c.tenant == tenant,
                                                                    collections.c.id == task_id))).one()
        if self.bus is not None:
            await self.bus.publish(EMPTIED_TOPIC, {"tenant": tenant, "task": {"id": task_id, "status": "emptied",
                                                                              "bin": row.bin}})
        return task_view(updated)
