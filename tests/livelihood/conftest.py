"""Livelihood tests: the domain's own schedule is off (tests settle and sweep on a moved clock)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from lh_support import NOW, Moving

from cityos.core import clock

os.environ.setdefault("CITYOS_LIVELIHOOD_INTERVAL_SECONDS", "0")


@pytest.fixture
def moving_clock() -> Iterator[Moving]:
    moving = Moving(NOW)
    clock.set_clock(lambda: moving.at)
    try:
        yield moving
    finally:
        clock.reset_clock()
