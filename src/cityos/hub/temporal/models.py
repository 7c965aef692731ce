"""Tables of the temporal API. The history itself is `hub_attribute_history` (cityos.hub.models).

`hub_temporal_entities` lists the temporal evolutions that have no row in `hub_entities`: entities
created only through the temporal API, and entities deleted through the entity API whose history
is kept. Every other temporal evolution is found through `hub_entities`, so the hot write path of
the entity API never touches this table (only deletions do).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table, column, table

from cityos.hub.models import Timestamp, metadata

temporal_entities = Table(
    "hub_temporal_entities",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("entity_type", String(512), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "entity_id", name="pk_hub_temporal_entities"),
    Index("ix_hub_temporal_entities_type", "tenant", "entity_type", "entity_id"),
)

# entity_type "" is the tenant-wide policy; a row with a type overrides it for that type.
# Without a row, CITYOS_HISTORY_RETENTION_DAYS applies (unset: history is kept forever).
ALL_TYPES = ""

history_retention = Table(
    "hub_history_retention",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("entity_type", String(512), nullable=False),
    Column("days", Integer, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "entity_type", name="pk_hub_history_retention"),
)

# The hourly and daily rollups (`cityos.hub.temporal.rollups`, created by migration 0017's DDL, not by this
# metadata): the columns the temporal reads name through SQLAlchemy Core.
history_rollups = table("hub_history_rollups", column("tenant", String), column("entity_id", String),
                        column("attr", String))
