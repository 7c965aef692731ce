"""Council tables. A vote's key is (proposal, voter): a second vote by the same resident replaces the first."""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, PrimaryKeyConstraint, String, Table, Text

from cityos.core.sqltypes import Timestamp

metadata = MetaData()

CHOICES = ("yes", "no", "abstain")

members = Table(
    "council_members", metadata,
    Column("tenant", String(256), nullable=False),
    Column("community", String(64), nullable=False),
    Column("person", String(256), nullable=False),
    Column("verified_by", String(256), nullable=False),   # the community office's staff member
    Column("verified_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "community", "person", name="pk_council_members"),
)

proposals = Table(
    "council_proposals", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("community", String(64), nullable=False),
    Column("author", String(256), nullable=False),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),          # open | hidden (moderated)
    Column("closes_at", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("moderation_reason", Text, nullable=True),
    PrimaryKeyConstraint("tenant", "id", name="pk_council_proposals"),
)
Index("ix_council_proposals_community", proposals.c.tenant, proposals.c.community, proposals.c.created_at)

votes = Table(
    "council_votes", metadata,
    Column("tenant", String(256), nullable=False),
    Column("proposal_id", String(64), nullable=False),
    Column("voter", String(256), nullable=False),
    Column("choice", String(8), nullable=False),
    Column("at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "proposal_id", "voter", name="pk_council_votes"),
)

comments = Table(
    "council_comments", metadata,
    Column("tenant", String(256), nullable=False),
    Column("id", String(64), nullable=False),
    Column("proposal_id", String(64), nullable=False),
    Column("author", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant", "id", name="pk_council_comments"),
)
Index("ix_council_comments_proposal", comments.c.tenant, comments.c.proposal_id, comments.c.at)

TABLES = [members, proposals, votes, comments]
