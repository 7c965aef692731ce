"""`cityos events dead-letters` and `cityos events replay` against a real database and NATS server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, func, insert, select
from typer.testing import CliRunner

from cityos.cli import app as cli
from cityos.config import Settings
from cityos.core import clock
from cityos.core.bus_models import dead_letters
from cityos.core.db import create_engine
from nats_cluster import NatsCluster


@pytest.fixture(scope="module")
def server() -> Iterator[NatsCluster]:
    single = NatsCluster(1).start()
    try:
        yield single
    finally:
        single.stop()


def run_sql(database_url: str, statement: object) -> object:
    async def run() -> object:
        engine = create_engine(Settings(database_url=database_url))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(statement)  # type: ignore[call-overload]
                return result.scalar() if result.returns_rows else None
        finally:
            await engine.dispose()
    return asyncio.run(run())


@pytest.fixture
def letters(database_url: str) -> Iterator[str]:
    run_sql(database_url, delete(dead_letters))
    for consumer, seq in (("rules", 1), ("incidents", 2)):
        run_sql(database_url, insert(dead_letters).values(
            consumer=consumer, event_id=f"bus_outbox:{seq}:{uuid.uuid4().hex}", topic="test.dead.letter",
            payload={"entity": "e1", "seq": seq}, error="RuntimeError('downstream down')", attempts=5,
            failed_at=clock.now()))
    yield database_url
    run_sql(database_url, delete(dead_letters))


def test_dead_letters_are_listed_with_their_error_and_filtered_by_group(letters: str) -> None:
    env = {"CITYOS_DATABASE_URL": letters, "COLUMNS": "240"}  # one line per letter
    everything = CliRunner().invoke(cli, ["events", "dead-letters"], env=env)
    assert everything.exit_code == 0, everything.output
    assert "rules" in everything.output and "incidents" in everything.output
    assert "downstream down" in everything.output and "2 dead letter(s)" in everything.output
    one = CliRunner().invoke(cli, ["events", "dead-letters", "--consumer", "rules"], env=env)
    assert "1 dead letter(s)" in one.output and "incidents" not in one.output


def test_replay_without_the_nats_bus_says_why_and_keeps_the_letters(letters: str) -> None:
    result = CliRunner().invoke(cli, ["events", "replay"], env={"CITYOS_DATABASE_URL": letters,
                                                                 "CITYOS_EVENTS_URL": ""})
    assert result.exit_code == 2 and "CITYOS_EVENTS_URL" in result.output
    assert run_sql(letters, select(func.count()).select_from(dead_letters)) == 2


def test_replay_publishes_one_groups_letters_and_removes_only_them(letters: str, server: NatsCluster) -> None:
    env = {"CITYOS_DATABASE_URL": letters, "CITYOS_EVENTS_URL": server.url}
    result = CliRunner().invoke(cli, ["events", "replay", "--consumer", "rules"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 replayed" in result.output
    assert run_sql(letters, select(dead_letters.c.consumer)) == "incidents"
    again = CliRunner().invoke(cli, ["events", "replay", "--consumer", "incidents"], env=env)
    assert "1 replayed" in again.output
    assert run_sql(letters, select(func.count()).select_from(dead_letters)) == 0


def test_the_failure_limit_comes_from_the_environment_and_is_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from cityos.core.jetstream import JetStreamSettings

    assert JetStreamSettings.from_env("nats://127.0.0.1:4222").max_deliver == 5
    monkeypatch.setenv("CITYOS_EVENTS_MAX_DELIVER", "8")
    assert JetStreamSettings.from_env("nats://127.0.0.1:4222").max_deliver == 8
    monkeypatch.setenv("CITYOS_EVENTS_MAX_DELIVER", "0")  # 0 would set every failing event aside unhandled
    assert JetStreamSettings.from_env("nats://127.0.0.1:4222").max_deliver == 1
