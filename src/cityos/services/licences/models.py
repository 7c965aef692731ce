"""E-licence table.

The signed document holds personal data (names, ID numbers), so it is stored field-encrypted
(`cityos.security.crypto`, registered for key rotation); the clear columns are only what queries
need: tenant, holder (a user id), type, issuing department, times, status. ``doc_hash`` is the
SHA-256 of the canonical signed document: the online verifier checks that a presented document
is the one issued. Revocation lives on the row (status, time, reason, who); the published
revocation list is built from it and signed on request. The signing key is never stored here.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table, Text

from cityos.core.sqltypes import Timestamp
from cityos.security.crypto import register_encrypted

metadata = MetaData()

STATUSES = ("valid", "revoked")

licences = Table(
    "svc_licences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(256), nullable=False),
    Column("holder", String(128), nullable=False),
    Column("licence_type", String(128), nullable=False),
    Column("issuer_department", String(128), nullable=False),
    Column("application_id", String(128), nullable=True),
    Column("kid", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("issued_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
    Column("revoked_by", String(256), nullable=True),
    Column("revocation_reason", String(512), nullable=True),
    Column("doc_hash", String(64), nullable=False),
    Column("document", Text, nullable=False),  # field-encrypted canonical JSON
    Index("ix_svc_licences_holder", "tenant", "holder", "issued_at"),
    Index("ix_svc_licences_revoked", "tenant", "status", "revoked_at"),
    # One licence of a type per application: issuing again returns the first (idempotent).
    Index("ux_svc_licences_application", "tenant", "application_id", "licence_type", unique=True),
)

register_encrypted(licences, "id", "document")

TABLES = (licences,)
