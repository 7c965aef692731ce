"""The hub: entities, types, geo index, attribute history, tenants, @context cache.

Revision ID: 0001_hub
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.hub import geoquery
from cityos.hub.models import attribute_history, entities, entity_extra_types, entity_geo, jsonld_contexts, tenants
from cityos.hub.partitions import history_partition_ddl

revision = "0001_hub"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for table in (tenants, entities, entity_extra_types, entity_geo, jsonld_contexts):
        table.create(bind)
    if dialect == "postgresql":
        # Partitioned by time so retention drops whole partitions instead of deleting rows.
        for statement in history_partition_ddl():
            op.execute(statement)
    else:
        attribute_history.create(bind)
    for statement in geoquery.geo_schema_ddl(dialect):
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS hub_entity_geo_rtree")
    for table in (attribute_history, jsonld_contexts, entity_geo, entity_extra_types, entities, tenants):
        table.drop(bind, checkfirst=True)
