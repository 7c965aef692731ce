"""`cityos` command line: serve, db upgrade."""

from __future__ import annotations

import logging
import os

import typer
from rich.console import Console

from cityos.config import Settings

app = typer.Typer(help="CityOS smart-city platform", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema management", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("heads", help="Alembic revision to upgrade to")) -> None:
    """Run the Alembic migrations against CITYOS_DATABASE_URL."""
    from cityos.core import migrate

    settings = Settings()
    migrate.upgrade(settings, revision)
    console.print(f"[green]database at {_redacted(settings.database_url)} is at {revision}[/green]")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Alembic revision to go back to, e.g. base")) -> None:
    """Undo migrations down to REVISION."""
    from cityos.core import migrate

    migrate.downgrade(Settings(), revision)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, help="Worker processes (PostgreSQL only; SQLite has one writer)"),
    migrate_first: bool = typer.Option(True, "--migrate/--no-migrate", help="Run migrations before serving"),
    log_level: str = typer.Option("info", help="Log level"),
) -> None:
    """Serve the CityOS API (NGSI-LD hub at /ngsi-ld/v1, OpenAPI docs at /docs)."""
    import uvicorn

    from cityos.core import migrate

    settings = Settings()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if migrate_first:
        migrate.upgrade(settings)
    if workers > 1 and not settings.is_postgres:
        console.print("[yellow]SQLite allows one writer: running a single worker[/yellow]")
        workers = 1
    console.print(f"CityOS on http://{host}:{port}  (API docs: /docs, NGSI-LD: /ngsi-ld/v1, "
                  f"database: {_redacted(settings.database_url)})")
    os.environ.setdefault("CITYOS_DATABASE_URL", settings.database_url)
    uvicorn.run("cityos.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    app()
