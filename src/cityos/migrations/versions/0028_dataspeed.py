"""一池汇聚 speed and 一数一源: the reading history's second key as an indexed column; authoritative sources.

- `data_rows.subkey` (the reading's attribute) and `ix_data_rows_subkey` on (tenant, dataset, version,
  key, subkey, ts): the reading history (10 M rows and more) is filtered by entity and attribute and
  sorted by time; with a plain column (not a JSON expression, which PostgreSQL cannot answer from an
  index alone) `datastore_search` walks one index range backwards and counts the matches index-only.
  Existing history rows are backfilled from their documents.
- `data_field_sources` / `data_source_conflicts`: each field's authoritative source (department + system)
  per entity type or registered dataset, and the writes from other sources that were refused or flagged.

A database created at this revision already has the column and index (migration 0021 creates the tables
from the current models), so both are added only where missing.

Revision ID: 0028_dataspeed
Revises: 0027_commons
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cityos.data.models import SOURCE_TABLES
from cityos.migrations import create_tables, drop_tables

revision = "0028_dataspeed"
down_revision = "0027_commons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "subkey" not in {c["name"] for c in inspector.get_columns("data_rows")}:
        op.add_column("data_rows", sa.Column("subkey", sa.String(256), nullable=True))
        attribute = ("doc ->> 'attribute'" if bind.dialect.name == "postgresql"
                     else "json_extract(doc, '$.attribute')")
        op.execute(f"UPDATE data_rows SET subkey = {attribute} WHERE version = 0 AND dataset LIKE 'readings-%'")
    if "ix_data_rows_subkey" not in {i["name"] for i in inspector.get_indexes("data_rows")}:
        op.create_index("ix_data_rows_subkey", "data_rows", ["tenant", "dataset", "version", "key", "subkey", "ts"])
    create_tables(SOURCE_TABLES)


def downgrade() -> None:
    drop_tables(SOURCE_TABLES)
    op.drop_index("ix_data_rows_subkey", table_name="data_rows")
    with op.batch_alter_table("data_rows") as batch:
        batch.drop_column("subkey")
