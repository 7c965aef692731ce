"""ops.environment tables and schemas.

`ops_env_episodes` keeps, per station and rule (air, water, noise), whether the station is in an
episode (the condition holds) and the dedupKey of that episode: an incident is requested once
when an episode opens, and the rule re-arms when the condition clears. It lives in the database,
not in memory, so that several worker processes request an incident once between them and a
restart does not request it again.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Column, Integer, MetaData, PrimaryKeyConstraint, String, Table

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

episodes = Table(
    "ops_env_episodes",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("category", String(32), nullable=False),  # environment.air | environment.water | environment.noise
    Column("active", Integer, nullable=False),  # 1 while the condition holds
    Column("dedup_key", String(700), nullable=False),  # of the current (or last) episode
    Column("since", Timestamp, nullable=False),  # when the current (or last) episode opened
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "entity_id", "category", name="pk_ops_env_episodes"),
)

TABLES = (episodes,)


def _finite_non_negative(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


class Concentrations(BaseModel):
    """Concentrations in µg/m³ (CO in mg/m³), the units of HJ 633-2012 and of the IoT profiles."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    so2: float | None = Field(default=None, description="SO2 1-h average, µg/m³")
    no2: float | None = Field(default=None, description="NO2 1-h average, µg/m³")
    co: float | None = Field(default=None, description="CO 1-h average, mg/m³")
    o3: float | None = Field(default=None, description="O3 1-h average, µg/m³")
    o3_8h: float | None = Field(default=None, alias="o3_8h", description="O3 8-h moving average, µg/m³")
    pm10: float | None = Field(default=None, description="PM10 (1-h for the hourly report), µg/m³")
    pm25: float | None = Field(default=None, description="PM2.5 (1-h for the hourly report), µg/m³")
    so2_24h: float | None = Field(default=None, description="SO2 24-h average, µg/m³")
    no2_24h: float | None = Field(default=None, description="NO2 24-h average, µg/m³")
    co_24h: float | None = Field(default=None, description="CO 24-h average, mg/m³")
    co_8h: float | None = Field(default=None, description="CO 8-h moving average, mg/m³ (US EPA)")
    pm10_24h: float | None = Field(default=None, description="PM10 24-h average, µg/m³")
    pm25_24h: float | None = Field(default=None, description="PM2.5 24-h average, µg/m³")
    o3_1h_max: float | None = Field(default=None, description="the day's maximum 1-h O3, µg/m³")
    o3_8h_max: float | None = Field(default=None, description="the day's maximum 8-h moving average O3, µg/m³")

    @field_validator("*", mode="after")
    @classmethod
    def _check(cls, value: float | None, info: Any) -> float | None:
        return _finite_non_negative(str(info.field_name), value)


class AqiRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    standard: Literal["hj633", "us-epa"] = Field(default="hj633", description="hj633 (China) or us-epa")
    concentrations: Concentrations


class WaterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: Literal["river", "lake"] = "river"
    target: str = Field(default="III", description="target class: I, II, III, IV or V")
    values: dict[str, float] = Field(description="parameter → value (pH, DO, CODMn, COD, BOD5, NH3N, TP, TN, …)")


class NoiseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zone: str = Field(description="GB 3096-2008 zone class: 0, 1, 2, 3, 4a or 4b")
    period: Literal["day", "night"]
    leq: float = Field(description="the period's equivalent level Leq, dB(A)")
    lamax: float | None = Field(default=None, description="the period's maximum level, dB(A)")
