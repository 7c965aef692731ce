"""Security: account lifecycle (users.disabled_at), TOTP enrolment codes, known devices, recovery codes,
and an index for the per-account login-failure window.

Revision 0005 creates the security tables from the models as they are declared when it runs, so
on a fresh database `sec_users.disabled_at` and the index already exist; they are added here only
when missing (databases created before this revision).

Revision ID: 0013_security_lifecycle
Revises: 0012_iot_event_outbox
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cityos.core.sqltypes import Timestamp
from cityos.security.models import LIFECYCLE_TABLES

revision = "0013_security_lifecycle"
down_revision = "0012_iot_event_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "ix_sec_login_failures_user" not in {i["name"] for i in inspector.get_indexes("sec_login_failures")}:
        op.create_index("ix_sec_login_failures_user", "sec_login_failures", ["username", "at"])
    columns = {c["name"] for c in inspector.get_columns("sec_users")}
    if "disabled_at" not in columns:
        op.add_column("sec_users", sa.Column("disabled_at", Timestamp, nullable=True))
        # Accounts disabled before this revision keep being disabled for readers of the new column.
        op.execute(sa.text("UPDATE sec_users SET disabled_at = created_at WHERE disabled"))
    for table in LIFECYCLE_TABLES:
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(LIFECYCLE_TABLES):
        table.drop(bind, checkfirst=True)
    op.drop_index("ix_sec_login_failures_user", table_name="sec_login_failures")
    with op.batch_alter_table("sec_users") as batch:
        batch.drop_column("disabled_at")
