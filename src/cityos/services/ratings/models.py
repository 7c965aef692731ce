"""好差评 tables: the applications that may be rated, the ratings, and rectification (整改) tasks.

`svc_rating_applications` is this package's own record of applications, kept from the
``services.application.changed`` events (a domain never reads another package's tables): only an
application whose status is ``completed`` may be rated, once, by its applicant. A rating of 1 or 2
opens a rectification task for the department that handled the application, with a deadline and
a required reply. No foreign keys (the test harness empties tables in any order).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

RECTIFICATION_STATUSES = ("open", "replied")

applications = Table(
    "svc_rating_applications",
    metadata,
    Column("tenant", String(256), nullable=False),
    Column("application_id", String(128), nullable=False),
    Column("service_code", String(128), nullable=False),
    Column("department", String(128), nullable=True),
    Column("applicant", String(128), nullable=False),
    Column("status", String(32), nullable=False),
    Column("completed_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "application_id", name="pk_svc_rating_applications"),
)

ratings = Table(
    "svc_ratings",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("application_id", String(128), nullable=False),
    Column("service_code", String(128), nullable=False),
    Column("department", String(128), nullable=True),
    Column("applicant", String(128), nullable=False),
    Column("score", Integer, nullable=False),
    Column("comment", Text, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    # Once per application: the second rating is refused (409) by this index.
    Index("ux_svc_ratings_application", "tenant", "application_id", unique=True),
    Index("ix_svc_ratings_department", "tenant", "department"),
    Index("ix_svc_ratings_service", "tenant", "service_code"),
)

rectifications = Table(
    "svc_rectifications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("rating_id", String(32), nullable=False),
    Column("application_id", String(128), nullable=False),
    Column("service_code", String(128), nullable=False),
    Column("department", String(128), nullable=True),
    Column("score", Integer, nullable=False),
    Column("comment", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("deadline", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("reply", Text, nullable=True),
    Column("replied_by", String(256), nullable=True),
    Column("replied_at", Timestamp, nullable=True),
    Index("ix_svc_rectifications_department", "tenant", "department", "status", "deadline"),
)

TABLES = (applications, ratings, rectifications)
