"""Tables of the livelihood domain (一网协同).

- `lh_subjects`: the people and companies known to the domain (created by the identity registry's
  record: household registration for people, business registration for companies), with the
  account that receives their notices.
- `lh_records`: every department record as shared (purposes, consent basis, observed date);
  sensitive and confidential fields sealed with the field key ring; contradictions flagged.
- `lh_facts`: the current value of each field of each subject and the record it comes from.
- `lh_policies`: policy versions (data); the newest version of an id is in force.
- `lh_decisions`: the newest eligibility decision per subject, policy and period, with its explanation.
- `lh_payouts`: 免申即享 grants; one per subject, policy and period (unique: a retry never pays twice).
- `lh_optouts`: people who asked not to be notified proactively.
- `lh_care_*`: elderly care: the people cared for (escalation chain), alerts and their steps.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from cityos.core.sqltypes import JsonDoc, Timestamp

metadata = MetaData()

subjects = Table(
    "lh_subjects", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),  # person | company
    Column("user_id", String(64), nullable=True),
    Column("district", String(128), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index("ix_lh_subjects_user", "tenant", "user_id"),
)

records = Table(
    "lh_records", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("department", String(64), nullable=False),
    Column("dataset", String(64), nullable=False),
    Column("purposes", JsonDoc, nullable=False),
    Column("consent", JsonDoc, nullable=False),
    Column("observed_at", Timestamp, nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Column("clear", JsonDoc, nullable=False),
    Column("sealed", Text, nullable=True),
    Column("flags", JsonDoc, nullable=False),
    Index("ix_lh_records_subject", "tenant", "subject_id", "received_at"),
)

facts = Table(
    "lh_facts", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("subject_id", String(64), primary_key=True),
    Column("field", String(64), primary_key=True),
    Column("value", JsonDoc, nullable=True),  # public / internal fields, as {"v": value}
    Column("sealed", Text, nullable=True),  # sensitive / confidential fields (encrypted JSON)
    Column("department", String(64), nullable=False),
    Column("record_id", String(32), nullable=False),
    Column("observed_at", Timestamp, nullable=False),
    Column("purposes", JsonDoc, nullable=False),
)

policies = Table(
    "lh_policies", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("doc", JsonDoc, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

decisions = Table(
    "lh_decisions", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("subject_id", String(64), primary_key=True),
    Column("policy_id", String(64), primary_key=True),
    Column("period", String(8), primary_key=True),
    Column("policy_version", Integer, nullable=False),
    Column("eligible", Boolean, nullable=False),
    Column("explanation", JsonDoc, nullable=False),
    # eligible | notified | opted-out | confirmed | declined | granted | lapsed
    Column("status", String(16), nullable=False),
    Column("event_at", Timestamp, nullable=False),  # the eligibility event (a record's observed date)
    Column("evaluated_at", Timestamp, nullable=False),
    Column("notified_at", Timestamp, nullable=True),
    Column("confirmed_at", Timestamp, nullable=True),
    Column("application", JsonDoc, nullable=True),  # the pre-filled application handed to the services domain
    Index("ix_lh_decisions_policy", "tenant", "policy_id", "status"),
)

payouts = Table(
    "lh_payouts", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("policy_id", String(64), nullable=False),
    Column("period", String(8), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("amount", Float, nullable=False),
    Column("department", String(64), nullable=False),
    # objection-window | awaiting-approval | approved | paid | objected | rejected
    Column("status", String(20), nullable=False),
    Column("eligible_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("objection_until", Timestamp, nullable=False),
    Column("needs_approval", Boolean, nullable=False),
    Column("approved_by", String(128), nullable=True),
    Column("paid_at", Timestamp, nullable=True),
    Column("note", Text, nullable=True),
    Index("ux_lh_payouts_once", "tenant", "subject_id", "policy_id", "period", unique=True),
    Index("ix_lh_payouts_due", "status", "objection_until"),
)

optouts = Table(
    "lh_optouts", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("subject_id", String(64), primary_key=True),
    Column("at", Timestamp, nullable=False),
)

care_people = Table(
    "lh_care_people", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("subject_id", String(64), primary_key=True),
    Column("device_ids", JsonDoc, nullable=False),
    Column("chain", JsonDoc, nullable=False),  # [{role, userId, ackMinutes}]
    Column("district", String(128), nullable=True),
    Column("worker_id", String(64), nullable=True),  # the community worker (社区网格员) in charge
    Column("last_activity_at", Timestamp, nullable=True),
    Column("notes", JsonDoc, nullable=False),
    Index("ix_lh_care_worker", "tenant", "worker_id"),
)

care_alerts = Table(
    "lh_care_alerts", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("kind", String(24), nullable=False),  # fall | sos | vitals | gas | smoke | inactivity
    Column("dedup_key", String(128), nullable=False),
    Column("raised_at", Timestamp, nullable=False),
    Column("step", Integer, nullable=False),
    Column("step_deadline", Timestamp, nullable=True),
    Column("status", String(16), nullable=False),  # open | acknowledged | escalated-120 | closed
    Column("acknowledged_at", Timestamp, nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
    Column("steps", JsonDoc, nullable=False),  # [{step, role, userId, calledAt, deadline, outcome}]
    Column("detail", Text, nullable=True),  # sealed (health data: sensitive)
    Index("ux_lh_care_alert_dedup", "tenant", "dedup_key", unique=True),
    Index("ix_lh_care_alerts_due", "status", "step_deadline"),
)

care_vitals = Table(
    "lh_care_vitals", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("subject_id", String(64), primary_key=True),
    Column("measure", String(16), primary_key=True),  # heartRate | spo2
    Column("out_since", Timestamp, nullable=True),  # first reading out of range in the current run
)

ALL_TABLES = (subjects, records, facts, policies, decisions, payouts, optouts, care_people, care_alerts,
              care_vitals)
