"""Congestion tables: road segments with their latest detector reading and index, and the index history
of segments, districts and the city (one row per scope, key and computation)."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, MetaData, PrimaryKeyConstraint, String, Table

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

segments = Table(
    "cong_segments", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("district", String(128), nullable=False),
    Column("road_class", String(16), nullable=False),      # expressway | arterial | secondary | branch
    Column("length_m", Float, nullable=False),
    Column("speed_kmh", Float, nullable=True),              # latest mean speed
    Column("flow_vph", Float, nullable=True),               # latest flow (vehicles per hour)
    Column("tpi", Float, nullable=True),
    Column("observed_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_cong_segments"),
)

history = Table(
    "cong_history", metadata,
    Column("tenant", String(256), nullable=False),
    Column("scope", String(16), nullable=False),            # segment | district | city
    Column("key", String(128), nullable=False),             # segment id, district name, or "" for the city
    Column("at", Timestamp, nullable=False),
    Column("tpi", Float, nullable=False),
    PrimaryKeyConstraint("tenant", "scope", "key", "at", name="pk_cong_history"),
)
Index("ix_cong_history_at", history.c.tenant, history.c.at)

TABLES = [segments, history]
