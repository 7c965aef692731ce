"""Citizens: self-registration (registered identities, phone codes) and the photos of reports (随手拍).

Revision ID: 0020_citizen
Revises: 0019_care
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.migrations import create_tables, drop_tables
from cityos.ops.open311.models import media
from cityos.services.registration.models import TABLES

revision = "0020_citizen"
down_revision = "0019_care"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([*TABLES, media])


def downgrade() -> None:
    drop_tables([media, *TABLES])
