"""Devices straight to NATS's MQTT listener: `iot_devices.nats_secret`, the bcrypt of the device's token
that the generated NATS users carry (NATS 2.9 accepts bcrypt passwords, not our SHA-256 token hash).

Earlier revisions create the IoT tables from the current models, so a fresh database already has the
column: it is added only where missing. Existing devices get one at their next token rotation.

Revision ID: 0031_nats_mqtt
Revises: 0030_datagov
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031_nats_mqtt"
down_revision = "0030_datagov"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("iot_devices")}
    if "nats_secret" not in columns:
        op.add_column("iot_devices", sa.Column("nats_secret", sa.String(60), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("iot_devices") as batch:
        batch.drop_column("nats_secret")
