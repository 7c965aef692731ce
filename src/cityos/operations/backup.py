"""Encrypted backups of the platform's database, and their restore (`cityos backup …`).

- **SQLite**: SQLite's online backup API (`sqlite3.Connection.backup`) copies a consistent snapshot
  while the platform keeps writing.
- **PostgreSQL**: `pg_dump --format=custom` (a consistent snapshot of one database) and `pg_restore`
  into an emptied or newly created database. This suits small and medium sites; a large city runs
  `pg_basebackup` with WAL archiving for point-in-time recovery instead (deploy/backup.md).

A backup file is sealed with AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar, Rogaway,
Vizár 2015): the plaintext is cut into chunks, each sealed with a nonce made of a random prefix, the
chunk's counter and a last-chunk flag, and the file's header as associated data. So a file can be
large without being held in memory, and a chunk cannot be altered, reordered, dropped or cut off
without the restore refusing it. The key is the active field-encryption data key (`cityos keys`),
or a 32-byte key of its own (`--key-file`, or CITYOS_BACKUP_KEY in base64) for backups kept apart
from the data keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"CITYOS-BACKUP-1\n"
CHUNK_BYTES = 4 * 1024 * 1024
NONCE_PREFIX_BYTES = 7  # + 4 bytes of counter + 1 byte of last-chunk flag = AES-GCM's 12-byte nonce
MAX_HEADER_BYTES = 64 * 1024


class BackupError(Exception):
    """A backup that cannot be made, read or restored; the message says why, for the operator."""


@dataclass(frozen=True)
class BackupKey:
    key_id: str  # "file" for a key of its own, else the data key's id
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise BackupError("a backup key is 32 bytes (AES-256)")


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    header: dict[str, Any]

    @property
    def created_at(self) -> str:
        return str(self.header.get("createdAt", ""))


def key_from_text(text: str) -> BackupKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise BackupError("the backup key must be 32 bytes in base64") from exc
    return BackupKey("file", raw)


def new_key_text() -> str:
    return base64.b64encode(os.urandom(32)).decode()


# ---------------------------------------------------------------------- the sealed file format


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 2**32:
        raise BackupError("backup too large for one file")
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


def _chunks(source: IO[bytes]) -> Iterator[tuple[bytes, bool]]:
    """The source's chunks, each with whether it is the last (an empty source is one empty last chunk)."""
    current = source.read(CHUNK_BYTES)
    while True:
        following = source.read(CHUNK_BYTES)
        yield current, not following
        if not following:
            return
        current = following


def seal(source: IO[bytes], target: IO[bytes], key: BackupKey, header: dict[str, Any]) -> str:
    """Write `source` sealed to `target`; returns the plaintext's sha256 (also recorded in a trailer chunk)."""
    prefix = os.urandom(NONCE_PREFIX_BYTES)
    head = json.dumps({**header, "keyId": key.key_id, "noncePrefix": prefix.hex(), "chunkBytes": CHUNK_BYTES},
                      sort_keys=True).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise BackupError("backup header too large")
    target.write(MAGIC + struct.pack(">I", len(head)) + head)
    aead = AESGCM(key.key)
    digest = hashlib.sha256()
    for counter, (chunk, last) in enumerate(_chunks(source)):
        digest.update(chunk)
        sealed = aead.encrypt(_nonce(prefix, counter, last), chunk, head)
        target.write(struct.pack(">I", len(sealed)) + sealed)
    return digest.hexdigest()


def read_header(source: IO[bytes]) -> tuple[bytes, dict[str, Any]]:
    if source.read(len(MAGIC)) != MAGIC:
        raise BackupError("not a CityOS backup file")
    (length,) = struct.unpack(">I", source.read(4))
    if length > MAX_HEADER_BYTES:
        raise BackupError("corrupt backup header")
    head = source.read(length)
    try:
        return head, json.loads(head)
    except ValueError as exc:
        raise BackupError("corrupt backup header") from exc


def unseal(source: IO[bytes], target: IO[bytes], key: BackupKey) -> dict[str, Any]:
    """Decrypt a sealed file into `target`; refuses a wrong key, an altered, reordered or truncated file."""
    head, header = read_header(source)
    if header.get("keyId") != key.key_id:
        raise BackupError(f"this backup was sealed with key {header.get('keyId')!r}, not {key.key_id!r}")
    prefix = bytes.fromhex(header["noncePrefix"])
    aead = AESGCM(key.key)
    counter = 0
    while True:
        size_bytes = source.read(4)
        if len(size_bytes) < 4:
            raise BackupError("the backup file is truncated")
        (size,) = struct.unpack(">I", size_bytes)
        sealed = source.read(size)
        if len(sealed) != size:
            raise BackupError("the backup file is truncated")
        peek = source.read(1)
        last = not peek
        try:
            plain = aead.decrypt(_nonce(prefix, counter, last), sealed, head)
        except InvalidTag as exc:
            raise BackupError("the backup file was altered, truncated, or the key is wrong") from exc
        target.write(plain)
        if last:
            return header
        source.seek(-1, os.SEEK_CUR)
        counter += 1


# ---------------------------------------------------------------------- databases


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise BackupError("not a SQLite URL")
    return Path(url[len("sqlite:///"):])


def _libpq_url(url: str) -> str:
    """pg_dump wants a libpq URL: no SQLAlchemy driver suffix."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1).replace("postgres://", "postgresql://", 1)


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment carrying it: a password on a command line is
    visible to every local user in the process list."""
    parts = urlsplit(url)
    if not parts.password:
        return url, {}
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), {"PGPASSWORD": parts.password}


