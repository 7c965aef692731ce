"""Fixtures for the 一网通办 core tests: a movable clock, upload storage in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from services_core_helpers import START, Clock

from cityos.core import clock


@pytest.fixture
def fake_clock() -> Iterator[Clock]:
    c = Clock(START)
    clock.set_clock(lambda: c.now)
    yield c
    clock.reset_clock()


@pytest.fixture
def desk(app: Any, client: httpx.AsyncClient, tmp_path: Path, fake_clock: Clock) -> Iterator[Any]:
    """The app's ServiceDesk with uploads stored under a temp dir (and the clock at START)."""
    service = app.state.services
    # The shared `client` fixture empties every table: forget what this process remembers of them.
    service._stored_specs.clear()
    service._uploads.clear()
    previous = service.settings.upload_dir
    service.settings.upload_dir = tmp_path / "uploads"
    yield service
    service.settings.upload_dir = previous


