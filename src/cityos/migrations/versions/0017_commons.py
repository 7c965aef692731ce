"""一网协同 II: appointments (预约), the service hall (智慧大厅), waste sorting (垃圾分类), the council (市民议事厅),
community services (社区).

Revision ID: 0017_commons
Revises: 0016_audit_intents
Create Date: 2026-12-05
"""

from __future__ import annotations

from cityos.livelihood.appointments.models import TABLES as APPOINTMENT_TABLES
from cityos.livelihood.community.models import TABLES as COMMUNITY_TABLES
from cityos.livelihood.council.models import TABLES as COUNCIL_TABLES
from cityos.livelihood.hall.models import TABLES as HALL_TABLES
from cityos.livelihood.waste.models import TABLES as WASTE_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0017_commons"
down_revision = "0016_audit_intents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_tables([*APPOINTMENT_TABLES, *HALL_TABLES, *WASTE_TABLES, *COUNCIL_TABLES,
                   *COMMUNITY_TABLES])


def downgrade() -> None:
    drop_tables([*APPOINTMENT_TABLES, *HALL_TABLES, *WASTE_TABLES, *COUNCIL_TABLES,
                   *COMMUNITY_TABLES])
