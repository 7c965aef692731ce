"""Issue 12, "Also": DeprecationWarnings raised by cityos's own code fail the tests (pyproject's
filterwarnings); third-party ones are shown, not hidden, and not fatal."""

from __future__ import annotations

import warnings

import pytest


def test_a_deprecation_in_cityos_code_is_an_error() -> None:
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "audit.py", 1, module="cityos.security.audit")


def test_a_third_party_deprecation_is_shown_but_not_fatal() -> None:
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "lib.py", 1, module="somelibrary.module")
