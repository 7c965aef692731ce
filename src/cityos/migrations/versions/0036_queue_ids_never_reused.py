"""SQLite: the queue tables' ids are never handed out twice (`AUTOINCREMENT`).

A relay reads outbox rows outside a transaction, publishes them and deletes them by id. With two relays
on one SQLite file (two processes), one could delete rows the other had relayed, a new change could take
the highest id again, and the first relay's late delete dropped that change unpublished (CI caught it
losing the last events of a run). PostgreSQL's sequences never reuse an id: nothing changes there.

Revision ID: 0036_queue_ids_never_reused
Revises: 0035_bus_dead_letters
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0036_queue_ids_never_reused"
down_revision = "0035_bus_dead_letters"
branch_labels = None
depends_on = None

QUEUE_TABLES = ("bus_outbox", "iot_event_outbox", "hub_notification_outbox", "sec_audit_intents")


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in QUEUE_TABLES:
        # SQLite cannot alter a key's AUTOINCREMENT: the table is copied into a new one (rows, ids, indexes).
        with op.batch_alter_table(name, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
