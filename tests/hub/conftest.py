"""Fixtures of the hub's tests shared by more than one module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from backends import admin_sql, postgres_database_url
from cityos.config import Settings
from cityos.core import migrate


@pytest.fixture(scope="session")
def broker_template(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of the session's backend migrated once, which every broker's database is a copy of: each
    broker migrating a fresh database of its own took about 2 s of CPU (three at once in some tests).
    A SQLite file's path, or a PostgreSQL database's name."""
    if database_url.startswith("sqlite"):
        path = tmp_path_factory.mktemp("broker-template") / "template.db"
        migrate.upgrade(Settings(database_url=f"sqlite:///{path}"))
        yield str(path)
        return
    name = f"cityos_csr_template_{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        migrate.upgrade(Settings(database_url=postgres_database_url(name)))
        yield name
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
