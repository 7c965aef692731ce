"""Fixtures of the cockpit's browser tests (defined in `cockpit_harness`)."""

from __future__ import annotations

from cockpit_harness import browser, server

__all__ = ["browser", "server"]
