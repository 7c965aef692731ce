"""Fixtures for the security tests (defined in sec_harness)."""

from sec_harness import now, sec

__all__ = ["now", "sec"]
