"""`cityos backup create | restore | inspect | prune | keygen`."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console

from cityos.config import Settings
from cityos.operations.backup import (
    BackupError,
    BackupKey,
    create_backup,
    inspect_backup,
    key_from_text,
    new_key_text,
    prune,
    redacted,
    restore_backup,
)

backup_app = typer.Typer(help="Encrypted backups of the database, and restores", no_args_is_help=True)
console = Console()


def _key(key_file: Path | None, key_id: str | None = None) -> BackupKey:
    """--key-file, else CITYOS_BACKUP_KEY, else the field-encryption key ring (its active key to seal,
    the backup's own key id to open)."""
    if key_file is not None:
        return key_from_text(key_file.read_text())
    if os.environ.get("CITYOS_BACKUP_KEY"):
        return key_from_text(os.environ["CITYOS_BACKUP_KEY"])
    from cityos.security.crypto import load_keyring
    from cityos.security.settings import SecuritySettings

    ring = load_keyring(SecuritySettings())
    kid = key_id or ring.active
    if kid not in ring.keys:
        raise BackupError(f"the data key {kid!r} is not in the key ring: give --key-file")
    alg, key = ring.keys[kid]
    if alg != "aes256gcm":
        raise BackupError(f"data key {kid!r} is {alg}; backups need an AES-256 key: give --key-file")
    return BackupKey(kid, key)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@backup_app.command("create")
def create(output: Path = typer.Option(Path("backups"), help="a directory, or a file name ending .cityos-backup"),
           key_file: Path | None = typer.Option(None, help="a file holding a 32-byte key in base64")) -> None:
    """Back up CITYOS_DATABASE_URL into an encrypted file."""
    settings = Settings()
    target = output
    if output.suffix != ".cityos-backup":
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = output / f"cityos-{stamp}.cityos-backup"
    try:
        info = create_backup(settings.database_url, target, _key(key_file))
    except (BackupError, OSError) as exc:
        raise _fail(exc) from exc
    console.print(f"backup of {redacted(settings.database_url)} written to {info.path} "
                  f"({info.header['bytes']:,} bytes of {info.header['kind']}, sha256 {info.header['sha256'][:16]}…)")


@backup_app.command("restore")
def restore(path: Path, key_file: Path | None = typer.Option(None),
            yes: bool = typer.Option(False, "--yes", help="replace the current database without asking")) -> None:
    """Replace CITYOS_DATABASE_URL's database with the backup's content."""
    settings = Settings()
    if not yes:
        typer.confirm(f"replace the database at {redacted(settings.database_url)}?", abort=True)
    try:
        header = inspect_backup(path).header
        info = restore_backup(path, settings.database_url, _key(key_file, header.get("keyId")))
    except (BackupError, OSError) as exc:
        raise _fail(exc) from exc
    console.print(f"restored {info.path} (made {info.created_at}) into {redacted(settings.database_url)}; "
                  "run `cityos db upgrade` if the code is newer, then `cityos audit verify`")


@backup_app.command("inspect")
def inspect(path: Path) -> None:
    """Print a backup's header (no key needed)."""
    try:
        console.print_json(data=inspect_backup(path).header)
    except (BackupError, OSError) as exc:
        raise _fail(exc) from exc


@backup_app.command("prune")
def prune_cmd(directory: Path, keep_daily: int = typer.Option(7), keep_weekly: int = typer.Option(5)) -> None:
    """Delete backups past the retention (the newest per day for N days, per week for M weeks)."""
    for path in prune(directory, keep_daily, keep_weekly):
        console.print(f"deleted {path}")


@backup_app.command("keygen")
def keygen(output: Path) -> None:
    """Write a new backup key (keep it away from the backups)."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_key_text() + "\n")
    console.print(f"backup key written to {output}")
