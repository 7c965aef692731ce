"""Files a development deployment generates once and every process then shares (signing keys, secrets).

Several processes start together (`cityos serve --workers N`, a test's brokers, an ingest worker beside
an API worker), so creating such a file must be safe against a race: a reader must never see it half
written, and two processes must never each keep a key of their own (data encrypted with a key the other
processes never saw is lost). The content is written aside under a temporary name, then linked into
place: `link` fails if the name exists, so the first process wins and every other one reads the winner's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _written_aside(path: Path, content: bytes) -> str:
    """A new private file (mode 0600, from mkstemp) beside `path`, holding `content` on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(aside)
        raise
    return aside


def create_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """The content of `path`; if it does not exist yet, it is created (mode 0600) with `make()`."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = _written_aside(path, make())
    try:
        with contextlib.suppress(FileExistsError):  # another process linked its own first: use that one
            os.link(aside, path)
    finally:
        os.unlink(aside)
    return path.read_bytes()


def replace_private(path: Path, content: bytes) -> None:
    """Replace `path` (a key ring being rotated) atomically: readers see the old file or the new one."""
    os.replace(_written_aside(path, content), path)
