"""Prometheus metrics of the platform itself, served at `/metrics` (prometheus-client).

Three kinds of figures:

- **counters and histograms kept in process**: HTTP requests per route template (rate, errors,
  latency), database statement time, ingest batches, rule evaluation time. Each process counts its
  own; with several worker processes set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
  multi-process mode) so one scrape sums them.
- **database pool use**, read from the SQLAlchemy pool at scrape time.
- **state read from the database at scrape time** (outbox depths, open incidents, SLA breaches,
  dead letters, workflow backlog, login failures): the source of truth is shared by every process,
  so these are the same whichever process is scraped. Each domain declares its own probe
  (`MetricProbe`) over its own tables; `cityos.app` collects them, so this module knows no domain.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# Buckets from 1 ms to 10 s: an API call, a statement and a rule evaluation all fall inside.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter("cityos_http_requests_total", "HTTP requests by route template, method and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("cityos_http_request_duration_seconds", "HTTP request latency by route template",
                         ["method", "route"], buckets=LATENCY_BUCKETS)
HTTP_IN_FLIGHT = Gauge("cityos_http_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum")
DB_STATEMENT = Histogram("cityos_db_statement_duration_seconds", "Database statement execution time",
                         ["dialect"], buckets=LATENCY_BUCKETS)
INGEST_READINGS = Counter("cityos_ingest_readings_total", "Device readings committed by ingest workers")
INGEST_BATCHES = Counter("cityos_ingest_batches_total", "Ingest batches committed")
INGEST_DEAD_LETTERS = Counter("cityos_ingest_dead_letters_total", "Device messages set aside as dead letters")
EVENT_DEAD_LETTERS = Counter("cityos_event_dead_letters_total",
                             "Domain events set aside after their handlers failed every attempt", ["consumer"])
RULE_EVALUATION = Histogram("cityos_rule_evaluation_duration_seconds",
                            "Time to evaluate the alarm rules for one hub change", buckets=LATENCY_BUCKETS)


@dataclass(frozen=True)
class Sample:
    """One value of a gauge read from the database at scrape time (a family its probe declared)."""

    name: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A gauge a probe reports: declared up front, so it is exposed (HELP and TYPE) even with no samples."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricProbe:
    """A domain's figures: the gauges it reports, and how to read them from its own tables."""

    families: tuple[Family, ...]
    read: Callable[[AsyncConnection], Awaitable[Iterable[Sample]]]


def age_seconds(moment: datetime | None, now: datetime | None = None) -> float:
    """Seconds since `moment` (SQLite hands timestamps back without their zone: they are stored in UTC)."""
    if moment is None:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


OUTBOX_DEPTH = Family("cityos_outbox_depth", "Rows waiting in an outbox", ("outbox", "state"))
POOL_FAMILIES = (Family("cityos_db_pool_size", "Connections the database pool keeps"),
                 Family("cityos_db_pool_checked_out", "Pool connections in use"),
                 Family("cityos_db_pool_overflow", "Connections opened beyond the pool"))


class StateGauges:
    """Gauges whose values are read from the database when scraped (one registry per app)."""

    def __init__(self, probes: Iterable[MetricProbe]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauges: dict[str, Gauge] = {}
        for family in (*POOL_FAMILIES, *(f for probe in probes for f in probe.families)):
            if family.name not in self._gauges:
                self._gauges[family.name] = Gauge(family.name, family.help, list(family.labels),
                                                  registry=self.registry)

    def set(self, sample: Sample) -> None:
        gauge = self._gauges[sample.name]  # a probe reporting a family it did not declare is a bug
        (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)

    def clear(self) -> None:
        """Forget the label sets of the last scrape, so a category that emptied does not linger."""
        for gauge in self._gauges.values():
            gauge.clear()


def pool_samples(engine: AsyncEngine) -> list[Sample]:
    pool: Any = engine.sync_engine.pool
    samples: list[Sample] = []
    for name, attr in (("cityos_db_pool_size", "size"), ("cityos_db_pool_checked_out", "checkedout"),
                       ("cityos_db_pool_overflow", "overflow")):
        reader = getattr(pool, attr, None)
        if callable(reader):
            samples.append(Sample(name, float(reader())))
    return samples


def instrument_engine(engine: AsyncEngine) -> None:
    """Time every statement (SQLAlchemy cursor events on the engine's synchronous core)."""
    sync_engine = engine.sync_engine
    if getattr(sync_engine, "_cityos_timed", False):
        return
    dialect = sync_engine.dialect.name
    histogram = DB_STATEMENT.labels(dialect=dialect)

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _started(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: Any) -> None:
        conn.info.setdefault("cityos_started", []).append(time.perf_counter())

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _finished(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: Any) -> None:
        started = conn.info.get("cityos_started")
        if started:
            histogram.observe(time.perf_counter() - started.pop())

    sync_engine._cityos_timed = True  # type: ignore[attr-defined]


class HttpMetrics:
    """Plain ASGI middleware: requests, errors and latency per route *template* (never the raw path,
    whose entity ids would make the label set unbounded)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        HTTP_IN_FLIGHT.inc()

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or _unrouted(scope.get("path", ""))
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)


def _unrouted(path: str) -> str:
    """A label for requests no API route matched: the UI's pages and static files, or nothing."""
    for prefix in ("/_nicegui", "/cockpit", "/portal", "/workbench"):
        if path.startswith(prefix):
            return prefix + "/*"
    return "<unmatched>"


def process_registry() -> CollectorRegistry:
    """The in-process metrics: the default registry, or the sum over worker processes in multi-process mode."""
    directory = multiprocess_dir()
    if directory is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


async def render(engine: AsyncEngine, probes: Iterable[MetricProbe], gauges: StateGauges) -> tuple[bytes, str]:
    """The exposition text of one scrape: in-process metrics, then pool and database state."""
    gauges.clear()
    for sample in pool_samples(engine):
        gauges.set(sample)
    async with engine.connect() as conn:
        for probe in probes:
            try:
                for sample in await probe.read(conn):
                    gauges.set(sample)
            except Exception:  # one broken probe must not hide the others' figures
                log.exception("metrics probe %s failed", getattr(probe.read, "__qualname__", probe))
                await conn.rollback()
    body = generate_latest(process_registry()) + generate_latest(gauges.registry)
    return body, CONTENT_TYPE_LATEST
