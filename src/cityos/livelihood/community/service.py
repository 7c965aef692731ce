"""Community services: residents' registry, one-click repair with an SLA, targeted notices with read receipts."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError
from shapely.geometry import shape
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import WritingService, dialect_insert
from cityos.core.errors import BadRequestData, Conflict, NonexistentTenant, ResourceNotFound, TooLarge
from cityos.hub.geoquery import DEFAULT_GEOPROPERTY
from cityos.hub.jsonld import ActiveContext
from cityos.hub.service import HubService
from cityos.hub.store import EntityQuery
from cityos.livelihood.community import circle
from cityos.livelihood.community.models import PLACES, REPAIR_FLOW, notices, receipts, repairs, residents
from cityos.security.policy import Principal, Resource, authorize
from cityos.security.service import Forbidden, require_allowed

CODE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
PHONE = re.compile(r"^1[3-9]\d{9}$")  # a mainland mobile number
MAX_PHOTO_BYTES = 2 * 1024 * 1024
PHOTO_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


class Notifications(Protocol):
    async def notify(self, tenant: str, user_id: str, subject: str, body: str, *, email: str | None = None,
                     phone: str | None = None, link: str | None = None,
                     conn: AsyncConnection | None = None) -> dict[str, Any]: ...

    def wake(self) -> None: ...


class Cipher(Protocol):
    def encrypt(self, plaintext: str, aad: bytes | None = None) -> str: ...

    def decrypt(self, token: str, aad: bytes | None = None) -> str: ...


def acting(principal: Principal | None, action: str, tenant: str) -> Principal:
    require_allowed(principal, action, Resource("community", tenant))
    assert principal is not None
    return principal


def is_staff(principal: Principal | None, tenant: str) -> bool:
    return bool(authorize(principal, "community.manage", Resource("community", tenant)))


def code(value: Any, name: str) -> str:
    if not isinstance(value, str) or not CODE.match(value):
        raise BadRequestData(f"{name} must be 1–64 letters, digits, _ or -")
    return value


def text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{name} must be a non-empty text of at most {limit} characters")
    return value.strip()


def checked_photo(data: bytes) -> str:
    """The photo's content type, after Pillow has read it as a JPEG or PNG (the name or header claims nothing)."""
    if len(data) > MAX_PHOTO_BYTES:
        raise TooLarge(f"a photo may be at most {MAX_PHOTO_BYTES // (1024 * 1024)} MiB")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadRequestData("the photo is not a readable JPEG or PNG image") from exc
    if kind not in PHOTO_TYPES:
        raise BadRequestData("the photo must be a JPEG or PNG image")
    return PHOTO_TYPES[kind]


def location_of(record: Any) -> dict[str, Any] | None:
    for inst in record.attrs.get(DEFAULT_GEOPROPERTY, [])[:1]:
        value = inst.get("value")
        if isinstance(value, dict):
            return value
    return None


def repair_view(row: Any, *, staff: bool) -> dict[str, Any]:
    label, hours = PLACES[row.place]
    overdue = row.status not in ("done", "confirmed") and clock.as_utc(row.due_at) < clock.now()
    view = {"id": row.id, "community": row.community, "building": row.building, "place": row.place,
            "placeLabel": label, "slaHours": hours, "description": row.description, "status": row.status,
            "due": clock.iso(clock.as_utc(row.due_at)), "overdue": overdue, "rating": row.rating,
            "hasPhoto": row.photo_type is not None, "created": clock.iso(clock.as_utc(row.created_at)),
            "history": [{k: v for k, v in step.items() if k != "by" or staff} for step in row.history]}
    if staff:
        view["reporter"] = row.reporter
    return view


