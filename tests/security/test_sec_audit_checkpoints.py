"""Issue 12, finding 11: signed checkpoints outside the database catch a cut-off audit tail; audit
records of administrative writes commit in the same transaction as the write."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from sec_harness import Harness
from sqlalchemy import select, text

from cityos.security.audit import AuditEvent, AuditQuery
from cityos.security.audit_anchor import (
    Checkpointer,
    CheckpointSettings,
    CheckpointStore,
    load_checkpoint_keys,
    verify_anchored,
    write_checkpoint,
)
from cityos.security.models import audit
from cityos.security.settings import SecuritySettings


def _store(tmp_path: Path, to_log: bool = False, key: str = "key.pem") -> CheckpointStore:
    settings = CheckpointSettings(tmp_path / "checkpoints.jsonl", tmp_path / key, seconds=0, to_log=to_log)
    return CheckpointStore(settings, load_checkpoint_keys(settings, SecuritySettings(env="development",
                                                                                     data_dir=tmp_path)))


async def _fill(sec: Harness, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await sec.state.audit.record(AuditEvent("entity.write", f"urn:e:{i}", actor="u", actor_kind="user",
                                                role="operator", detail={"i": i}))


async def _hash_of(sec: Harness, seq: int) -> str:
    async with sec.engine.connect() as conn:
        return str((await conn.execute(select(audit.c.hash).where(audit.c.seq == seq))).scalar_one())


async def _cut_tail(sec: Harness, keep: int) -> None:
    """What the table's owner can do: switch the append-only trigger off (PostgreSQL), delete the newest
    records, move the chain head back to the last record kept, switch the trigger on again."""
    digest = await _hash_of(sec, keep)
    async with sec.engine.begin() as conn:
        postgres = sec.engine.dialect.name == "postgresql"
        if postgres:
            # The owner may ALTER its table; no superuser trick (session_replication_role) needed.
            owner = (await conn.execute(text("SELECT tableowner FROM pg_tables WHERE tablename = 'sec_audit'"))
                     ).scalar_one()
            assert owner == (await conn.execute(text("SELECT current_user"))).scalar_one()
            await conn.execute(text("ALTER TABLE sec_audit DISABLE TRIGGER sec_audit_no_update_delete"))
        await conn.execute(text(f"DELETE FROM sec_audit WHERE seq > {keep}"))
        await conn.execute(text(f"UPDATE sec_audit_head SET seq = {keep}, hash = '{digest}' WHERE id = 1"))
        if postgres:
            await conn.execute(text("ALTER TABLE sec_audit ENABLE TRIGGER sec_audit_no_update_delete"))


async def test_cut_off_tail_passes_the_chain_but_not_the_checkpoint(sec: Harness, tmp_path: Path) -> None:
    store = _store(tmp_path)
    await _fill(sec, 10)
    checkpoint = await write_checkpoint(sec.engine, store)
    assert checkpoint is not None and (checkpoint.seq, checkpoint.count) == (10, 10)
    assert checkpoint.hash == await _hash_of(sec, 10)
    assert (await verify_anchored(sec.state.audit, store)).ok
    await _fill(sec, 3, start=10)  # the chain grows past the checkpoint: still fine
    report = await verify_anchored(sec.state.audit, store)
    assert report.ok and report.checkpoint == 10 and report.head_seq == 13

    await _cut_tail(sec, keep=7)
    assert (await sec.state.audit.verify()).ok  # the hole this closes: the shorter chain is self-consistent
    report = await verify_anchored(sec.state.audit, store)
    assert (report.ok, report.problem, report.seq) == (False, "truncated", 8)
    assert "8..10" in report.detail and "checkpoint" in report.detail

    # Re-growing the chain past the checkpoint with other records does not hide the cut.
    await _fill(sec, 6, start=100)
    assert (await sec.state.audit.verify()).ok
    report = await verify_anchored(sec.state.audit, store)
    assert (report.ok, report.problem, report.seq) == (False, "truncated", 10)
    assert "does not extend" in report.detail


async def test_cityos_audit_verify_names_the_truncation(sec: Harness, tmp_path: Path, settings: Any) -> None:
    await _fill(sec, 6)
    env = {**os.environ, "CITYOS_DATABASE_URL": settings.database_url, "CITYOS_DATA_DIR": str(tmp_path),
           "CITYOS_AUDIT_CHECKPOINT_FILE": str(tmp_path / "cli-checkpoints.jsonl"),
           "CITYOS_AUDIT_CHECKPOINT_KEY_FILE": str(tmp_path / "cli-key.pem"), "CITYOS_ENV": "development"}

    def cityos(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cityos.cli", "audit", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    made = cityos("checkpoint")
    assert made.returncode == 0, made.stderr
    assert orjson.loads(made.stdout)["seq"] == 6
    assert (tmp_path / "cli-key.pem").stat().st_mode & 0o777 == 0o600
    ok = cityos("verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert orjson.loads(ok.stdout)["checkpoint"] == 6
    await _cut_tail(sec, keep=4)
    failed = cityos("verify")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    report = orjson.loads(failed.stdout)
    assert (report["ok"], report["problem"], report["seq"]) == (False, "truncated", 5)


async def test_checkpoint_file_is_append_only_signed_and_checked(sec: Harness, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    store = _store(tmp_path, to_log=True)
    checkpointer = Checkpointer(sec.engine, store)
    assert await checkpointer.checkpoint() is None  # empty chain: nothing to pin
    await _fill(sec, 3)
    with caplog.at_level(logging.INFO, logger="cityos.audit.checkpoint"):
        first = await checkpointer.checkpoint()
    assert first is not None and any(first.hash in r.getMessage() for r in caplog.records)
    assert await checkpointer.checkpoint() is None  # the head has not moved: no new line
    await _fill(sec, 2, start=3)
    second = await checkpointer.checkpoint()
    assert second is not None and second.seq == 5
    lines = store.settings.file.read_bytes().splitlines()
    assert len(lines) == 2 and orjson.loads(lines[0])["seq"] == 3
    assert store.settings.file.stat().st_mode & 0o777 == 0o600
    assert store.latest().checkpoint == second

    # An edited line (a smaller seq, to hide a cut) fails its signature and is reported.
    forged = {**orjson.loads(lines[1]), "seq": 2}
    with store.settings.file.open("ab") as out:
        out.write(orjson.dumps(forged) + b"\n")
    report = await verify_anchored(sec.state.audit, store)
    assert (report.ok, report.problem) == (False, "checkpoint") and "line 3" in report.detail
    assert store.latest().checkpoint == second  # the forged line never counts as the newest checkpoint

    # A checkpoint signed with a key the platform does not have is not trusted either; nor is garbage.
    stranger = _store(tmp_path / "other")
    alien = stranger.sign(99, "0" * 64)
    for bad in (alien.line(), b"not json\n", b'{"seq": 1}\n', orjson.dumps({**orjson.loads(lines[0]),
                                                                            "sig": base64.b64encode(b"x").decode()})):
        with pytest.raises(ValueError):
            store.check(bad.strip())


async def test_admin_writes_and_their_audit_records_commit_together(sec: Harness) -> None:
    log = sec.state.audit
    before = await log.count()
    with pytest.raises(RuntimeError):
        async with sec.engine.begin() as conn:
            await log.append_in(conn, [AuditEvent("x.in_transaction", "r1")])
            raise RuntimeError("the change fails after its audit record was written")
    assert await log.count() == before and (await log.verify()).ok  # rolled back together
    async with sec.engine.begin() as conn:
        seqs = await log.append_in(conn, [AuditEvent("x.in_transaction", "r2"), AuditEvent("x.in_transaction", "r3")])
    await _fill(sec, 2)  # the group-commit writer carries on after it
    assert seqs == [before + 1, before + 2]
    assert (await log.verify()).ok and await log.count() == before + 4


async def test_open311_key_and_upload_are_audited_in_their_transaction(sec: Harness, app: Any) -> None:
    from cityos.security.policy import Principal

    admin = Principal(id="adm", role="sys_admin", username="adm")
    key = await app.state.ops_open311.create_key("", "kiosk", admin)
    assert await app.state.ops_open311.revoke_key("", key["id"], admin)
    actions = [r["action"] for r in await sec.state.audit.search(AuditQuery(resource=f"open311-key:{key['id']}"))]
    assert actions == ["open311.key.revoke", "open311.key.create"]
    assert (await sec.state.audit.verify()).ok


async def test_the_periodic_checkpointer_and_its_last_checkpoint_at_stop(sec: Harness, tmp_path: Path) -> None:
    import asyncio
    from dataclasses import replace

    store = _store(tmp_path)
    store.settings = replace(store.settings, seconds=1)
    checkpointer = Checkpointer(sec.engine, store)
    await _fill(sec, 2)
    checkpointer.start()
    try:
        for _ in range(100):  # the first period ends after about a second
            if store.latest().checkpoint is not None:
                break
            await asyncio.sleep(0.05)
        assert store.latest().checkpoint is not None and store.latest().checkpoint.seq == 2  # type: ignore[union-attr]
        await _fill(sec, 1, start=2)
    finally:
        await checkpointer.stop()
    latest = store.latest()
    assert latest.checkpoint is not None and latest.checkpoint.seq == 3 and latest.lines == 2
    assert (await verify_anchored(sec.state.audit, store)).ok
