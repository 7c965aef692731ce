"""Security: identity, tokens, brute-force state, the hash-chained audit trail, approvals.

On PostgreSQL the audit table is append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.
(Triggers do not fire under `session_replication_role = replica`, which only a superuser may set:
that is how a test harness empties the table.)

Revision ID: 0005_security
Revises: 0004_iot
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.security.models import GENESIS_HASH, TABLES, audit_head

revision = "0005_security"
down_revision = "0004_iot"
branch_labels = None
depends_on = None

APPEND_ONLY = [
    """CREATE OR REPLACE FUNCTION sec_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sec_audit is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$""",
    """CREATE TRIGGER sec_audit_no_update_delete BEFORE UPDATE OR DELETE ON sec_audit
    FOR EACH ROW EXECUTE FUNCTION sec_audit_append_only()""",
    """CREATE TRIGGER sec_audit_no_truncate BEFORE TRUNCATE ON sec_audit
    FOR EACH STATEMENT EXECUTE FUNCTION sec_audit_append_only()""",
]


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        table.create(bind)
    op.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS_HASH))
    if bind.dialect.name == "postgresql":
        for statement in APPEND_ONLY:
            op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS sec_audit_no_update_delete ON sec_audit")
        op.execute("DROP TRIGGER IF EXISTS sec_audit_no_truncate ON sec_audit")
        op.execute("DROP FUNCTION IF EXISTS sec_audit_append_only()")
    for table in reversed(TABLES):
        table.drop(bind, checkfirst=True)
