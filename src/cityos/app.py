"""Assembles the FastAPI application from the domains' routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cityos import web
from cityos.config import Settings
from cityos.core.db import create_engine
from cityos.core.errors import BadRequestData, InternalError, ProblemError
from cityos.core.events import EventBus
from cityos.hub import api as hub_api
from cityos.hub.jsonld import ContextResolver, ContextStore
from cityos.hub.paths import NgsiLdPaths
from cityos.hub.paths import fallback_router as ngsi_ld_fallback
from cityos.hub.service import HubService
from cityos.hub.store import HubStore
from cityos.hub.subscriptions import api as subscriptions_api
from cityos.hub.subscriptions.worker import start_subscriptions
from cityos.hub.temporal import api as temporal_api
from cityos.hub.temporal import query as temporal_query
from cityos.hub.temporal.retention import start_retention
from cityos.hub.temporal.service import TemporalService, max_instances_from_env
from cityos.iot import api as iot_api
from cityos.iot.ingest import start_iot
from cityos.ops.environment import api as environment_api
from cityos.ops.incidents import api as incidents_api
from cityos.ops.open311 import api as open311_api
from cityos.ops.rules import api as rules_api
from cityos.security import api as security_api
from cityos.services import api as services_api
from cityos.services.licences import api as licences_api
from cityos.services.notify import api as notify_api
from cityos.services.ratings import api as ratings_api

log = logging.getLogger("cityos")

# The domains above hub and security. Each module offers `routers` and `start(app) -> stop`; they
# start in this order (after the hub, IoT and security) and stop in reverse.
DOMAINS: tuple[Any, ...] = (rules_api, incidents_api, open311_api, environment_api,
                            notify_api, licences_api, ratings_api, services_api)


def problem_response(error: ProblemError) -> Response:
    return Response(orjson.dumps(error.to_problem()), status_code=error.status, media_type="application/json",
                    headers=error.headers or None)


_HTTP_PROBLEMS: dict[int, tuple[str, str]] = {
    404: ("ResourceNotFound", "Resource not found"),
    405: ("OperationNotSupported", "Method not allowed"),
}


class RefuseNulInUrl:
    """Refuse NUL characters in the URL up front: PostgreSQL cannot store them in text, so they
    would otherwise surface deep in a query as a database error.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs about a tenth of a small request.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ("\x00" in scope.get("path", "") or
                                        b"%00" in scope.get("query_string", b"") or
                                        b"\x00" in scope.get("query_string", b"")):
            await problem_response(BadRequestData("NUL characters are not allowed in the URL"))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_input_guard(app: FastAPI) -> None:
    app.add_middleware(NgsiLdPaths)
    app.add_middleware(RefuseNulInUrl)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def on_problem(_request: Request, exc: ProblemError) -> Response:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, exc: RequestValidationError) -> Response:
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return problem_response(BadRequestData(fields or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException) -> Response:
        error_type, title = _HTTP_PROBLEMS.get(exc.status_code, ("BadRequestData", "Bad request"))
        error = ProblemError(str(exc.detail))
        error.status, error.error_type, error.title = exc.status_code, error_type, title
        return problem_response(error)

    @app.exception_handler(Exception)
    async def on_crash(_request: Request, exc: Exception) -> Response:
        # Never hand a stack trace to a caller; the log has it.
        log.exception("unhandled error", exc_info=exc)
        return problem_response(InternalError("an internal error occurred; it has been logged"))


def create_app(settings: Settings | None = None, **overrides: Any) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        bus = EventBus()
        store = HubStore(engine)
        contexts = ContextStore(settings.context_fetch_timeout, settings.context_cache_seconds)
        service = HubService(store, bus)
        app.state.settings = settings
        app.state.engine = engine
        app.state.bus = bus
        app.state.hub = hub_api.Hub(settings, service, ContextResolver(contexts), contexts)
        stop_subscriptions = await start_subscriptions(app)
        app.state.temporal = TemporalService(store, max_instances_from_env())
        service.listeners.append(app.state.temporal.remember_deleted)
        stop_retention = start_retention(app)
        stop_iot = await start_iot(app)
        # Security services (tokens, audit, approvals); on SQLite the audit log shares the hub's writer lock.
        stop_security = await security_api.start_security(app, write_lock=store._sqlite_write_lock)
        stop_domains = [await domain.start(app) for domain in DOMAINS]
        try:
            yield
        finally:
            for stop_domain in reversed(stop_domains):
                await stop_domain()
            await stop_security()
            await stop_iot()
            await stop_retention()
            await stop_subscriptions()
            await engine.dispose()

    app = FastAPI(title="CityOS", version="0.1.0", lifespan=lifespan,
                  description="CityOS smart-city platform: NGSI-LD context broker (ETSI GS CIM 009) and domains.",
                  **overrides)
    install_error_handlers(app)
    install_input_guard(app)
    app.include_router(hub_api.router)
    app.include_router(subscriptions_api.router)
    app.include_router(temporal_api.router)
    app.include_router(temporal_api.admin_router)
    app.include_router(temporal_query.router)
    app.include_router(ngsi_ld_fallback)  # after every NGSI-LD router: see cityos.hub.paths
    app.include_router(iot_api.router)
    app.include_router(iot_api.device_router)
    app.include_router(security_api.router)
    for domain in DOMAINS:
        for router in domain.routers:
            app.include_router(router)
    web.mount(app)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
