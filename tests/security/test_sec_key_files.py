"""Development key files are created once, whole, and shared by processes that start together.

Processes race for real here (a pool of interpreters released by one barrier): each generates the
token-signing key, the field-encryption key ring, the web storage secret and the e-licence key in the
same empty data directory. They must all end up with the same keys, and never read a half-written file.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

RACERS = 4


def _load_everything(data_dir: str, barrier: Any) -> dict[str, str]:
    os.environ["CITYOS_DATA_DIR"] = data_dir
    from cityos.security.crypto import load_keyring
    from cityos.security.settings import SecuritySettings
    from cityos.security.tokens import load_signing_keys
    from cityos.services.licences.keys import key_file_path
    from cityos.web import storage_secret

    settings = SecuritySettings()
    barrier.wait()
    signing = load_signing_keys(settings)[0]
    ring = load_keyring(settings)
    return {"jwt": signing.kid, "data": ring.keys[ring.active][1].hex(), "web": storage_secret(),
            "licence": key_file_path(settings).read_text()}


def test_processes_starting_together_agree_on_every_generated_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(RACERS)
        with context.Pool(RACERS) as pool:
            results = pool.starmap(_load_everything, [(str(data_dir), barrier)] * RACERS)
    assert all(result == results[0] for result in results), results
    assert all(results[0].values())
    made = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file()}
    assert made == {"jwt-signing.pem", "data-keys.json", "web/storage-secret", "licence-signing.pem"}
    for name in made:  # nothing written aside is left behind, and every key is the owner's only
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name


def test_a_key_file_that_exists_is_kept_as_it_is(tmp_path: Path) -> None:
    from cityos.core.keyfiles import create_once

    path = tmp_path / "secret"
    assert create_once(path, lambda: b"first") == b"first"
    assert create_once(path, lambda: b"second") == b"first"
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_a_failing_generator_leaves_no_file(tmp_path: Path) -> None:
    from cityos.core.keyfiles import create_once

    def broken() -> bytes:
        raise RuntimeError("no entropy")

    with pytest.raises(RuntimeError):
        create_once(tmp_path / "secret", broken)
    assert list(tmp_path.iterdir()) == []
