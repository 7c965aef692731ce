"""`cityos events dead-letters | replay`: the domain events a consumer group's handlers failed on.

With `CITYOS_EVENTS_URL` set, an event whose handlers fail `max_deliver` times is kept in
`bus_dead_letters` with its error. After the cause is fixed, `replay` puts it back on the stream under its
own id, marked for the group that failed: only that group handles it, the others pass it by.
"""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from cityos.config import Settings
from cityos.core.bus_models import dead_letters
from cityos.core.db import create_engine
from cityos.core.jetstream import JetStreamBus, JetStreamSettings

events_app = typer.Typer(help="Cross-process domain events: dead letters and their replay", no_args_is_help=True)
console = Console()


@events_app.command("dead-letters")
def list_dead_letters(consumer: str | None = typer.Option(None, help="Only this consumer group"),
                      limit: int = typer.Option(100, min=1, max=10_000)) -> None:
    """List the events set aside, oldest first, with the error their handler raised."""
    async def run() -> list[Any]:
        engine = create_engine(Settings())
        try:
            query = select(dead_letters).order_by(dead_letters.c.id).limit(limit)
            if consumer is not None:
                query = query.where(dead_letters.c.consumer == consumer)
            async with engine.connect() as conn:
                return list((await conn.execute(query)).all())
        finally:
            await engine.dispose()

    rows = asyncio.run(run())
    table = Table("id", "consumer", "topic", "event id", "attempts", "failed at (UTC)", "error")
    for row in rows:
        table.add_row(str(row.id), row.consumer, row.topic, row.event_id or "", str(row.attempts),
                      row.failed_at.isoformat(timespec="seconds"), row.error[:120])
    console.print(table)
    console.print(f"{len(rows)} dead letter(s)")


@events_app.command("replay")
def replay(consumer: str | None = typer.Option(None, help="Only this consumer group's dead letters")) -> None:
    """Publish the dead letters again (needs CITYOS_EVENTS_URL) and remove those the stream took."""
    settings = Settings()
    if not settings.events_url:
        console.print("[red]CITYOS_EVENTS_URL is not set: dead letters exist only with the NATS event bus[/red]")
        raise typer.Exit(2)

    async def run() -> tuple[int, int]:
        engine = create_engine(settings)
        bus = JetStreamBus(JetStreamSettings.from_env(settings.events_url or ""))
        bus.relay_from(engine.begin, [])
        try:
            await bus.connect()
            return await bus.replay_dead_letters(consumer)
        finally:
            await bus.close()
            await engine.dispose()

    replayed, held = asyncio.run(run())
    console.print(f"{replayed} replayed; {held} held back (still inside the stream's duplicate window: "
                  "run again in two minutes)" if held else f"{replayed} replayed")
