"""The hub's tables.

An entity row keeps its attributes as one JSON document in the internal form described in
`cityos.hub.model`: keys are expanded attribute IRIs, values are lists of attribute instances.
Geometries are mirrored into `entity_geo` so that geo-queries use an index (GiST on PostgreSQL,
an R*Tree on SQLite). Every attribute change also lands in `attribute_history`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()


tenants = Table(
    "hub_tenants",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("created_at", Timestamp, nullable=False),
)

entities = Table(
    "hub_entities",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(512), nullable=False),
    # The first expanded type; further types of a multi-typed entity live in hub_entity_types.
    Column("type", String(512), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("modified_at", Timestamp, nullable=False),
    Column("attrs", JsonDoc, nullable=False),
    Column("scope", JsonDoc, nullable=True),
    PrimaryKeyConstraint("tenant", "id", name="pk_hub_entities"),
    Index("ix_hub_entities_type", "tenant", "type", "id"),
)

entity_extra_types = Table(
    "hub_entity_types",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("type", String(512), nullable=False),
    Column("entity_id", String(512), nullable=False),
    PrimaryKeyConstraint("tenant", "type", "entity_id", name="pk_hub_entity_types"),
    Index("ix_hub_entity_types_entity", "tenant", "entity_id"),
)

# On PostgreSQL the geometry column is a PostGIS `geometry(Geometry, 4326)` added by the
# migration; on SQLite `geojson` holds the text and `hub_entity_geo_rtree` the bounding boxes.
entity_geo = Table(
    "hub_entity_geo",
    metadata,
    Column("gid", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("attr", String(512), nullable=False),
    Column("geojson", Text, nullable=False),
    Index("ux_hub_entity_geo_attr", "tenant", "entity_id", "attr", unique=True),
)

# Partitioned by month on PostgreSQL (see the migration); indexed for
# "one entity's attribute over a time range".
attribute_history = Table(
    "hub_attribute_history",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("entity_type", String(512), nullable=False),
    Column("attr", String(512), nullable=False),
    Column("instance_id", String(64), nullable=False),
    Column("dataset_id", String(512), nullable=True),
    # observedAt where given, else modifiedAt: the time the value was true in the world.
    Column("ts", Timestamp, nullable=False),
    Column("modified_at", Timestamp, nullable=False),
    Column("deleted", Integer, nullable=False, default=0),
    Column("instance", JsonDoc, nullable=False),
    Column("seq", BigInteger, nullable=True),
    Index("ix_hub_history_entity_attr_ts", "tenant", "entity_id", "attr", "ts"),
)

jsonld_contexts = Table(
    "hub_jsonld_contexts",
    metadata,
    Column("url", String(2048), primary_key=True),
    Column("body", JsonDoc, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("fetched_at", Timestamp, nullable=False),
    Column("uses", Integer, nullable=False, default=0),
)
