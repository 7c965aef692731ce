"""Shared by the traffic tests: the city clock held at the test module's `T0`, moved by the test."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from cityos.core import clock


@pytest.fixture
def moving_clock(request: pytest.FixtureRequest) -> Iterator[list[dt.datetime]]:
    """`now[0]` is the clock (starting at the module's `T0`); a test moves time by assigning to it."""
    now: list[dt.datetime] = [request.module.T0]
    clock.set_clock(lambda: now[0])
    yield now
    clock.reset_clock()
