"""Fixtures of the cockpit's browser tests (defined in `cockpit_harness`)."""

from __future__ import annotations

import pytest
from cockpit_harness import Server, browser, server
from cockpit_seed import Seeded, seed_city

__all__ = ["browser", "seeded", "server"]


@pytest.fixture(scope="session")
def seeded(server: Server) -> Seeded:
    """The simulated city's districts and devices, seeded once for every browser test of the session."""
    return seed_city(server)
