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
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cityos import web
from cityos.config import Settings
from cityos.core import gctuning
from cityos.core.bus_models import bus_outbox
from cityos.core.db import create_engine
from cityos.core.errors import BadRequestData, InternalError, ProblemError
from cityos.core.indicators import IndicatorSource
from cityos.core.jetstream import JetStreamBus, bus_from_url
from cityos.core.limits import RequestLimits
from cityos.core.metrics import HttpMetrics, StateGauges, instrument_engine
from cityos.core.outbound import Outbound
from cityos.core.requestid import RequestIdMiddleware, current_request_id
from cityos.data import api as data_api
from cityos.evaluation import api as evaluation_api
from cityos.hub import api as hub_api
from cityos.hub import events_out
from cityos.hub.jsonld import ContextLimits, ContextResolver, ContextStore
from cityos.hub.paths import NgsiLdPaths
from cityos.hub.paths import fallback_router as ngsi_ld_fallback
from cityos.hub.registrations import api as registrations_api
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
from cityos.iot.models import event_outbox as iot_event_outbox
from cityos.livelihood import api as livelihood_api
from cityos.livelihood.appointments import api as appointments_api
from cityos.livelihood.community import api as community_api
from cityos.livelihood.council import api as council_api
from cityos.livelihood.hall import api as hall_api
from cityos.livelihood.transparency import api as transparency_api
from cityos.livelihood.waste import api as waste_api
from cityos.mobility import api as mobility_api
from cityos.ops.environment import api as environment_api
from cityos.ops.incidents import api as incidents_api
from cityos.ops.open311 import api as open311_api
from cityos.ops.rules import api as rules_api
from cityos.security import api as security_api
from cityos.services import api as services_api
from cityos.services.licences import api as licences_api
from cityos.services.notify import api as notify_api
from cityos.services.ratings import api as ratings_api
from cityos.services.registration import api as registration_api
from cityos.traffic import api as traffic_api
from cityos.traffic.congestion import api as congestion_api
from cityos.traffic.parking import api as parking_api

log = logging.getLogger("cityos")

# The domains above hub and security. Each module offers `routers` and `start(app) -> stop`; they
# start in this order (after the hub, IoT and security) and stop in reverse.
DOMAINS: tuple[Any, ...] = (rules_api, incidents_api, open311_api, environment_api,
                            notify_api, registration_api, licences_api, ratings_api, services_api, mobility_api,
                            evaluation_api, livelihood_api, appointments_api, hall_api, waste_api, council_api,
                            community_api, transparency_api, data_api, traffic_api, parking_api,
                            congestion_api)


def indicator_sources() -> dict[str, IndicatorSource]:
    """Every domain's KPI sources (each over its own tables) for the evaluation domain."""
    from cityos.hub.indicators import SOURCES as hub_sources
    from cityos.iot.indicators import SOURCES as iot_sources
    from cityos.livelihood.hall.indicators import SOURCES as hall_sources
    from cityos.livelihood.indicators import SOURCES as livelihood_sources
    from cityos.livelihood.waste.indicators import SOURCES as waste_sources
    from cityos.ops.incidents.indicators import SOURCES as incident_sources
    from cityos.security.indicators import SOURCES as security_sources
    from cityos.services.indicators import SOURCES as services_sources

    return {**hub_sources, **iot_sources, **incident_sources, **security_sources, **services_sources,
            **hall_sources, **waste_sources, **livelihood_sources}


def install_metrics(app: FastAPI, engine: Any) -> None:
    """Time the database's statements and collect each domain's `/metrics` probe (over its own tables)."""
    from cityos.hub.metrics import HUB_PROBE
    from cityos.iot.metrics import IOT_PROBE, watch_ingest
    from cityos.ops.incidents.metrics import INCIDENT_PROBE
    from cityos.security.metrics import SECURITY_PROBE
    from cityos.services.metrics import SERVICES_PROBE

    instrument_engine(engine)
    # MQTT and JetStream workers alike (the JetStream ones were not counted in cityos_ingest_*).
    watch_ingest([*getattr(app.state, "iot_workers", []), *getattr(app.state, "iot_nats_workers", [])])
    app.state.metric_probes = [HUB_PROBE, IOT_PROBE, SECURITY_PROBE, INCIDENT_PROBE, SERVICES_PROBE]
    app.state.metric_gauges = StateGauges(app.state.metric_probes)


