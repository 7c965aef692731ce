"""Signed checkpoints of the audit chain, kept outside the database.

The hash chain in `sec_audit` shows any change *inside* the chain, but someone who owns the table
can cut off its newest records and move `sec_audit_head` back: what is left is a valid, shorter
chain. A checkpoint pins the head as it was: ``{"seq", "hash", "count", "at", "kid", "sig"}`` where
`count` is the number of records in the chain (= `seq`, the chain being contiguous from 1), `at`
the time (UTC) and `sig` an Ed25519 signature (base64url) over the canonical JSON of the other
members. Checkpoints are appended, one JSON line each, to ``CITYOS_AUDIT_CHECKPOINT_FILE``
(default ``<data dir>/audit-checkpoints.jsonl``; opened O_APPEND, fsynced; operators make it
append-only with ``chattr +a`` and back it up or ship it), and with ``CITYOS_AUDIT_CHECKPOINT_LOG=1``
also logged (logger ``cityos.audit.checkpoint``) so that a log shipper carries them off the host.

Each API process writes one every ``CITYOS_AUDIT_CHECKPOINT_SECONDS`` (300; 0 = none) when the head
has moved, and one when it stops; ``cityos audit checkpoint`` writes one now.

The signing key: ``CITYOS_AUDIT_CHECKPOINT_KEY_FILE`` (PEM, PKCS#8 Ed25519, first key signs, all
verify), else in development ``<data dir>/audit-checkpoint.pem`` (generated, mode 0600), else in
production the platform's token-signing keys (``CITYOS_JWT_KEY_FILE``). A dedicated key kept away
from the database administrators is better: whoever holds it can forge checkpoints.

`verify` checks the chain against the newest checkpoint whose signature holds: the chain must still
contain the checkpointed record with the checkpointed hash (else ``truncated``). A line whose
signature does not verify is reported (``checkpoint``): the file was edited.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.config import env_int
from cityos.core import clock
from cityos.security.audit import AuditLog, VerifyReport, ts_text
from cityos.security.models import audit_head
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import SigningKey, generate_key_file, load_key_file, load_signing_keys

log = logging.getLogger("cityos.audit.checkpoint")
SIGNED = ("at", "count", "hash", "kid", "seq")
MAX_LINE = 4096


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    count: int
    at: str
    kid: str
    sig: str = ""

    def signed_bytes(self) -> bytes:
        return orjson.dumps({k: getattr(self, k) for k in SIGNED}, option=orjson.OPT_SORT_KEYS)

    def line(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS) + b"\n"


@dataclass(frozen=True)
class CheckpointSettings:
    file: Path
    key_file: Path | None
    seconds: int = field(default_factory=lambda: env_int("CITYOS_AUDIT_CHECKPOINT_SECONDS", 300))
    to_log: bool = field(default_factory=lambda: os.environ.get("CITYOS_AUDIT_CHECKPOINT_LOG", "").lower()
                         in ("1", "true", "yes", "on"))

    @classmethod
    def from_env(cls, security: SecuritySettings) -> CheckpointSettings:
        key = os.environ.get("CITYOS_AUDIT_CHECKPOINT_KEY_FILE")
        return cls(Path(os.environ.get("CITYOS_AUDIT_CHECKPOINT_FILE")
                        or security.data_dir / "audit-checkpoints.jsonl"),
                   Path(key) if key else (None if security.production else security.data_dir / "audit-checkpoint.pem"))


def load_checkpoint_keys(settings: CheckpointSettings, security: SecuritySettings) -> list[SigningKey]:
    if settings.key_file is None:
        return load_signing_keys(security)  # production without a dedicated key: the token-signing keys
    if not security.production:
        generate_key_file(settings.key_file)  # development: made on first use, like the token key
    return load_key_file(settings.key_file)


@dataclass
class LatestCheckpoint:
    checkpoint: Checkpoint | None
    lines: int = 0
    bad_line: int | None = None  # first line that does not parse or whose signature does not verify
    reason: str = ""


class CheckpointStore:
    """The append-only checkpoint file (and, optionally, the log)."""

    def __init__(self, settings: CheckpointSettings, keys: list[SigningKey]) -> None:
        self.settings = settings
        self.keys = keys
        self._by_kid = {k.kid: k for k in keys}

    def sign(self, seq: int, digest: str) -> Checkpoint:
        key = self.keys[0]
        unsigned = Checkpoint(seq, digest, seq, ts_text(clock.now()), key.kid)
        return Checkpoint(**{**asdict(unsigned), "sig": _b64(key.private.sign(unsigned.signed_bytes()))})

    def append(self, checkpoint: Checkpoint) -> None:
        path = self.settings.file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, checkpoint.line())  # one write of one line: appends never interleave
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.settings.to_log:
            log.info("audit checkpoint %s", checkpoint.line().decode().strip())

    def check(self, raw: bytes) -> Checkpoint:
        """A line of the file as a checkpoint whose signature holds; ValueError otherwise."""
        if len(raw) > MAX_LINE:
            raise ValueError("line too long")
        doc = orjson.loads(raw)
        if not isinstance(doc, dict) or set(doc) != {*SIGNED, "sig"}:
            raise ValueError("not a checkpoint")
        checkpoint = Checkpoint(**doc)
        if not isinstance(checkpoint.seq, int) or not isinstance(checkpoint.hash, str):
            raise ValueError("not a checkpoint")
        key = self._by_kid.get(str(checkpoint.kid))
        if key is None:
            raise ValueError(f"signed with an unknown key {str(checkpoint.kid)[:32]!r}")
        try:
            key.public.verify(_unb64(str(checkpoint.sig)), checkpoint.signed_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise ValueError("the signature does not verify") from exc
        return checkpoint

    def latest(self) -> LatestCheckpoint:
        """The newest checkpoint (highest seq) whose signature holds, and the first bad line if any."""
        path = self.settings.file
        if not path.exists():
            return LatestCheckpoint(None)
        result = LatestCheckpoint(None)
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if not raw.strip():
                continue
            result.lines += 1
            try:
                checkpoint = self.check(raw)
            except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
                if result.bad_line is None:
                    result.bad_line, result.reason = number, str(exc)
                continue
            if result.checkpoint is None or checkpoint.seq >= result.checkpoint.seq:
                result.checkpoint = checkpoint
        return result


async def read_head(engine: AsyncEngine) -> tuple[int, str] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1))).first()
    return (int(row[0]), str(row[1])) if row is not None else None


async def write_checkpoint(engine: AsyncEngine, store: CheckpointStore,
                           last: Checkpoint | None = None) -> Checkpoint | None:
    """Sign and append the current head; None when it has not moved since `last` or is empty."""
    head = await read_head(engine)
    if head is None or head[0] == 0 or (last is not None and (last.seq, last.hash) == head):
        return None
    checkpoint = store.sign(*head)
    await asyncio.to_thread(store.append, checkpoint)
    return checkpoint


async def verify_anchored(audit: AuditLog, store: CheckpointStore) -> VerifyReport:
    """`AuditLog.verify` against the newest valid checkpoint; a forged checkpoint line is reported."""
    latest = await asyncio.to_thread(store.latest)
    anchor = (latest.checkpoint.seq, latest.checkpoint.hash) if latest.checkpoint is not None else None
    report = await audit.verify(anchor=anchor)
    report.checkpoint = anchor[0] if anchor is not None else None
    if report.ok and latest.bad_line is not None:
        return VerifyReport(False, report.checked, report.head_seq, "checkpoint", None,
                            f"line {latest.bad_line} of the checkpoint file is not a valid checkpoint "
                            f"({latest.reason})", report.checkpoint)
    return report


class Checkpointer:
    """The periodic writer of one process."""

    def __init__(self, engine: AsyncEngine, store: CheckpointStore) -> None:
        self.engine = engine
        self.store = store
        self.last: Checkpoint | None = None
        self._task: asyncio.Task[None] | None = None

    async def checkpoint(self) -> Checkpoint | None:
        written = await write_checkpoint(self.engine, self.store, self.last)
        if written is not None:
            self.last = written
        return written

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.store.settings.seconds)
            try:
                await asyncio.shield(self.checkpoint())  # a stop never cuts a line in half
            except Exception:
                log.exception("audit checkpoint failed")

    def start(self) -> None:
        if self.store.settings.seconds > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="audit-checkpoint")

    async def stop(self) -> None:
        """Stop the loop and write a last checkpoint (after the audit writer's final commit)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await self.checkpoint()
        except Exception:
            log.exception("audit checkpoint at stop failed")


def checkpoint_store(security: SecuritySettings) -> CheckpointStore:
    settings = CheckpointSettings.from_env(security)
    return CheckpointStore(settings, load_checkpoint_keys(settings, security))
