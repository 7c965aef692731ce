"""Temporal API: registry of temporal evolutions without a current entity, retention policies, time index.

Revision ID: 0002_temporal
Revises: 0001_hub
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

from cityos.hub.temporal.models import history_retention, temporal_entities

revision = "0002_temporal"
down_revision = "0001_hub"
branch_labels = None
depends_on = None

# The value of a numeric Property as float8, else NULL (what sum, avg, min, max, stddev aggregate).
NUMERIC_VALUE = "CASE WHEN jsonb_typeof(instance->'value') = 'number' THEN (instance->>'value')::float8 END"


def upgrade() -> None:
    bind = op.get_bind()
    for table in (temporal_entities, history_retention):
        table.create(bind)
    if bind.dialect.name == "postgresql":
        # History is appended in time order, so a BRIN index on ts is a few pages per partition and
        # lets retention find the expired rows of the DEFAULT partition without a full scan.
        op.execute("CREATE INDEX ix_hub_history_ts_brin ON hub_attribute_history USING brin (ts)")
        # Aggregations read only the index: readings of many entities are interleaved in the heap (one
        # page holds one minute of every sensor), so a per-entity read through the heap touches a page
        # per reading and parses JSONB each time; the numeric value as a column in the index does not.
        op.execute(f"ALTER TABLE hub_attribute_history ADD COLUMN num double precision "
                   f"GENERATED ALWAYS AS ({NUMERIC_VALUE}) STORED")
        op.execute("DROP INDEX ix_hub_history_entity_attr_ts")
        op.execute("CREATE INDEX ix_hub_history_entity_attr_ts ON hub_attribute_history "
                   "(tenant, entity_id, attr, ts) INCLUDE (dataset_id, deleted, num)")
    else:
        op.execute("CREATE INDEX ix_hub_history_ts ON hub_attribute_history (ts)")
    # Entities deleted before this revision keep their history: register them as temporal evolutions.
    op.execute(
        "INSERT INTO hub_temporal_entities (tenant, entity_id, entity_type, created_at) "
        "SELECT h.tenant, h.entity_id, min(h.entity_type), min(h.modified_at) FROM hub_attribute_history h "
        "WHERE NOT EXISTS (SELECT 1 FROM hub_entities e WHERE e.tenant = h.tenant AND e.id = h.entity_id) "
        "GROUP BY h.tenant, h.entity_id"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_hub_history_ts_brin")
        op.execute("DROP INDEX ix_hub_history_entity_attr_ts")
        op.execute("CREATE INDEX ix_hub_history_entity_attr_ts ON hub_attribute_history (tenant, entity_id, attr, ts)")
        op.execute("ALTER TABLE hub_attribute_history DROP COLUMN num")
    else:
        op.execute("DROP INDEX IF EXISTS ix_hub_history_ts")
    for table in (history_retention, temporal_entities):
        table.drop(bind, checkfirst=True)
