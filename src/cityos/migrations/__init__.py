"""Alembic migrations. Most revisions create a domain's tables as its models declare them."""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import Table


def create_tables(tables: Sequence[Table]) -> None:
    bind = op.get_bind()
    for table in tables:
        table.create(bind)


def drop_tables(tables: Sequence[Table]) -> None:
    """In reverse order, so that tables referring to others go first."""
    bind = op.get_bind()
    for table in reversed(tables):
        table.drop(bind, checkfirst=True)
