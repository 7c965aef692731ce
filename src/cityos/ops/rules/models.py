"""Tables of ops.rules: rules (current version), every rule version, window state, alarms."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

ALARM_STATUSES = ("active", "acknowledged", "cleared")

# The current version of each rule (a deleted rule has no row here; its versions stay).
rules = Table(
    "ops_rules",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("enabled", Integer, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("department", String(128), nullable=True),
    Column("entity_types", String(2048), nullable=False),  # space-separated short names, for filtering
    Column("doc", JsonDoc, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("created_by", String(256), nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Column("updated_by", String(256), nullable=True),
    PrimaryKeyConstraint("tenant", "id", name="pk_ops_rules"),
)

# Every version ever stored: create, update, enable/disable and delete each add one.
rule_versions = Table(
    "ops_rule_versions",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("change", String(16), nullable=False),  # created | updated | enabled | disabled | deleted
    Column("doc", JsonDoc, nullable=False),
    Column("changed_at", Timestamp, nullable=False),
    Column("changed_by", String(256), nullable=True),
    PrimaryKeyConstraint("tenant", "rule_id", "version", name="pk_ops_rule_versions"),
)

# Window state of windowed rules per (rule, entity); `due_at` drives the timer.
rule_state = Table(
    "ops_rule_state",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("state", JsonDoc, nullable=False),
    Column("due_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "rule_id", "entity_id", name="pk_ops_rule_state"),
    Index("ix_ops_rule_state_due", "due_at"),
)

alarms = Table(
    "ops_alarms",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("rule_name", String(200), nullable=False),
    Column("entity_id", String(512), nullable=False),
    Column("entity_type", String(256), nullable=True),
    Column("status", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("category", String(64), nullable=False),
    Column("sub_category", String(128), nullable=True),
    Column("description", Text, nullable=True),
    Column("district", String(128), nullable=True),
    Column("department", String(128), nullable=True),
    Column("incident_category", String(128), nullable=True),
    Column("incident_level", String(32), nullable=True),
    # {"v": <last value>}: a bare JSON scalar would be turned into a number by SQLite's column affinity.
    Column("value", JsonDoc, nullable=True),
    Column("location", JsonDoc, nullable=True),
    Column("count", Integer, nullable=False),
    Column("raised_at", Timestamp, nullable=False),
    Column("last_seen", Timestamp, nullable=False),
    Column("acknowledged_at", Timestamp, nullable=True),
    Column("acknowledged_by", String(256), nullable=True),
    Column("cleared_at", Timestamp, nullable=True),
    Column("cleared_by", String(256), nullable=True),
    Column("clear_reason", String(256), nullable=True),
    # "<rule id> <entity id>" while the alarm is not cleared, NULL after: the unique index below makes
    # "one open alarm per (rule, entity)" a database fact, across processes.
    Column("open_key", String(700), nullable=True),
    Column("hub_synced", Integer, nullable=False),  # 0: the Alert entity still has to be written
    Column("updated_at", Timestamp, nullable=False),
    Index("ux_ops_alarms_open", "tenant", "open_key", unique=True),
    Index("ix_ops_alarms_list", "tenant", "status", "id"),
    Index("ix_ops_alarms_unsynced", "hub_synced"),
)

TABLES = (rules, rule_versions, rule_state, alarms)