class CommunityService(WritingService):
    def __init__(self, engine: AsyncEngine, write_lock: asyncio.Lock, notifications: Notifications | None,
                 cipher: Cipher, hub: HubService | None = None, ctx: ActiveContext | None = None) -> None:
        super().__init__(engine, write_lock)
        self.notifications = notifications
        self.cipher = cipher
        self.hub = hub
        self.ctx = ctx

    # ------------------------------------------------------------------ the 15-minute living circle

    async def _entities(self, tenant: str, type_name: str) -> list[Any]:
        assert self.hub is not None and self.ctx is not None
        records: list[Any] = []
        while True:
            try:
                page, _ = await self.hub.query(tenant, EntityQuery(types=[self.ctx.expand(type_name)], limit=1000,
                                                                    offset=len(records)))
            except NonexistentTenant:
                return records
            records.extend(page)
            if len(page) < 1000:
                return records

    def _value(self, record: Any, name: str) -> Any:
        assert self.ctx is not None
        for inst in record.attrs.get(self.ctx.expand(name), [])[:1]:
            return inst.get("value")
        return None

    async def _communities(self, tenant: str) -> list[dict[str, Any]]:
        """The city's communities as the hub knows them: `Community` entities (id urn:ngsi-ld:Community:<code>,
        the same code repairs, notices, the council and waste sorting use; a name, the district they belong to,
        a location). A city that has published none gets its districts instead, coded by their id."""
        found: list[dict[str, Any]] = []
        records = await self._entities(tenant, "Community")
        for record in records or await self._entities(tenant, "District"):
            area = location_of(record)
            ident = str(record.id).rsplit(":", 1)[-1]
            if area is None or not CODE.match(ident):
                continue
            centre = shape(area).representative_point()
            district = self._value(record, "district") if records else ident
            found.append({"code": ident, "name": str(self._value(record, "name") or ident),
                          "district": str(district) if district is not None else None,
                          "lon": float(centre.x), "lat": float(centre.y)})
        return found

    async def communities(self, principal: Principal | None, tenant: str) -> list[dict[str, Any]]:
        """Every community code in use: the hub's communities (with name and district) and the codes the offices
        already work with (residents, repairs, notices), so staff pick a community rather than type its code."""
        require_allowed(principal, "community.plan", Resource("community", tenant))
        known: dict[str, dict[str, Any]] = {}
        if self.hub is not None and self.ctx is not None:
            for place in await self._communities(tenant):
                known[place["code"]] = {"code": place["code"], "name": place["name"], "district": place["district"]}
        async with self.engine.connect() as conn:
            for table in (residents, repairs, notices):
                for (used,) in await conn.execute(select(table.c.community).where(table.c.tenant == tenant)
                                                  .distinct()):
                    known.setdefault(used, {"code": used, "name": used, "district": None})
        return sorted(known.values(), key=lambda c: c["code"])

    async def living_circles(self, principal: Principal | None, tenant: str, minutes: float) -> dict[str, Any]:
        """For each community (`_communities`): what is within `minutes` on foot from its centre, and what
        is missing; for planners, so no personal data."""
        require_allowed(principal, "community.plan", Resource("community", tenant))
        if self.hub is None or self.ctx is None:
            raise ResourceNotFound("the hub is not available")
        roads = [shape(geo) for record in await self._entities(tenant, "Road")
                 if (geo := location_of(record)) is not None]
        graph = circle.street_graph([line for line in roads if line.geom_type == "LineString"])
        places: list[circle.Place] = []
        for record in await self._entities(tenant, "PointOfInterest"):
            point = location_of(record)
            categories = self._value(record, "category")
            for category in categories if isinstance(categories, list) else [categories]:
                if point is not None and point.get("type") == "Point" and isinstance(category, str):
                    lon, lat = point["coordinates"][:2]
                    places.append(circle.Place(record.id, str(self._value(record, "name") or record.id), category,
                                               float(lon), float(lat)))
        for record in await self._entities(tenant, "GtfsStop"):
            point = location_of(record)
            if point is not None and point.get("type") == "Point":
                lon, lat = point["coordinates"][:2]
                places.append(circle.Place(record.id, str(self._value(record, "name") or record.id), "busStop",
                                           float(lon), float(lat)))
        communities = []
        for place in await self._communities(tenant):
            found = await asyncio.to_thread(circle.circle_of, graph, place["name"], place["lon"], place["lat"],
                                            places, minutes)
            communities.append({**found, "code": place["code"], "district": place["district"]})
        gaps: dict[str, int] = {need: sum(need in c["gaps"] for c in communities) for need in circle.NEEDS}
        return {"minutes": minutes, "streets": graph.number_of_edges(), "places": len(places),
                "communities": communities, "communitiesMissing": gaps}

    # ------------------------------------------------------------------ residents

    async def register(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """The community office records a resident's building (and mobile number for urgent notices)."""
        acting(principal, "community.manage", tenant)
        community, building = code(body.get("community"), "community"), code(body.get("building"), "building")
        person = text(body.get("person"), "person", 256)
        phone = body.get("phone")
        if phone is not None and (not isinstance(phone, str) or not PHONE.match(phone)):
            raise BadRequestData("phone must be an 11-digit mainland mobile number")
        values = {"tenant": tenant, "community": community, "person": person, "building": building,
                  "phone": self.cipher.encrypt(phone) if phone else None}
        async with self._write() as conn:
            statement = dialect_insert(conn, residents).values(**values)
            await conn.execute(statement.on_conflict_do_update(
                index_elements=["tenant", "community", "person"],
                set_={"building": statement.excluded.building, "phone": statement.excluded.phone}))
        return {"community": community, "person": person, "building": building, "phone": bool(phone)}

    async def _resident(self, conn: AsyncConnection, tenant: str, person: str) -> Any:
        row = (await conn.execute(select(residents).where(residents.c.tenant == tenant,
                                                          residents.c.person == person))).first()
        if row is None:
            raise Forbidden("you are not registered as a resident of a community; ask your community office")
        return row

    # ------------------------------------------------------------------ repairs

    async def report(self, principal: Principal | None, tenant: str, body: dict[str, Any],
                     photo: bytes | None) -> dict[str, Any]:
        resident = acting(principal, "community.report", tenant)
        place = body.get("place")
        if place not in PLACES:
            raise BadRequestData(f"place must be one of {', '.join(PLACES)}")
        description = text(body.get("description"), "description", 1000)
        photo_type = checked_photo(photo) if photo else None
        now = clock.now()
        async with self._write() as conn:
            home = await self._resident(conn, tenant, resident.id)
            row = {"tenant": tenant, "id": uuid.uuid4().hex[:16], "community": home.community,
                   "building": home.building, "place": place, "description": description, "photo": photo,
                   "photo_type": photo_type, "reporter": resident.id, "status": "reported",
                   "due_at": now + timedelta(hours=PLACES[place][1]), "rating": None,
                   "history": [{"status": "reported", "at": clock.iso(now), "by": resident.id}],
                   "created_at": now, "updated_at": now}
            await conn.execute(repairs.insert().values(**row))
        return repair_view(SimpleNamespace(**row), staff=False)

    async def _repair(self, conn: AsyncConnection, tenant: str, repair_id: str) -> Any:
        row = (await conn.execute(select(repairs).where(repairs.c.tenant == tenant, repairs.c.id == repair_id))).first()
        if row is None:
            raise ResourceNotFound(f"no repair {repair_id!r}")
        return row

    async def repair(self, principal: Principal | None, tenant: str, repair_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await self._repair(conn, tenant, repair_id)
        staff = is_staff(principal, tenant)
        if not staff and (principal is None or principal.id != row.reporter):
            raise ResourceNotFound(f"no repair {repair_id!r}")
        return repair_view(row, staff=staff)

    async def photo(self, principal: Principal | None, tenant: str, repair_id: str) -> tuple[bytes, str]:
        async with self.engine.connect() as conn:
            row = await self._repair(conn, tenant, repair_id)
        if not is_staff(principal, tenant) and (principal is None or principal.id != row.reporter):
            raise ResourceNotFound(f"no repair {repair_id!r}")
        if row.photo is None:
            raise ResourceNotFound("this report has no photo")
        return bytes(row.photo), str(row.photo_type)

    async def list_repairs(self, principal: Principal | None, tenant: str, community: str | None,
                           only_open: bool) -> list[dict[str, Any]]:
        """Staff: a community's work orders (overdue first); a resident: their own reports."""
        staff = is_staff(principal, tenant)
        acting(principal, "community.manage" if staff else "community.report", tenant)
        assert principal is not None
        query = select(repairs).where(repairs.c.tenant == tenant)
        if staff:
            if community:
                query = query.where(repairs.c.community == code(community, "community"))
        else:
            query = query.where(repairs.c.reporter == principal.id)
        if only_open:
            query = query.where(repairs.c.status.not_in(("confirmed",)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(repairs.c.due_at).limit(500))).all()
        return [repair_view(row, staff=staff) for row in rows]

    async def advance(self, principal: Principal | None, tenant: str, repair_id: str, to: Any,
                      note: Any = None, rating: Any = None) -> dict[str, Any]:
        """Staff move a work order along; the reporter confirms the fix (with a 1–5 rating) or reopens it."""
        if not isinstance(to, str):
            raise BadRequestData("to must be a status")
        if note is not None and (not isinstance(note, str) or len(note) > 500):
            raise BadRequestData("note must be a text of at most 500 characters")
        async with self._write() as conn:
            row = await self._repair(conn, tenant, repair_id)
            resident_step = to in ("confirmed", "reopened")
            if resident_step:
                actor = acting(principal, "community.report", tenant)
                if actor.id != row.reporter:
                    raise ResourceNotFound(f"no repair {repair_id!r}")
            else:
                actor = acting(principal, "community.manage", tenant)
            if to not in REPAIR_FLOW.get(row.status, ()):
                raise Conflict(f"a {row.status} repair cannot go to {to}")
            values: dict[str, Any] = {"status": to, "updated_at": clock.now()}
            if to == "confirmed":
                if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
                    raise BadRequestData("confirming a fix needs a rating from 1 to 5")
                values["rating"] = rating
            step = {"status": to, "at": clock.iso(clock.now()), "by": actor.id, **({"note": note} if note else {})}
            values["history"] = [*row.history, step]
            changed = await conn.execute(update(repairs).where(repairs.c.tenant == tenant, repairs.c.id == repair_id,
                                                               repairs.c.status == row.status).values(**values))
            if changed.rowcount != 1:
                raise Conflict("the repair changed meanwhile; reload")
            if to == "done" and self.notifications is not None:
                await self.notifications.notify(
                    tenant, row.reporter, "报修已处理 Your repair is done",
                    f"您报修的{PLACES[row.place][0]}已处理，请确认并评价。Please confirm the fix and rate it.",
                    conn=conn)
            updated = await self._repair(conn, tenant, repair_id)
        return repair_view(updated, staff=not resident_step)

    # ------------------------------------------------------------------ notices

    async def publish(self, principal: Principal | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        author = acting(principal, "community.manage", tenant)
        community = code(body.get("community"), "community")
        title, content = text(body.get("title"), "title", 200), text(body.get("body"), "body", 5000)
        buildings = body.get("buildings", [])
        if not isinstance(buildings, list) or len(buildings) > 200:
            raise BadRequestData("buildings must be a list (empty for the whole community)")
        buildings = [code(b, "building") for b in buildings]
        urgent = body.get("urgent", False)
        if not isinstance(urgent, bool):
            raise BadRequestData("urgent must be true or false")
        now = clock.now()
        notice_id = uuid.uuid4().hex[:16]
        sms = 0
        async with self._write() as conn:
            query = select(residents).where(residents.c.tenant == tenant, residents.c.community == community)
            if buildings:
                query = query.where(residents.c.building.in_(buildings))
            audience = (await conn.execute(query)).all()
            await conn.execute(notices.insert().values(
                tenant=tenant, id=notice_id, community=community, buildings=buildings, title=title, body=content,
                urgent=urgent, author=author.id, created_at=now, recipients=len(audience)))
            if self.notifications is not None:
                for resident in audience:
                    phone = self.cipher.decrypt(resident.phone) if urgent and resident.phone else None
                    sms += phone is not None
                    await self.notifications.notify(tenant, resident.person, f"社区通知 {title}", content,
                                                    phone=phone, link=f"/api/community/notices/{notice_id}",
                                                    conn=conn)
        if sms and self.notifications is not None:
            self.notifications.wake()
        return {"id": notice_id, "community": community, "buildings": buildings, "title": title,
                "urgent": urgent, "recipients": len(audience), "sms": sms, "created": clock.iso(now)}

    async def read_notice(self, principal: Principal | None, tenant: str, notice_id: str) -> dict[str, Any]:
        """A resident opens a notice meant for them; the first read is their receipt."""
        reader = acting(principal, "community.report", tenant)
        async with self._write() as conn:
            notice = (await conn.execute(select(notices).where(notices.c.tenant == tenant,
                                                               notices.c.id == notice_id))).first()
            home = (await conn.execute(select(residents).where(
                residents.c.tenant == tenant, residents.c.person == reader.id))).first()
            meant = notice is not None and home is not None and home.community == notice.community and (
                not notice.buildings or home.building in notice.buildings)
            if not meant:
                raise ResourceNotFound(f"no notice {notice_id!r}")
            assert notice is not None
            with contextlib.suppress(IntegrityError):
                async with conn.begin_nested():
                    await conn.execute(receipts.insert().values(tenant=tenant, notice_id=notice_id,
                                                                person=reader.id, read_at=clock.now()))
        return {"id": notice.id, "title": notice.title, "body": notice.body, "urgent": notice.urgent,
                "created": clock.iso(clock.as_utc(notice.created_at))}

    async def home(self, principal: Principal | None, tenant: str) -> dict[str, Any]:
        """The caller's own community and building (a resident's pages start from it)."""
        resident = acting(principal, "community.report", tenant)
        async with self.engine.connect() as conn:
            row = await self._resident(conn, tenant, resident.id)
        return {"community": row.community, "building": row.building}

    async def list_notices(self, principal: Principal | None, tenant: str,
                           community: str | None) -> list[dict[str, Any]]:
        """A resident: the notices meant for their building, newest first, each with whether they have read it.
        Staff: a community's notices with their read counts."""
        staff = is_staff(principal, tenant)
        reader = acting(principal, "community.manage" if staff else "community.report", tenant)
        async with self.engine.connect() as conn:
            query = select(notices).where(notices.c.tenant == tenant)
            home = None
            if staff:
                if community:
                    query = query.where(notices.c.community == code(community, "community"))
            else:
                home = await self._resident(conn, tenant, reader.id)
                query = query.where(notices.c.community == home.community)
            rows = (await conn.execute(query.order_by(notices.c.created_at.desc()).limit(200))).all()
            ids = [r.id for r in rows]
            if home is not None:
                read_ids = set((await conn.execute(select(receipts.c.notice_id).where(
                    receipts.c.tenant == tenant, receipts.c.person == reader.id,
                    receipts.c.notice_id.in_(ids)))).scalars()) if ids else set()
                counts: dict[str, int] = {}
            else:
                read_ids = set()
                counts = dict((await conn.execute(select(receipts.c.notice_id, func.count()).where(
                    receipts.c.tenant == tenant, receipts.c.notice_id.in_(ids))
                    .group_by(receipts.c.notice_id))).all()) if ids else {}
        out = []
        for row in rows:
            if home is not None and row.buildings and home.building not in row.buildings:
                continue
            view: dict[str, Any] = {"id": row.id, "community": row.community, "title": row.title,
                                    "urgent": row.urgent, "buildings": row.buildings,
                                    "created": clock.iso(clock.as_utc(row.created_at))}
            if home is not None:
                view["read"] = row.id in read_ids
            else:
                view.update(recipients=row.recipients, readCount=counts.get(row.id, 0))
            out.append(view)
        return out

    async def receipts_of(self, principal: Principal | None, tenant: str, notice_id: str) -> dict[str, Any]:
        """Staff: how many of the recipients have read it (counts, and per building)."""
        acting(principal, "community.manage", tenant)
        async with self.engine.connect() as conn:
            notice = (await conn.execute(select(notices).where(notices.c.tenant == tenant,
                                                               notices.c.id == notice_id))).first()
            if notice is None:
                raise ResourceNotFound(f"no notice {notice_id!r}")
            rows = (await conn.execute(select(residents.c.building, func.count()).select_from(
                receipts.join(residents, (residents.c.tenant == receipts.c.tenant)
                              & (residents.c.person == receipts.c.person)
                              & (residents.c.community == notice.community)))
                .where(receipts.c.tenant == tenant, receipts.c.notice_id == notice_id)
                .group_by(residents.c.building))).all()
        read = sum(count for _, count in rows)
        return {"id": notice_id, "recipients": notice.recipients, "read": read,
                "readShare": round(read / notice.recipients, 4) if notice.recipients else None,
                "byBuilding": {building: count for building, count in rows}}
