"""Congestion tables: road segments with their latest detector reading and index, and the index history
of segments, districts and the city (one row per scope, key and computation), and the trained forecast
models (one row per tenant and version, its parameters as JSON)."""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table

from cityos.core.sqltypes import JsonDoc, Timestamp

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

# The 15-minute forecast's trained versions: every API worker forecasts with the tenant's newest one and a
# restart keeps it. `params` is `ForecastModel.to_params()` (coefficients, profiles, feature spec, training
# window, metrics): JSON, never a pickle.
forecast_models = Table(
    "cong_forecast_models", metadata,
    Column("tenant", String(256), nullable=False),
    Column("number", Integer, nullable=False),              # 1, 2, … per tenant
    Column("version", String(96), nullable=False),          # ridge-<from>-<to>-<digest of coefficients>
    Column("created_at", Timestamp, nullable=False),        # when it was trained
    Column("trained_from", Timestamp, nullable=False),      # the training window
    Column("trained_to", Timestamp, nullable=False),
    Column("segments", Integer, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("metrics", JsonDoc, nullable=False),
    Column("params", JsonDoc, nullable=False),
    PrimaryKeyConstraint("tenant", "number", name="pk_cong_forecast_models"),
)

FORECAST_TABLES = [forecast_models]
