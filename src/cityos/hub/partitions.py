"""Monthly partitions of the attribute history on PostgreSQL.

Partitions are created ahead of time (at migration and by `ensure_history_partitions`), and a
DEFAULT partition catches readings far in the past or future, so no write ever fails for want
of a partition.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock

MONTHS_BEHIND = 3
MONTHS_AHEAD = 3


def _month_start(year: int, month: int) -> datetime:
    while month > 12:
        year, month = year + 1, month - 12
    while month < 1:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC)


def partition_bounds(around: datetime) -> list[tuple[str, datetime, datetime]]:
    bounds = []
    for delta in range(-MONTHS_BEHIND, MONTHS_AHEAD + 1):
        start = _month_start(around.year, around.month + delta)
        end = _month_start(start.year, start.month + 1)
        bounds.append((f"hub_attribute_history_{start:%Y%m}", start, end))
    return bounds


def _partition_sql(name: str, start: datetime, end: datetime) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF hub_attribute_history "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")


def history_partition_ddl() -> list[str]:
    statements = [
        """CREATE TABLE hub_attribute_history (
            tenant VARCHAR(256) NOT NULL,
            entity_id VARCHAR(512) NOT NULL,
            entity_type VARCHAR(512) NOT NULL,
            attr VARCHAR(512) NOT NULL,
            instance_id VARCHAR(64) NOT NULL,
            dataset_id VARCHAR(512),
            ts TIMESTAMPTZ NOT NULL,
            modified_at TIMESTAMPTZ NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0,
            instance JSONB NOT NULL,
            seq BIGINT
        ) PARTITION BY RANGE (ts)""",
        "CREATE INDEX ix_hub_history_entity_attr_ts ON hub_attribute_history (tenant, entity_id, attr, ts)",
        "CREATE TABLE hub_attribute_history_default PARTITION OF hub_attribute_history DEFAULT",
    ]
    statements += [_partition_sql(*bound) for bound in partition_bounds(clock.now())]
    return statements


async def ensure_history_partitions(conn: AsyncConnection) -> None:
    """Create this month's neighbours; run at start-up and daily by the maintenance loop."""
    if conn.dialect.name != "postgresql":
        return
    for name, start, end in partition_bounds(clock.now()):
        exists = (await conn.execute(text("SELECT to_regclass(:name)"), {"name": name})).scalar()
        if exists is None:
            await conn.execute(text(_partition_sql(name, start, end)))
