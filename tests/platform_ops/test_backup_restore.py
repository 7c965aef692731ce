"""The restore drill: write known data, back up, destroy the database, restore, and check that every
row, the audit chain and the last write before the backup are back (and a write after it is not).
Also: a backup that was altered, cut short or opened with the wrong key is refused before the
database is touched."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from auth_tokens import Auth
from backends import admin_sql, postgres_database_url, selected_backends
from cityos.app import create_app
from cityos.config import Settings
from cityos.core import migrate
from cityos.operations.backup import (
    BackupError,
    BackupKey,
    create_backup,
    key_from_text,
    new_key_text,
    prune,
    restore_backup,
    seal,
    unseal,
)

TABLES = ("hub_entities", "hub_attribute_history", "sec_audit")


@pytest.fixture(params=selected_backends())
def drill_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the drill's own (it is destroyed on purpose)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'drill.db'}"
        return
    name = f"cityos_drill_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_database_url(name)
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Platform:
    def __init__(self, url: str) -> None:
        self.url = url
        self.app = create_app(Settings(database_url=url))

    async def __aenter__(self) -> Platform:
        self._life = self.app.router.lifespan_context(self.app)
        await self._life.__aenter__()
        headers = Auth(self.app).headers("sys_admin", username="drill-admin")
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://cityos.test",
                                      headers=headers)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()
        await self._life.__aexit__(*exc)

    async def counts(self) -> dict[str, int]:
        async with self.app.state.engine.connect() as conn:
            return {t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one() for t in TABLES}

    async def put(self, n: int) -> None:
        entity = {"id": f"urn:ngsi-ld:Sensor:drill-{n}", "type": "Sensor",
                  "temperature": {"type": "Property", "value": 20 + n}}
        assert (await self.http.post("/ngsi-ld/v1/entities", json=entity)).status_code == 201
        patch = {"temperature": {"type": "Property", "value": 30 + n}}
        assert (await self.http.patch(f"/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:drill-{n}/attrs",
                                      json=patch)).status_code == 204


def _destroy(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        assert not path.exists()
    else:
        admin_sql(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture
async def drill_key() -> AsyncIterator[BackupKey]:
    yield key_from_text(new_key_text())


async def test_restore_drill(drill_database: str, drill_key: BackupKey, tmp_path: Path) -> None:
    await asyncio.to_thread(migrate.upgrade, Settings(database_url=drill_database))
    async with Platform(drill_database) as platform:
        for n in range(40):
            await platform.put(n)
        before = await platform.counts()
        backup = create_backup(drill_database, tmp_path / "b" / "one.cityos-backup", drill_key)
        await platform.put(999)  # after the backup point: must not come back
    assert before["hub_entities"] == 40 and before["sec_audit"] > 0
    assert backup.path.exists() and b"drill-39" not in backup.path.read_bytes()  # sealed, not readable

    await asyncio.to_thread(_destroy, drill_database)
    restore_backup(backup.path, drill_database, drill_key)

    async with Platform(drill_database) as platform:
        assert await platform.counts() == before
        last = await platform.http.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:drill-39",
                                       params={"options": "keyValues"})
        assert last.status_code == 200 and last.json()["temperature"] == 69
        assert (await platform.http.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:drill-999")).status_code == 404
        report = await platform.app.state.security.service.audit.verify()
        assert report.ok, report.to_json()
        # and the restored platform keeps working
        await platform.put(1000)


async def test_a_damaged_backup_is_refused_and_the_database_kept(drill_database: str, drill_key: BackupKey,
                                                                 tmp_path: Path) -> None:
    await asyncio.to_thread(migrate.upgrade, Settings(database_url=drill_database))
    async with Platform(drill_database) as platform:
        await platform.put(1)
        backup = create_backup(drill_database, tmp_path / "one.cityos-backup", drill_key)
        await platform.put(2)
        before = await platform.counts()
    raw = backup.path.read_bytes()
    flipped = tmp_path / "flipped.cityos-backup"
    flipped.write_bytes(raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:])
    truncated = tmp_path / "truncated.cityos-backup"
    truncated.write_bytes(raw[: len(raw) // 2])
    for bad, key in ((flipped, drill_key), (truncated, drill_key), (backup.path, key_from_text(new_key_text()))):
        with pytest.raises(BackupError):
            restore_backup(bad, drill_database, key)
    async with Platform(drill_database) as platform:
        assert await platform.counts() == before  # nothing was touched


def test_stream_sealing_refuses_reordered_and_dropped_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import cityos.operations.backup as backup

    monkeypatch.setattr(backup, "CHUNK_BYTES", 16)
    key = key_from_text(new_key_text())
    plain = bytes(range(200))
    sealed = io.BytesIO()
    seal(io.BytesIO(plain), sealed, key, {"kind": "test"})
    out = io.BytesIO()
    unseal(io.BytesIO(sealed.getvalue()), out, key)
    assert out.getvalue() == plain
    # cut the file after a whole chunk: the new last chunk was sealed as "not last"
    data = sealed.getvalue()
    header_end = len(backup.MAGIC) + 4 + int.from_bytes(data[len(backup.MAGIC):len(backup.MAGIC) + 4], "big")
    first_len = int.from_bytes(data[header_end:header_end + 4], "big")
    with pytest.raises(BackupError):
        unseal(io.BytesIO(data[:header_end + 4 + first_len]), io.BytesIO(), key)
    # swap the first two chunks
    second_at = header_end + 4 + first_len
    second_len = int.from_bytes(data[second_at:second_at + 4], "big")
    swapped = (data[:header_end] + data[second_at:second_at + 4 + second_len]
               + data[header_end:second_at] + data[second_at + 4 + second_len:])
    with pytest.raises(BackupError):
        unseal(io.BytesIO(swapped), io.BytesIO(), key)
    with pytest.raises(BackupError):
        unseal(io.BytesIO(b"not a backup at all"), io.BytesIO(), key)


def test_the_cli_backs_up_and_restores(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "CITYOS_DATABASE_URL": url, "CITYOS_BACKUP_KEY": new_key_text(),
           "CITYOS_DATA_DIR": str(tmp_path / "data")}
    cli = [sys.executable, "-m", "cityos.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    made = subprocess.run([*cli, "backup", "create", "--output", str(tmp_path / "backups")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    [file] = list((tmp_path / "backups").glob("*.cityos-backup"))
    shown = subprocess.run([*cli, "backup", "inspect", str(file)], env=env, capture_output=True, text=True,
                           timeout=60)
    assert '"kind": "sqlite"' in shown.stdout
    Path(url[len("sqlite:///"):]).unlink()
    back = subprocess.run([*cli, "backup", "restore", str(file), "--yes"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert back.returncode == 0, back.stdout + back.stderr
    verify = subprocess.run([*cli, "audit", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    wrong = subprocess.run([*cli, "backup", "restore", str(file), "--yes"],
                           env={**env, "CITYOS_BACKUP_KEY": new_key_text()}, capture_output=True, text=True,
                           timeout=120)
    assert wrong.returncode == 1 and "key" in wrong.stdout


def test_prune_keeps_the_newest_per_day_and_week(tmp_path: Path, drill_key: Any) -> None:
    from datetime import UTC, datetime, timedelta

    import cityos.operations.backup as backup

    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    for hours in range(0, 24 * 40, 12):  # two a day for 40 days
        made = now - timedelta(hours=hours)
        with (tmp_path / f"b{hours:04d}.cityos-backup").open("wb") as out:
            seal(io.BytesIO(b"x"), out, drill_key, {"createdAt": made.isoformat(), "kind": "sqlite"})
    deleted = prune(tmp_path, keep_daily=7, keep_weekly=5, now=now)
    kept = sorted(p.name for p in tmp_path.glob("*.cityos-backup"))
    days = {backup.inspect_backup(tmp_path / name).created_at[:10] for name in kept}
    assert len(kept) + len(deleted) == 80
    assert len(days) == len(kept)  # one per kept day at most
    assert "b0000.cityos-backup" in kept  # the newest survives
    assert 7 <= len(kept) <= 12