def _run(args: list[str], what: str, url: str) -> None:
    """Run a PostgreSQL client program (fixed program, no shell) with `url` as its last argument."""
    bare, secret = _without_password(url)
    done = subprocess.run([*args, bare], capture_output=True, text=True, check=False,  # noqa: S603
                          env={**os.environ, **secret})
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip()[-1000:]}")


def _snapshot(database_url: str, into: Path) -> str:
    """A consistent copy of the database in `into`; returns its kind."""
    if database_url.startswith("sqlite:///"):
        source = sqlite3.connect(_sqlite_path(database_url))
        target = sqlite3.connect(into)
        try:
            source.backup(target)  # SQLite's online backup: consistent while others write
        finally:
            target.close()
            source.close()
        return "sqlite"
    if database_url.startswith(("postgresql", "postgres")):
        _run(["pg_dump", "--format=custom", "--no-owner", f"--file={into}", "--dbname"], "pg_dump",
             _libpq_url(database_url))
        return "pg_dump"
    raise BackupError("unsupported database URL")


def _alembic_revision(database_url: str, snapshot: Path, kind: str) -> str | None:
    if kind != "sqlite":
        return None
    conn = sqlite3.connect(snapshot)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return str(row[0]) if row else None


def create_backup(database_url: str, output: Path, key: BackupKey) -> BackupInfo:
    """Snapshot the database and seal it into `output` (written to a temporary name, then renamed)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cityos-backup-", dir=output.parent) as work:
        snapshot = Path(work) / "snapshot"
        kind = _snapshot(database_url, snapshot)
        header = {"format": 1, "kind": kind, "createdAt": datetime.now(UTC).isoformat(),
                  "database": redacted(database_url), "bytes": snapshot.stat().st_size,
                  "alembicRevision": _alembic_revision(database_url, snapshot, kind)}
        partial = Path(work) / "sealed"
        with snapshot.open("rb") as source, partial.open("wb") as target:
            digest = seal(source, target, key, header)
            target.flush()
            os.fsync(target.fileno())
        os.chmod(partial, 0o600)
        partial.replace(output)
    return BackupInfo(output, {**header, "sha256": digest})


def inspect_backup(path: Path) -> BackupInfo:
    with path.open("rb") as source:
        return BackupInfo(path, read_header(source)[1])


def restore_backup(path: Path, database_url: str, key: BackupKey) -> BackupInfo:
    """Restore `path` into the database at `database_url`, replacing what is there.

    The file is decrypted and checked completely before the database is touched."""
    with tempfile.TemporaryDirectory(prefix="cityos-restore-") as work:
        plain = Path(work) / "snapshot"
        with path.open("rb") as source, plain.open("wb") as target:
            header = unseal(source, target, key)
        kind = header.get("kind")
        if kind == "sqlite":
            if not database_url.startswith("sqlite:///"):
                raise BackupError("a SQLite backup restores into a SQLite database")
            _restore_sqlite(plain, _sqlite_path(database_url))
        elif kind == "pg_dump":
            if not database_url.startswith(("postgresql", "postgres")):
                raise BackupError("a pg_dump backup restores into PostgreSQL")
            _restore_postgres(plain, _libpq_url(database_url))
        else:
            raise BackupError(f"unknown backup kind {kind!r}")
    return BackupInfo(path, header)


def _restore_sqlite(snapshot: Path, target: Path) -> None:
    conn = sqlite3.connect(snapshot)
    try:
        if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise BackupError("the restored SQLite file fails its integrity check")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".restoring")
    shutil.copyfile(snapshot, staged)
    for suffix in ("-wal", "-shm"):  # a stale log of the old file must not be replayed over the new one
        Path(str(target) + suffix).unlink(missing_ok=True)
    staged.replace(target)


def _restore_postgres(dump: Path, url: str) -> None:
    name = _database_name(url)
    admin = _with_database(url, "postgres")
    if not name or '"' in name:
        raise BackupError("the database URL must name a database")
    # A fresh database each time: a restore over a live schema would mix old and new rows.
    _run(["psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
          f"--command=DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)", "--dbname"], "dropping the old database", admin)
    _run(["psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--command=CREATE DATABASE \"{name}\"",
          "--dbname"], "creating the database", admin)
    _run(["pg_restore", "--no-owner", "--exit-on-error", str(dump), "--dbname"], "pg_restore", url)


# ---------------------------------------------------------------------- retention


def prune(directory: Path, keep_daily: int, keep_weekly: int, now: datetime | None = None) -> list[Path]:
    """Delete backups beyond the retention: the newest of each of the last `keep_daily` days, and the
    newest of each of the last `keep_weekly` ISO weeks, are kept. Returns what was deleted."""
    found: list[tuple[datetime, Path]] = []
    for path in sorted(directory.glob("*.cityos-backup")):
        try:
            found.append((datetime.fromisoformat(inspect_backup(path).created_at), path))
        except (BackupError, ValueError, OSError):
            continue  # not ours to judge: leave it
    found.sort(reverse=True)
    keep: set[Path] = set()
    days: set[Any] = set()
    weeks: set[Any] = set()
    for created, path in found:
        day, week = created.date(), created.isocalendar()[:2]
        if day not in days and len(days) < keep_daily:
            days.add(day)
            keep.add(path)
        if week not in weeks and len(weeks) < keep_weekly:
            weeks.add(week)
            keep.add(path)
    deleted = [path for _created, path in found if path not in keep]
    for path in deleted:
        path.unlink()
    return deleted
