"""Fixtures of the portal's browser test (defined in `portal_harness`)."""

from __future__ import annotations

from portal_harness import chromium, portal_installation, portal_server

__all__ = ["chromium", "portal_installation", "portal_server"]
