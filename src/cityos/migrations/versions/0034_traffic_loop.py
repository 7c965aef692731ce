"""The platform's signal control loop: `traffic_phase_commands.acked_ms`, the time from the controller's
decision to the signal device's acknowledgement of the phase command.

Earlier revisions create the traffic tables from the current models, so a fresh database already has the
column: it is added only where missing.

Revision ID: 0034_traffic_loop
Revises: 0033_trafficstate
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034_traffic_loop"
down_revision = "0033_trafficstate"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("traffic_phase_commands")}
    if "acked_ms" not in columns:
        op.add_column("traffic_phase_commands", sa.Column("acked_ms", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traffic_phase_commands") as batch:
        batch.drop_column("acked_ms")
