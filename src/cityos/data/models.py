"""Tables of the data domain (数据资源: catalogue, snapshots, sharing, quality, lineage).

- `data_datasets`: the catalogue (政务数据资源目录), one row per dataset and tenant, with the GB/T 21063
  metadata (name, code, provider, category, format, update cycle, share type, open type, fields);
- `data_versions` / `data_rows`: the materialised rows of each version (快照). Current-state datasets get
  a new version when their content changes; history datasets (readings) are append-only and are read
  "as of a day" by their time column. Versions older than `SNAPSHOT_DAYS` are pruned;
- `data_api_keys`: keys for conditional open datasets (purpose, rate limit);
- `data_share_requests`: department-to-department sharing (申请 → 审批 → 授权), the grant is the approved row;
- `data_negative_list`: 负面清单, datasets or fields never shared;
- `data_quality_runs` / `data_quarantine`: scores with history, quarantined records with the reason;
- `data_lineage_events`: OpenLineage run events as emitted.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

from cityos.core.sqltypes import AutoId, JsonDoc, Timestamp

metadata = MetaData()

SNAPSHOT_DAYS = 30

# GB/T 21063.4 share types and the open types of the open-data practice.
SHARE_UNCONDITIONAL, SHARE_CONDITIONAL, SHARE_NONE = "unconditional", "conditional", "none"
SHARE_TYPES = {SHARE_UNCONDITIONAL: "无条件共享", SHARE_CONDITIONAL: "有条件共享", SHARE_NONE: "不予共享"}
OPEN_UNCONDITIONAL, OPEN_CONDITIONAL, OPEN_NONE = "unconditional", "conditional", "none"
OPEN_TYPES = {OPEN_UNCONDITIONAL: "无条件开放", OPEN_CONDITIONAL: "有条件开放", OPEN_NONE: "不予开放"}
UPDATE_CYCLES = {"realtime": "实时", "daily": "每日", "monthly": "每月", "yearly": "每年", "irregular": "不定期"}

datasets = Table(
    "data_datasets",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(128), nullable=False),  # the resource code (资源代码), also the CKAN name
    Column("title", String(512), nullable=False),  # Chinese first
    Column("title_en", String(512), nullable=False),
    Column("description", Text, nullable=False),
    Column("provider", String(128), nullable=False),  # the department (提供方)
    Column("category", String(64), nullable=False),  # 资源分类 (theme)
    Column("tags", JsonDoc, nullable=False),
    Column("tag_text", Text, nullable=False),  # "|tag1|tag2|": tag filters in SQL on both databases
    Column("search_text", Text, nullable=False),  # lower-cased code, titles, description, tags: keyword search
    Column("format", String(32), nullable=False),
    Column("update_cycle", String(16), nullable=False),
    Column("share_type", String(16), nullable=False),
    Column("open_type", String(16), nullable=False),
    Column("source_kind", String(16), nullable=False),  # entities | readings | registered
    Column("source", JsonDoc, nullable=False),  # how to harvest it: type IRI, slice, profile
    Column("fields", JsonDoc, nullable=False),  # [{"id", "type", "class", "label", "source"}]
    Column("district", String(128), nullable=True),
    Column("row_count", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False, default=0),
    Column("geo", Integer, nullable=False, default=0),
    Column("quality_score", Float, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("modified_at", Timestamp, nullable=False),
    Column("harvested_at", Timestamp, nullable=True),
    Index("ux_data_datasets", "tenant", "id", unique=True),
    Index("ix_data_datasets_provider", "tenant", "provider"),
)

versions = Table(
    "data_versions",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("run_id", String(64), nullable=True),
    Index("ux_data_versions", "tenant", "dataset", "version", unique=True),
)

rows = Table(
    "data_rows",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("version", Integer, nullable=False),  # 0 for append-only history datasets
    Column("key", String(512), nullable=False),  # the entity id
    Column("ts", Timestamp, nullable=True),  # observedAt (history) or the entity's modification time
    Column("doc", JsonDoc, nullable=False),
    # A history row's second key (the reading's attribute), a column so that "this entity's pm25, newest
    # first" and its count are one index range read from the index alone (migration 0026).
    Column("subkey", String(256), nullable=True),
    Index("ix_data_rows_key", "tenant", "dataset", "version", "key", "ts"),
    Index("ix_data_rows_ts", "tenant", "dataset", "version", "ts"),
    Index("ix_data_rows_subkey", "tenant", "dataset", "version", "key", "subkey", "ts"),
)

api_keys = Table(
    "data_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("tenant", String(256), nullable=False),
    Column("holder", String(256), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("datasets", JsonDoc, nullable=False),
    Column("rate_per_minute", Integer, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp, nullable=True),
)

share_requests = Table(
    "data_share_requests",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("owner", String(128), nullable=False),  # the providing department
    Column("requester", String(256), nullable=False),  # principal id
    Column("requester_name", String(256), nullable=False),
    Column("requester_department", String(128), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("fields", JsonDoc, nullable=False),  # requested
    Column("justification", JsonDoc, nullable=False),  # field → why (beyond the minimum)
    Column("days", Integer, nullable=False),
    Column("pledge", JsonDoc, nullable=False),  # 承诺书: text, signer, signed at, ip
    Column("status", String(16), nullable=False),  # pending | approved | rejected | revoked
    Column("granted_fields", JsonDoc, nullable=True),
    Column("approval_id", String(64), nullable=True),  # two-person approval for sensitive fields
    Column("decided_by", String(256), nullable=True),
    Column("decision_note", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("decided_at", Timestamp, nullable=True),
    Column("expires_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
    Column("reads", Integer, nullable=False, default=0),
    Index("ix_data_share_requests", "tenant", "dataset", "status"),
)

negative_list = Table(
    "data_negative_list",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("dataset", String(128), nullable=False),  # "*" for a field on every dataset
    Column("field", String(256), nullable=True),  # None: the whole dataset
    Column("reason", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

quality_runs = Table(
    "data_quality_runs",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("at", Timestamp, nullable=False),
    Column("checked", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("score", Float, nullable=False),  # share of records passing, 0–100
    Column("by_rule", JsonDoc, nullable=False),
    Index("ix_data_quality_runs", "tenant", "dataset", "at"),
)

quarantine = Table(
    "data_quarantine",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("dataset", String(128), nullable=False),
    Column("row_key", String(512), nullable=False),
    Column("doc", JsonDoc, nullable=False),
    Column("rules", JsonDoc, nullable=False),  # the failed rules with their reasons
    Column("status", String(16), nullable=False),  # held | released
    Column("created_at", Timestamp, nullable=False),
    Column("reviewed_by", String(256), nullable=True),
    Column("reviewed_at", Timestamp, nullable=True),
    Index("ix_data_quarantine", "tenant", "dataset", "status"),
)

lineage_events = Table(
    "data_lineage_events",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("job", String(256), nullable=False),
    Column("event_type", String(16), nullable=False),
    Column("event_time", Timestamp, nullable=False),
    Column("inputs", JsonDoc, nullable=False),  # dataset names
    Column("outputs", JsonDoc, nullable=False),
    Column("event", JsonDoc, nullable=False),  # the OpenLineage event as serialised
    Index("ix_data_lineage_job", "tenant", "job", "event_time"),
)

# 一数一源: the authoritative source of each field. `subject` is an entity type IRI (writes through the hub)
# or a registered dataset's code (department uploads); `field` is an attribute IRI / field id, or "*".
SOURCE_REFUSE, SOURCE_FLAG = "refuse", "flag"
field_sources = Table(
    "data_field_sources",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("field", String(512), nullable=False),
    Column("department", String(128), nullable=False),
    Column("system", String(128), nullable=False),  # "*": any system of the department
    Column("policy", String(16), nullable=False),  # refuse | flag
    Column("declared_by", String(256), nullable=False),
    Column("declared_at", Timestamp, nullable=False),
    Index("ux_data_field_sources", "tenant", "subject", "field", unique=True),
)

# Writes of a field from a source other than its authoritative one: refused or flagged, for the data office.
source_conflicts = Table(
    "data_source_conflicts",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("tenant", String(256), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("record", String(512), nullable=False),  # the entity id or the uploaded dataset's code
    Column("field", String(512), nullable=False),
    Column("authority", String(300), nullable=False),  # department/system
    Column("writer", String(300), nullable=False),  # department/system of the write
    Column("principal", String(256), nullable=False),
    Column("outcome", String(16), nullable=False),  # refused | flagged
    Column("at", Timestamp, nullable=False),
    Index("ix_data_source_conflicts", "tenant", "at"),
)

SOURCE_TABLES = (field_sources, source_conflicts)

TABLES = (datasets, versions, rows, api_keys, share_requests, negative_list, quality_runs, quarantine,
          lineage_events)

# An outside developer's application for an API key to conditional open datasets (有条件开放): the data
# office approves (possibly with a lower rate) or rejects; the applicant claims the key once with the
# claim code shown at application time (only its hash is kept), so no key is ever stored or sent twice.
key_applications = Table(
    "data_key_applications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("applicant", String(256), nullable=False),  # person or organisation
    Column("contact", String(256), nullable=False),
    Column("purpose", Text, nullable=False),
    Column("datasets", JsonDoc, nullable=False),
    Column("rate_per_minute", Integer, nullable=False),  # asked; the granted rate after approval
    Column("claim_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | rejected | issued
    Column("ip", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("decided_by", String(256), nullable=True),
    Column("decided_at", Timestamp, nullable=True),
    Column("decision_note", Text, nullable=True),
    Column("key_id", String(32), nullable=True),
    Index("ix_data_key_applications", "tenant", "status", "created_at"),
)

KEY_APPLICATION_TABLES = (key_applications,)

# Calls made with each API key per clock minute, shared by every API worker so a key's rate limit holds for
# the whole deployment (the limit is a sliding minute: this minute's calls plus the previous minute's,
# weighted by how much of it is still inside the window). Minutes older than the previous one are pruned.
key_calls = Table(
    "data_key_calls",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # Unix time // 60
    Column("calls", Integer, nullable=False),
)

KEY_CALL_TABLES = (key_calls,)
