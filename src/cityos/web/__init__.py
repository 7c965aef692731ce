"""Web UI (NiceGUI): the operations cockpit and the services portal, mounted on the FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    """Mount the web UI on `app` (only when the settings enable it; tests of the APIs run without it)."""
    return None
