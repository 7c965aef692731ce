"""Security: account lifecycle (users.disabled_at), TOTP enrolment codes, known devices, recovery codes.

Revision 0005 creates the security tables from the models as they are declared when it runs, so
on a fresh database `sec_users.disabled_at` already exists; it is added here only when missing.

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
    columns = {c["name"] for c in sa.inspect(bind).get_columns("sec_users")}
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
    with op.batch_alter_table("sec_users") as batch:
        batch.drop_column("disabled_at")
