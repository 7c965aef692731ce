"""The hub's history as other domains read it: stored attribute instances of one entity type.

Domains never query the hub's tables themselves; what they need of the history (the data catalogue's
quality and district indices, the traffic forecaster's rain gauges) comes through this function, so the
history's layout can change behind it. Deleted instances are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.hub.models import attribute_history


async def instances_of_type(conn: AsyncConnection, tenant: str, type_iri: str, attrs: Sequence[str], *,
                            since: datetime | None = None, after: datetime | None = None,
                            newest_first: bool = False, limit: int | None = None) -> list[Any]:
    """Rows (entity_id, attr, ts, instance) of the attributes `attrs` (IRIs) of entities of `type_iri`, observed
    from `since` (inclusive) or `after` (exclusive), oldest first unless `newest_first`, at most `limit`."""
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
    return list((await conn.execute(stmt)).all())
