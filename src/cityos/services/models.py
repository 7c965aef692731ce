"""Tables of 一网通办: managed catalogue entries, uploads, applications, workflow state, tasks, bundles.

Indexes are shaped by the hot reads:

- an official's inbox: open tasks of a department ordered by due time, served by a partial index
  over open tasks only (`ix_svc_tasks_open`: tenant, department, due_at, id WHERE status = 'open'),
  so its size follows the work in progress, not the history; joined to applications by id. The
  completed / cancelled lists use `ix_svc_tasks_inbox` (tenant, department, status, due_at);
- a citizen's list: `ix_svc_applications_applicant` (tenant, applicant, submitted_at);
- a department's list and the supervision sweep: `ix_svc_applications_dept` (tenant, department,
  status, due_at);
- the timer sweep: `ix_svc_applications_timer` (next_timer_at), NULL once nothing waits.

Workflow state (SpiffWorkflow's serializer output) lives in its own table so that
listing applications never reads it. The state names its process spec by reference
(`svc_workflow_specs`, one row per distinct compiled definition) instead of carrying it.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()

# Application statuses. `submitted` only exists inside the submitting transaction.
IN_REVIEW, SUPPLEMENT, APPROVED, REJECTED = "in_review", "supplement", "approved", "rejected"
STATUSES = (IN_REVIEW, SUPPLEMENT, APPROVED, REJECTED)
OPEN_STATUSES = (IN_REVIEW, SUPPLEMENT)

services = Table(
    "svc_services",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("code", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("doc", JsonDoc, nullable=False),  # the definition, with its BPMN and DMN sources
    Column("updated_at", Timestamp, nullable=False),
    Column("updated_by", String(256), nullable=True),
    PrimaryKeyConstraint("tenant", "code", name="pk_svc_services"),
)

uploads = Table(
    "svc_uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("owner", String(256), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("content_type", String(128), nullable=False),
    Column("filename", String(256), nullable=True),  # shown to staff only; never used as a path
    Column("created_at", Timestamp, nullable=False),
)

applications = Table(
    "svc_applications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("receipt", String(32), nullable=False),
    Column("service_code", String(64), nullable=False),
    Column("department", String(128), nullable=False),  # the lead (accepting) department
    Column("applicant", String(256), nullable=False),
    Column("applicant_kind", String(16), nullable=False),  # citizen | enterprise
    Column("channel", String(16), nullable=False),  # online | hall
    Column("status", String(16), nullable=False),
    Column("instant", Boolean, nullable=False, default=False),
    Column("escalated", Boolean, nullable=False, default=False),
    Column("form", JsonDoc, nullable=False),
    Column("materials", JsonDoc, nullable=False),
    Column("steps", JsonDoc, nullable=False),
    Column("licence_ids", JsonDoc, nullable=False),
    Column("outcome_reason", Text, nullable=True),
    Column("bundle_id", String(32), nullable=True),
    Column("limit_days", Integer, nullable=False),
    Column("paused_days", Integer, nullable=False, default=0),
    Column("paused_since", Timestamp, nullable=True),
    Column("trips_saved", Integer, nullable=False, default=0),
    Column("submitted_at", Timestamp, nullable=False),
    Column("due_at", Timestamp, nullable=False),
    Column("completed_at", Timestamp, nullable=True),
    Column("handling_seconds", Float, nullable=True),
    Column("next_timer_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Index("ux_svc_applications_receipt", "receipt", unique=True),
    Index("ix_svc_applications_applicant", "tenant", "applicant", "submitted_at"),
    Index("ix_svc_applications_dept", "tenant", "department", "status", "due_at"),
    Index("ix_svc_applications_service", "tenant", "service_code"),
    Index("ix_svc_applications_timer", "next_timer_at"),
    Index("ix_svc_applications_bundle", "bundle_id"),
)

workflows = Table(
    "svc_workflows",
    metadata,
    Column("application_id", String(32), primary_key=True),
    Column("version", Integer, nullable=False),  # optimistic lock: every step bumps it
    Column("state", LargeBinary, nullable=False),  # gzip(BpmnWorkflowSerializer JSON)
    Column("updated_at", Timestamp, nullable=False),
)

tasks = Table(
    "svc_tasks",
    metadata,
    Column("id", String(36), primary_key=True),  # the SpiffWorkflow task id
    Column("tenant", String(256), nullable=False),
    Column("application_id", String(32), nullable=False),
    Column("name", String(128), nullable=False),  # BPMN element id
    Column("title", String(256), nullable=False),
    Column("department", String(128), nullable=False),  # the lane; "applicant" for 补正 tasks
    Column("status", String(16), nullable=False),  # open | completed | cancelled
    Column("outcome", String(16), nullable=True),  # approve | reject | supplement | supplied
    Column("comment", Text, nullable=True),
    Column("actor", String(256), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("due_at", Timestamp, nullable=False),
    Column("completed_at", Timestamp, nullable=True),
    Index("ix_svc_tasks_inbox", "tenant", "department", "status", "due_at"),
    Index("ix_svc_tasks_open", "tenant", "department", "due_at", "id",
          postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'")),
    Index("ix_svc_tasks_application", "application_id"),
)

workflow_specs = Table(
    "svc_workflow_specs",
    metadata,
    Column("ref", String(64), primary_key=True),  # sha256 of the spec's canonical serialization
    Column("doc", LargeBinary, nullable=False),  # gzip(JSON {spec, subprocess_specs})
    Column("created_at", Timestamp, nullable=False),
)

bundles = Table(
    "svc_bundles",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("bundle_code", String(64), nullable=False),
    Column("applicant", String(256), nullable=False),
    Column("application_ids", JsonDoc, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_svc_bundles_applicant", "tenant", "applicant"),
)

TABLES = (services, uploads, applications, workflows, workflow_specs, tasks, bundles)

# Fired BPMN timer events (deadline warning / escalation / overdue), one row per firing: the
# primary key is the fired timer's workflow task id, so the department and supervisors are notified
# once per event even when the sweep ticks again, two sweepers race, or the process restarts.
# Written in the same transaction as the workflow step that fired the timer (with its notices).
# Not in TABLES: migration 0011 creates it.
timer_events = Table(
    "svc_timer_events",
    metadata,
    Column("application_id", String(32), nullable=False),
    Column("event_id", String(36), nullable=False),  # the fired timer's SpiffWorkflow task id
    Column("tenant", String(256), nullable=False),
    Column("kind", String(16), nullable=False),  # warning | escalation | overdue
    Column("name", String(128), nullable=False),  # BPMN element id of the timer
    Column("department", String(128), nullable=False),  # the lane: the department responsible
    Column("due_at", Timestamp, nullable=True),  # when the timer was due
    Column("fired_at", Timestamp, nullable=False),
    Column("notified", JsonDoc, nullable=False),  # user ids notified
    PrimaryKeyConstraint("application_id", "event_id", name="pk_svc_timer_events"),
    Index("ix_svc_timer_events_dept", "tenant", "department", "fired_at"),
)

DEADLINE_TABLES = (timer_events,)
