"""Fixtures for the IoT tests: the running app's IotService and a few helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cityos.core import clock


@pytest.fixture
def iot(app: Any, client: Any) -> Any:  # `client` cleans the database first
    return app.state.iot


@pytest.fixture
def fixed_clock() -> Iterator[list[Any]]:
    """A movable clock: now[0] is the time; tests assign to it."""
    from datetime import UTC, datetime

    now = [datetime(2026, 11, 21, 8, 0, tzinfo=UTC)]
    clock.set_clock(lambda: now[0])
    try:
        yield now
    finally:
        clock.reset_clock()
