"""Community tables: residents (their building, their phone encrypted), repairs, notices and read receipts."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, LargeBinary, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()

# Where in a shared space, and the hours the property company has to fix it (the community's service pledge).
PLACES: dict[str, tuple[str, int]] = {
    "lift": ("电梯 Lift", 4), "light": ("楼道灯 Stair light", 48), "pipe": ("水管 Water pipe", 12),
    "door": ("单元门 Entrance door", 24), "roof": ("屋面渗漏 Roof leak", 72), "other": ("其他 Other", 72)}
REPAIR_FLOW = {"reported": ("accepted",), "accepted": ("in_progress", "done"), "in_progress": ("done",),
               "done": ("confirmed", "reopened"), "reopened": ("in_progress", "done")}

residents = Table(
    "community_residents", metadata,
    Column("tenant", String(256), nullable=False),
    Column("community", String(64), nullable=False),
    Column("person", String(256), nullable=False),
    Column("building", String(32), nullable=False),
    Column("phone", Text, nullable=True),                 # encrypted (sensitive); SMS for urgent notices
    PrimaryKeyConstraint("tenant", "community", "person", name="pk_community_residents"),
)

repairs = Table(
    "community_repairs", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("community", String(64), nullable=False),
    Column("building", String(32), nullable=False),
    Column("place", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("photo", LargeBinary, nullable=True),
    Column("photo_type", String(32), nullable=True),
    Column("reporter", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("due_at", Timestamp, nullable=False),
    Column("rating", Integer, nullable=True),
    Column("history", JsonDoc, nullable=False),           # [{"status", "at", "by", "note"}]
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_community_repairs"),
)
Index("ix_community_repairs_open", repairs.c.tenant, repairs.c.community, repairs.c.status, repairs.c.due_at)

notices = Table(
    "community_notices", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("community", String(64), nullable=False),
    Column("buildings", JsonDoc, nullable=False),         # [] = the whole community
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("urgent", Boolean, nullable=False),
    Column("author", String(256), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("recipients", Integer, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_community_notices"),
)

receipts = Table(
    "community_receipts", metadata,
    Column("tenant", String(256), nullable=False),
    Column("notice_id", String(64), nullable=False),
    Column("person", String(256), nullable=False),
    Column("read_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "notice_id", "person", name="pk_community_receipts"),
)

TABLES = [residents, repairs, notices, receipts]
