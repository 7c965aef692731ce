"""Programmatic Alembic: `cityos db upgrade` and the server's start-up both call this."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config

from cityos.config import Settings


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("cityos").joinpath("migrations")))
    config.set_main_option("sqlalchemy.url", settings.database_url)
    return config


def upgrade(settings: Settings, revision: str = "heads") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)
