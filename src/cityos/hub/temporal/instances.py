"""The hub's history as other domains read it: stored attribute instances of one entity type.

Domains never query the hub's tables themselves; what they need of the history (the data catalogue's
quality and district indices, the traffic forecaster's rain gauges) comes through this function, so the
history's layout can change behind it. Deleted instances are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.hub.models import attribute_history


def _instances_query(tenant: str, type_iri: str, attrs: Sequence[str], since: datetime | None,
                     after: datetime | None, newest_first: bool, limit: int | None) -> Select[Any]:
    h = attribute_history.c
    stmt = select(h.entity_id, h.attr, h.ts, h.instance).where(
        h.tenant == tenant, h.entity_type == type_iri, h.attr.in_(list(attrs)), h.deleted == 0)
    if since is not None:
        stmt = stmt.where(h.ts >= since)
    if after is not None:
        stmt = stmt.where(h.ts > after)
    stmt = stmt.order_by(h.ts.desc() if newest_first else h.ts)
    if limit is not None:
        stmt = stmt.limit(limit)
    return stmt


async def instances_of_type(conn: AsyncConnection, tenant: str, type_iri: str, attrs: Sequence[str], *,
                            since: datetime | None = None, after: datetime | None = None,
                            newest_first: bool = False, limit: int | None = None) -> list[Any]:
    """Rows (entity_id, attr, ts, instance) of the attributes `attrs` (IRIs) of entities of `type_iri`, observed
    from `since` (inclusive) or `after` (exclusive), oldest first unless `newest_first`, at most `limit`."""
    stmt = _instances_query(tenant, type_iri, attrs, since, after, newest_first, limit)
    return list((await conn.execute(stmt)).all())


async def instances_of_type_in_parts(conn: AsyncConnection, tenant: str, type_iri: str, attrs: Sequence[str], *,
                                     after: datetime | None = None, newest_first: bool = False,
                                     limit: int | None = None, part: int = 2000) -> AsyncIterator[list[Any]]:
    """`instances_of_type`, streamed `part` rows at a time: a reader of hundreds of thousands of instances (the
    catalogue's harvest) leaves the event loop to the process's other work between parts instead of decoding
    them all in one go (a harvest held a signal control round up for 15 s)."""
    stmt = _instances_query(tenant, type_iri, attrs, None, after, newest_first, limit)
    result = await conn.stream(stmt)
    async for rows in result.partitions(part):
        yield list(rows)
        await asyncio.sleep(0)
