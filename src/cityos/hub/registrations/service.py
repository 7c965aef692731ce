"""Context Source registrations: create, retrieve, query, update, delete (§5.9, §5.10).

Each change is handed to the listeners (the csource subscription notifier) after it commits, with
the registration as it was before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc_or_none
from cityos.core.db import write_transaction
from cityos.core.errors import AlreadyExists, ResourceNotFound
from cityos.hub.jsonld import ActiveContext
from cityos.hub.model import check_entity_id
from cityos.hub.registrations.match import Filter
from cityos.hub.registrations.models import registrations
from cityos.hub.registrations.spec import Spec, apply_update, parse_members, parse_registration


@dataclass
class Stored:
    spec: Spec
    created_at: datetime
    modified_at: datetime
    expires_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


# (tenant, before, after) after a change commits: before None on create, after None on delete.
Listener = Callable[[str, Stored | None, Stored | None], Awaitable[None]]


def _stored(row: Row[Any]) -> Stored:
    return Stored(dict(row.spec), as_utc_or_none(row.created_at) or clock.now(),
                  as_utc_or_none(row.modified_at) or clock.now(), as_utc_or_none(row.expires_at))


class RegistrationService:
    def __init__(self, engine: AsyncEngine, write_lock: asyncio.Lock) -> None:
        self.engine = engine
        self.write_lock = write_lock
        self.listeners: list[Listener] = []

    async def _tell(self, tenant: str, before: Stored | None, after: Stored | None) -> None:
        for listener in self.listeners:
            await listener(tenant, before, after)

    async def create(self, tenant: str, body: Any, ctx: ActiveContext) -> str:
        spec = parse_registration(body, ctx)
        now = clock.now()
        expires = clock.parse_iso(spec["expiresAt"]) if "expiresAt" in spec else None
        async with write_transaction(self.engine, self.write_lock) as conn:
            found = await conn.execute(select(registrations.c.id).where(
                registrations.c.tenant == tenant, registrations.c.id == spec["id"]))
            if found.first() is not None:
                raise AlreadyExists(f"context source registration {spec['id']} already exists")
            await conn.execute(insert(registrations).values(
                tenant=tenant, id=spec["id"], spec=spec, endpoint=spec["endpoint"], mode=spec["mode"],
                expires_at=expires, created_at=now, modified_at=now))
        await self._tell(tenant, None, Stored(spec, now, now, expires))
        return str(spec["id"])

    async def retrieve(self, tenant: str, reg_id: str) -> Stored:
        check_entity_id(reg_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(registrations).where(
                registrations.c.tenant == tenant, registrations.c.id == reg_id))).first()
        if row is None:
            raise ResourceNotFound(f"context source registration {reg_id} not found")
        return _stored(row)

    async def all(self, tenant: str) -> list[Stored]:
        """The tenant's registrations, expired ones left out, oldest first."""
        now = clock.now()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(registrations).where(registrations.c.tenant == tenant)
                                       .order_by(registrations.c.created_at, registrations.c.id))).all()
        return [s for s in (_stored(r) for r in rows) if s.live(now)]

    async def query(self, tenant: str, flt: Filter, limit: int, offset: int) -> tuple[list[Stored], int]:
        """The matching registrations (a page of them) and how many match in all."""
        now = clock.now()
        matched = [s for s in await self.all(tenant) if flt.matches(s.spec, s.created_at, s.modified_at, now)]
        return matched[offset:offset + limit], len(matched)

    async def update(self, tenant: str, reg_id: str, body: Any, ctx: ActiveContext) -> None:
        check_entity_id(reg_id)
        members = parse_members(body, ctx, allow_null=True)
        now = clock.now()
        async with write_transaction(self.engine, self.write_lock) as conn:
            row = (await conn.execute(select(registrations).where(
                registrations.c.tenant == tenant, registrations.c.id == reg_id))).first()
            if row is None:
                raise ResourceNotFound(f"context source registration {reg_id} not found")
            before = _stored(row)
            spec = apply_update(before.spec, body, members)
            expires = clock.parse_iso(spec["expiresAt"]) if "expiresAt" in spec else None
            await conn.execute(update(registrations).where(
                registrations.c.tenant == tenant, registrations.c.id == reg_id).values(
                spec=spec, endpoint=spec["endpoint"], mode=spec["mode"], expires_at=expires, modified_at=now))
        await self._tell(tenant, before, Stored(spec, before.created_at, now, expires))

    async def delete(self, tenant: str, reg_id: str) -> None:
        check_entity_id(reg_id)
        async with write_transaction(self.engine, self.write_lock) as conn:
            row = (await conn.execute(select(registrations).where(
                registrations.c.tenant == tenant, registrations.c.id == reg_id))).first()
            if row is None:
                raise ResourceNotFound(f"context source registration {reg_id} not found")
            await conn.execute(delete(registrations).where(
                registrations.c.tenant == tenant, registrations.c.id == reg_id))
        await self._tell(tenant, _stored(row), None)