def problem_response(error: ProblemError) -> Response:
    body = error.to_problem()
    request_id = current_request_id()
    if request_id:
        body.setdefault("requestId", request_id)  # quoted by a caller, it finds the log lines and audit rows
    return Response(orjson.dumps(body), status_code=error.status, media_type="application/json",
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


FHIR_PREFIX = "/fhir/"


def error_response(request: Request, error: ProblemError) -> Response:
    """ProblemDetails, except under /fhir/: FHIR clients read every error there as an OperationOutcome
    (sign-in refused, access denied and unknown paths included, not only the handlers' own errors)."""
    if request.url.path.startswith(FHIR_PREFIX):
        from cityos.livelihood.appointments.fhir import FHIR_JSON, operation_outcome

        return Response(orjson.dumps(operation_outcome(error)), status_code=error.status, media_type=FHIR_JSON,
                        headers=error.headers or None)
    return problem_response(error)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: ProblemError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        fields = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_response(request, BadRequestData(fields or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        error_type, title = _HTTP_PROBLEMS.get(exc.status_code, ("BadRequestData", "Bad request"))
        error = ProblemError(str(exc.detail))
        error.status, error.error_type, error.title = exc.status_code, error_type, title
        return error_response(request, error)

    @app.exception_handler(DBAPIError)
    async def on_database_error(request: Request, exc: DBAPIError) -> Response:
        # A value the database cannot hold (an integer past its column's range, a NUL in text, a date out
        # of range: SQLSTATE class 22, "data exception") that validation let through is the caller's bad
        # input, not a crash. PostgreSQL refuses such values where SQLite stores them.
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
        if isinstance(exc, DataError) or sqlstate.startswith("22"):
            log.warning("value refused by the database (%s): %s", sqlstate, str(exc.orig)[:300])
            return problem_response(BadRequestData("a value in the request cannot be stored (out of range "
                                                   "or containing characters that are not allowed)"))
        return await on_crash(request, exc)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        # Never hand a stack trace to a caller; the log has it.
        log.exception("unhandled error", exc_info=exc)
        return error_response(request, InternalError("an internal error occurred; it has been logged"))


async def allow_scrape(request: Request) -> None:
    """A Prometheus server presents `CITYOS_METRICS_TOKEN`; anyone else needs `platform.monitor`."""
    import hmac
    import os

    from cityos.security.api import current_principal, enforce
    from cityos.security.policy import Resource

    expected = os.environ.get("CITYOS_METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if expected and hmac.compare_digest(header.encode(), f"Bearer {expected}".encode()):
        return
    principal = await current_principal(request)
    await enforce(request, principal, "platform.monitor", Resource("platform", principal.tenant if principal else ""))


def install_operations_routes(app: FastAPI) -> None:
    """`/health` (the process answers), `/ready` (it can serve: database, schema, broker) and `/metrics`."""
    from cityos.core import readiness
    from cityos.core.metrics import render

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready(request: Request) -> Response:
        report = await readiness.check(request.app)
        return Response(orjson.dumps(report), status_code=200 if report["ready"] else 503,
                        media_type="application/json")

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        """Prometheus exposition. Scraped with `CITYOS_METRICS_TOKEN` as a bearer token, or by a
        signed-in principal allowed `platform.monitor`."""
        await allow_scrape(request)
        body, media_type = await render(request.app.state.engine, request.app.state.metric_probes,
                                        request.app.state.metric_gauges)
        return Response(body, media_type=media_type)


def create_app(settings: Settings | None = None, **overrides: Any) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        bus = bus_from_url(settings.events_url)
        store = HubStore(engine)
        # The one way out for caller-named URLs (@contexts, subscription endpoints, webhooks, OIDC).
        outbound = Outbound.from_settings(settings.outbound_allow, settings.outbound_timeout,
                                          max_redirects=settings.outbound_max_redirects)
        contexts = ContextStore(settings.context_fetch_timeout, settings.context_cache_seconds, outbound,
                                ContextLimits(settings.context_max_bytes, settings.context_max_depth,
                                              settings.context_cache_entries, settings.context_cache_bytes))
        service = HubService(store, bus)
        events_out.install(bus, service)
        if isinstance(bus, JetStreamBus):  # relays the outboxes written in the changes' transactions
            bus.relay_from(store.write, [bus_outbox, iot_event_outbox])
        app.state.settings = settings
        app.state.outbound = outbound
        app.state.engine = engine
        app.state.write_lock = store.write_lock  # one SQLite writer per process: every domain shares it
        app.state.bus = bus
        app.state.hub = hub_api.Hub(settings, service, ContextResolver(contexts), contexts)
        stop_subscriptions = await start_subscriptions(app)
        stop_registrations = await registrations_api.start(app)
        app.state.temporal = TemporalService(store, max_instances_from_env())
        service.listeners.append(app.state.temporal.remember_deleted)
        stop_retention = start_retention(app)
        stop_iot = await start_iot(app)
        # Security services (tokens, audit, approvals); on SQLite the audit log shares the hub's writer lock.
        stop_security = await security_api.start_security(app, write_lock=store.write_lock)
        app.state.indicator_sources = indicator_sources()
        stop_domains = [await domain.start(app) for domain in DOMAINS]
        install_metrics(app, engine)
        await bus.start()  # after every domain subscribed: their groups' consumers start here
        gctuning.tune_after_startup()  # serve/demo only (CITYOS_GC_TUNE): after start-up built its objects
        try:
            yield
        finally:
            await bus.close()
            for stop_domain in reversed(stop_domains):
                await stop_domain()
            await stop_security()
            await stop_iot()
            await stop_retention()
            await stop_registrations()
            await stop_subscriptions()
            await engine.dispose()

    # FastAPIOffline: /docs and /redoc from assets in the wheel, no CDN (a city network may have no Internet).
    app = FastAPIOffline(title="CityOS", version="0.1.0", lifespan=lifespan,
                  description="CityOS smart-city platform: NGSI-LD context broker (ETSI GS CIM 009) and domains.",
                  **overrides)
    install_error_handlers(app)
    install_input_guard(app)
    app.add_middleware(HttpMetrics)
    # A body too large or too slow is cut off before any route reads it.
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes,
                       max_anon_body_bytes=settings.max_anon_body_bytes,
                       body_idle_timeout=settings.body_idle_timeout, body_timeout=settings.body_timeout)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, errors of the guards too, has its id
    app.include_router(hub_api.router)
    app.include_router(subscriptions_api.router)
    app.include_router(registrations_api.router)
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

    install_operations_routes(app)
    return app
