"""Web UI (NiceGUI): the operations cockpit and the services portal, mounted on the FastAPI app.

`mount(app)` mounts NiceGUI at `/` when `Settings().web_enabled` (CITYOS_WEB=1; `cityos serve` and
`cityos demo` set it). NiceGUI is process-global: `ui.run_with` runs once per process, so the API
tests (which build many apps) leave the UI off.

The pages never shadow the API: the NiceGUI mount is moved behind every other route when the app
starts (routes added after `mount` included), and paths under the API prefixes that no API route
matched get the API's ProblemDetails 404, not a NiceGUI page.

Every page talks to the platform through `cityos.web.auth.Session.api`: the app's own REST API,
in-process, with the signed-in user's bearer token, so the UI passes the same service-layer checks
as any integrator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from cityos.config import Settings
from cityos.core.keyfiles import create_once

log = logging.getLogger("cityos.web")

# Path prefixes that belong to the API: the UI never answers under them.
API_PREFIXES: tuple[str, ...] = ("/ngsi-ld", "/api", "/auth", "/open311", "/docs", "/redoc", "/openapi.json",
                                 "/health", "/ready", "/metrics", "/audit", "/.well-known", "/tiles", "/vendor",
                                 "/fhir")

_mounted: FastAPI | None = None


def _register_pages() -> None:
    """Import the page modules: `@ui.page` registers on import."""
    from cityos.web import (  # noqa: F401
        admin,
        auth,
        cockpit,
        commons,
        commons_community,
        commons_council,
        commons_staff,
        commons_waste,
        datapages,
        decision,
        enterprise,
        livelihood,
        mystery,
        portal,
        transit,
    )


def storage_secret() -> str:
    """CITYOS_WEB_STORAGE_SECRET, else a random secret kept in the data directory (created once, 0600)."""
    explicit = os.environ.get("CITYOS_WEB_STORAGE_SECRET")
    if explicit:
        return explicit
    return create_once(web_data_dir() / "storage-secret", lambda: secrets.token_urlsafe(48).encode()).decode().strip()


def web_data_dir() -> Path:
    """Where the UI keeps its session store and secret: `<CITYOS_DATA_DIR>/web` (0700)."""
    from cityos.security.settings import default_data_dir

    path = default_data_dir() / "web"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class _ApiGate:
    """In front of NiceGUI: a path under an API prefix that reached the UI mount is an unknown API path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and any(path == p or path.startswith(p + "/") for p in API_PREFIXES):
            body = orjson.dumps({"type": "ResourceNotFound", "title": "Resource not found", "detail": "Not Found"})
            kind = b"application/json"
            if path.startswith("/fhir/"):  # FHIR clients read errors as OperationOutcome
                body = orjson.dumps({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-found", "diagnostics": f"no FHIR endpoint at {path[:200]}"}]})
                kind = b"application/fhir+json"
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", kind),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _ui_last(app: FastAPI) -> None:
    """Move the NiceGUI mount behind every other route (it matches any path)."""
    from nicegui import core

    routes = app.router.routes
    mounts = [r for r in routes if isinstance(r, Mount) and (r.app is core.app or isinstance(r.app, _ApiGate))]
    for route in mounts:
        routes.remove(route)
        if not isinstance(route.app, _ApiGate):
            route.app = _ApiGate(route.app)
        routes.append(route)


def mount(app: FastAPI) -> None:
    """Mount the web UI on `app` (only when the settings enable it; tests of the APIs run without it)."""
    global _mounted
    if not Settings().web_enabled:
        return
    if _mounted is not None:
        # NiceGUI holds global state: a second app in one process gets no UI.
        log.warning("the web UI is already mounted on another app in this process; not mounting it again")
        return
    from nicegui import ui
    from nicegui.storage import Storage

    from cityos.web import auth

    _mount_map(app)
    Storage.path = web_data_dir() / "sessions"
    Storage.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    auth.bind_app(app)
    _register_pages()
    ui.run_with(app, title="CityOS 城市运行管理平台", favicon="🏙️", dark=True, language="zh-CN",
                storage_secret=storage_secret(), show_welcome_message=False, reconnect_timeout=10.0)
    _mounted = app
    _ui_last(app)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        _ui_last(app)  # routes added after mount() (e.g. /health) must still win over the UI
        basemap = _start_basemap_build()
        async with inner(application) as state:
            yield state
        if basemap is not None and not basemap.done():
            basemap.cancel()

    app.router.lifespan_context = lifespan


def _mount_map(app: FastAPI) -> None:
    """The base map's tile routes and the vendored MapLibre GL JS (served from its wheel, no CDN)."""
    from fastapi.staticfiles import StaticFiles

    from cityos.web import tiles

    app.include_router(tiles.router)
    app.mount("/vendor/maplibre", StaticFiles(directory=tiles.maplibre_assets()), name="vendor-maplibre")


def _start_basemap_build() -> asyncio.Future[Any] | None:
    """Build the base map's tiles in a thread at start (a few seconds, once per city seed and data dir)."""
    from cityos.web import tiles

    if tiles.map_source()["mode"] != "builtin" or tiles.basemap_path().exists():
        return None

    async def build() -> None:
        try:
            await tiles.build_in_background(delay=2.0)  # a child process, once the server is up
        except Exception:
            log.exception("building the base map failed; the tile route retries on first use")

    return asyncio.ensure_future(build())
