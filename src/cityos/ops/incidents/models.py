"""Incident tables and request schemas.

- `ops_incidents`: one row per incident AND per report merged into one (a merged report keeps its
  own row, status ``merged``, `parent_id` = the incident it joined; split undoes that). Personal
  data of the reporter (hotline caller, Open311 e-mail/name/phone) lives only in `reporter_enc`,
  field-encrypted with the security key ring and never published.
- `dedup_open` holds `dedup_key` while the incident (or the one it is merged into) is open and
  NULL once closed: its unique index makes "one open incident per alarm / per environment event" hold across processes.
- `sla_next_at` is the next moment an SLA clock may change colour, so the sweep reads only the
  rows that are due.
- `hub_dirty` marks rows whose hub view (`Incident` entity) is behind: the publisher (an outbox)
  writes them to the hub in batches and clears the flag, so a crash re-publishes, never drops.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

# Lifecycle. `merged` is the state of a report that joined another incident.
STATUSES = ("reported", "dispatched", "accepted", "on_site", "resolved", "closed", "reopened", "merged")
OPEN_STATUSES = ("reported", "dispatched", "accepted", "on_site", "reopened")
# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "dispatch": (frozenset({"reported", "reopened"}), "dispatched"),
    "accept": (frozenset({"dispatched"}), "accepted"),
    "arrive": (frozenset({"accepted"}), "on_site"),
    "resolve": (frozenset({"on_site"}), "resolved"),
    "close": (frozenset({"resolved"}), "closed"),
    "reopen": (frozenset({"resolved", "closed"}), "reopened"),
}
# Emergency levels, lowest first: 一般, 较大, 重大, 特别重大.
LEVELS = ("general", "large", "major", "especially_major")
SOURCES = ("alarm", "open311", "hotline", "manual", "environment")
# Sources whose reports merge into a nearby open incident of the same category. Machine sources merge
# too: a smog episode seen by a PM2.5 rule and by the AQI check (or by three nearby stations) is one
# incident for the environment department, not several; a merge can be undone.
MERGING_SOURCES = frozenset({"open311", "hotline", "alarm", "environment"})
SLA_STATES = ("ok", "yellow", "breached", "met")
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_.\-]{0,63}$"

incidents = Table(
    "ops_incidents",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("category", String(64), nullable=False),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("source", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("level", String(24), nullable=False),
    Column("severity", String(24), nullable=True),
    Column("lon", Float, nullable=True),
    Column("lat", Float, nullable=True),
    Column("location", JsonDoc, nullable=True),
    Column("address", String(512), nullable=True),
    Column("district", String(256), nullable=True),
    Column("department", String(128), nullable=False),
    Column("parent_id", BigInteger, nullable=True),
    Column("report_count", Integer, nullable=False, default=1),
    Column("dedup_key", String(300), nullable=True),
    Column("dedup_open", String(300), nullable=True),
    Column("service_code", String(64), nullable=True),
    Column("attributes", JsonDoc, nullable=True),
    Column("media_url", String(1024), nullable=True),
    Column("entity_id", String(512), nullable=True),
    Column("reporter_id", String(256), nullable=True),
    Column("reporter_enc", Text, nullable=True),
    Column("token", String(64), nullable=True),
    Column("status_notes", Text, nullable=True),
    Column("reported_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("dispatched_at", Timestamp, nullable=True),
    Column("accepted_at", Timestamp, nullable=True),
    Column("on_site_at", Timestamp, nullable=True),
    Column("resolved_at", Timestamp, nullable=True),
    Column("closed_at", Timestamp, nullable=True),
    Column("sla_start", Timestamp, nullable=False),  # resolution clock start (reported, or reopened)
    Column("response_due", Timestamp, nullable=True),
    Column("resolution_due", Timestamp, nullable=True),
    Column("response_state", String(8), nullable=False, default="ok"),
    Column("resolution_state", String(8), nullable=False, default="ok"),
    Column("sla_next_at", Timestamp, nullable=True),
    Column("escalations", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=1),
    Column("hub_dirty", Integer, nullable=False, default=1),
    Index("ix_ops_incidents_status", "tenant", "status", "category"),
    Index("ix_ops_incidents_reported", "tenant", "reported_at"),
    Index("ix_ops_incidents_parent", "parent_id"),
    Index("ix_ops_incidents_sla", "sla_next_at"),
    Index("ix_ops_incidents_hub", "hub_dirty"),
    Index("ix_ops_incidents_resolved", "status", "resolved_at"),
    Index("ux_ops_incidents_dedup", "tenant", "dedup_open", unique=True),
    Index("ux_ops_incidents_token", "token", unique=True),
)

steps = Table(
    "ops_incident_steps",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("incident_id", BigInteger, nullable=False),
    Column("at", Timestamp, nullable=False),
    Column("action", String(32), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("role", String(32), nullable=False),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=True),
    Column("note", Text, nullable=True),
    Column("detail", JsonDoc, nullable=True),
    Index("ix_ops_incident_steps_incident", "incident_id", "id"),
)

sla_policies = Table(
    "ops_sla_policies",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("category", String(64), nullable=False),
    Column("level", String(24), nullable=False),
    Column("response_minutes", Float, nullable=False),
    Column("resolution_minutes", Float, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Column("updated_by", String(256), nullable=False),
    Index("ux_ops_sla_policies", "tenant", "category", "level", unique=True),
)

TABLES = (incidents, steps, sla_policies)


# ---------------------------------------------------------------------- request bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Caller(_Strict):
    """A 12345 hotline caller: personal data, stored encrypted, never published."""

    name: str | None = Field(default=None, max_length=128)
    phone: str | None = Field(default=None, max_length=32, pattern=r"^[0-9+\-() ]{3,32}$")


class IncidentIn(_Strict):
    category: str = Field(pattern=CATEGORY_PATTERN)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=4000)
    source: Literal["manual", "hotline"] = "manual"
    level: Literal["general", "large", "major", "especially_major"] = "general"
    location: dict[str, Any] | None = None
    address: str | None = Field(default=None, max_length=512)
    caller: Caller | None = None

    @field_validator("title", "description")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("NUL characters are not allowed")
        return value


class ActionIn(_Strict):
    note: str | None = Field(default=None, max_length=2000)
    # dispatch only: send to another department than the routed one
    department: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")


class ConfirmIn(_Strict):
    satisfied: bool
    note: str | None = Field(default=None, max_length=2000)


class MergeIn(_Strict):
    into: str = Field(pattern=r"^[0-9]{1,15}$")


class PolicyIn(_Strict):
    category: str = Field(pattern=r"^(\*|[a-z0-9][a-z0-9_.\-]{0,62}\*?)$")
    level: Literal["*", "general", "large", "major", "especially_major"] = "*"
    responseMinutes: float = Field(gt=0, le=525600)
    resolutionMinutes: float | None = Field(default=None, gt=0, le=5256000)
