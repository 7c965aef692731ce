"""`cityos simulate` and `cityos demo`: the simulator against a running platform, or the whole city in one command.

The demo runs in one process and one event loop: the embedded amqtt broker, the API (uvicorn,
in-process, with its MQTT ingest workers pointed at that broker) and the simulator. One process
means one Ctrl-C stops everything and nothing is left behind. `cityos demo` keeps its database
(SQLite, unless CITYOS_DATABASE_URL says otherwise) and its log under a data folder (`--data-dir`,
default the platform data path, e.g. ~/.local/share/cityos/demo) and bounds the demo tenant's
history to 24 h (`DemoOptions.retention_days`).

The console shows the live table and warnings of CityOS itself, one line each; everything else
(library messages, every traceback) goes to the log file the console names (`configure_logging`).
Among them the embedded broker's "Timeout waiting for PUBACK": amqtt gives a QoS 1 subscriber a
fixed 5 s to acknowledge, and the demo's ingest worker acknowledges only after its commit, so a
commit slower than 5 s (SQLite on a busy laptop) makes amqtt give up on that delivery; the
simulator's throttle (`max_backlog`) keeps such waits rare, and the readings' next delivery or the
gateway's next message carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import qrcode
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cityos.core import clock
from cityos.core.errors import AlreadyExists
from cityos.core.tasks import finish_within
from cityos.ops.rules.api import install_default_rules
from cityos.sim.platform import (
    EmbeddedBroker,
    PlatformClient,
    PlatformStats,
    embedded_command_sender,
    embedded_ingest_worker,
    free_port,
)
from cityos.sim.residents import run as simulated_residents
from cityos.sim.runner import MqttTransport, Runner, SimOptions, Simulation

log = logging.getLogger("cityos.sim")


class _OneLine(logging.Formatter):
    """A console line without the traceback: that is in the log file, which the line names."""

    def __init__(self, log_path: Path) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.log_path = log_path

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return f"{text} (details in {self.log_path})" if saved[0] or saved[2] else text


def configure_logging(log_path: Path, console_level: int = logging.WARNING) -> None:
    """Everything (INFO and up, with tracebacks) to `log_path`; CityOS's own warnings, one line each, to stderr.

    Libraries (amqtt, aiomqtt, paho, uvicorn, asyncio) write to the file only: the live table stays readable."""
    from logging.handlers import RotatingFileHandler

    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = RotatingFileHandler(log_path, maxBytes=20_000_000, backupCount=3, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    to_file.setLevel(logging.INFO)
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setLevel(console_level)
    to_console.addFilter(lambda record: record.name == "cityos" or record.name.startswith("cityos."))
    to_console.setFormatter(_OneLine(log_path))
    root.addHandler(to_file)
    root.addHandler(to_console)
    root.setLevel(logging.INFO)


def database_size(url: str) -> str:
    """The size of a SQLite database with its WAL ("1.2 GB"); "" for another database."""
    if not url.startswith("sqlite"):
        return ""
    path = Path(url.split("///", 1)[-1])
    total = float(sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()))
    for unit in ("B", "kB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    return ""


@dataclass
class Progress:
    """What the live view shows. Platform figures come from the platform, not from the simulator."""

    started: float = field(default_factory=time.monotonic)
    stored: int = 0  # readings the platform committed (its ingest workers' count)
    stored_rate: float = 0.0
    published_rate: float = 0.0
    platform: PlatformStats = field(default_factory=PlatformStats)
    _last: tuple[float, int, int] = (0.0, 0, 0)

    def update(self, published: int, stored: int | None) -> None:
        now = time.monotonic()
        t0, p0, s0 = self._last
        if stored is not None:
            self.stored = stored
        if t0:
            dt = max(1e-6, now - t0)
            self.published_rate = (published - p0) / dt
            self.stored_rate = (self.stored - s0) / dt
        self._last = (now, published, self.stored)


def _table(runner: Runner, progress: Progress, show_stored: bool) -> Table:
    stats = runner.stats()
    p = progress.platform
    table = Table(title="CityOS simulated city", show_header=False, box=None, padding=(0, 2))
    clock = stats.sim_time.strftime("%Y-%m-%d %H:%M:%S UTC")
    pace = "real time" if runner.caught_up else f"{runner.sim.options.speed:g}× (replaying up to now)"
    if runner.throttled:
        pace += ", held: ingestion is catching up"
    table.add_row("simulated time", f"{clock}  [{pace}]")
    table.add_row("scenario", runner.sim.scenario.name)
    table.add_row("published", f"{stats.published:,} readings  ({progress.published_rate:,.0f}/s), "
                               f"{stats.backfilled:,} backfilled, {stats.connections} MQTT connections")
    if show_stored:
        table.add_row("stored by the platform", f"{progress.stored:,} values  ({progress.stored_rate:,.0f}/s)")
    if p.ok:
        table.add_row("devices", f"{p.online:,} online of {p.devices:,}, {p.offline:,} offline, "
                                 f"{p.low_battery:,} low battery")
        table.add_row("dead letters", f"{p.dead_letters:,}")
    else:
        table.add_row("platform", "[yellow]not answering[/yellow]")
    return table


def _line(runner: Runner, progress: Progress) -> str:
    stats = runner.stats()
    p = progress.platform
    return (f"sim {stats.sim_time:%Y-%m-%d %H:%M} published={stats.published} stored={progress.stored} "
            f"values ({progress.stored_rate:.0f}/s) online={p.online}/{p.devices} dead_letters={p.dead_letters}")


async def _show(console: Console, runner: Runner, client: PlatformClient, progress: Progress,
                stored: Callable[[], int | None], stop: asyncio.Event) -> None:
    """Refresh the live view every second (a plain line every 10 s when stdout is not a terminal)."""
    show_stored = stored() is not None
    if console.is_terminal:
        with Live(_table(runner, progress, show_stored), console=console, auto_refresh=False) as live:
            while not stop.is_set():
                progress.platform = await client.stats()
                progress.update(runner.published, stored())
                live.update(_table(runner, progress, show_stored), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 10.0)
        progress.platform = await client.stats()
        progress.update(runner.published, stored())
        console.print(_line(runner, progress), highlight=False)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop`: shutdown is an orderly walk back, not a KeyboardInterrupt mid-write.

    SIGUSR1 prints what every thread and task is doing, for a demo that seems stuck.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _print_stacks)
    try:
        yield
    finally:
        for sig in (*signals, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


def _print_stacks() -> None:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def _within(seconds: float, what: str, step: Awaitable[Any]) -> None:
    """One shutdown step, given at most `seconds`: Ctrl-C must stop the demo even when a part hangs.

    A step that overruns is reported with every task's stack (taken before it is cancelled), then
    cancelled and left behind.
    """
    task = asyncio.ensure_future(step)
    if await finish_within({task}, seconds, f"{what} (stopping the rest anyway; every task's stack follows)",
                           _print_stacks):
        task.result()


def _mqtt_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


async def _run_simulator(console: Console, options: SimOptions, client: PlatformClient, mqtt_url: str,
                         stop: asyncio.Event, *, stored: Callable[[], int | None] = lambda: None,
                         committed: Callable[[], int] | None = None, max_backlog: int | None = None,
                         duration: float | None = None) -> Runner:
    sim = Simulation(options)
    n = await client.publish_city(sim.city)
    console.print(f"published the city to the hub: {len(sim.city.districts)} districts, {len(sim.city.roads)} roads, "
                  f"{len(sim.city.rivers)} rivers, {len(sim.city.pois)} points of interest ({n} entities)")
    began = time.monotonic()
    tokens = await client.provision(sim.deployment, sim.city)
    console.print(f"provisioned {len(sim.deployment.devices):,} devices behind {len(sim.deployment.gateways)} "
                  f"gateways, {len(sim.deployment.direct)} direct ({time.monotonic() - began:.1f} s)")
    host, port = _mqtt_address(mqtt_url)
    transport = MqttTransport(host, port)
    await transport.open({name: tokens[name] for name in sim.connections})
    runner = Runner(sim, transport)
    if committed is not None and max_backlog is not None:
        def behind() -> bool:
            # Hold the simulated clock while ingestion digests a backlog (messages the broker has
            # acknowledged but the platform has not committed), so a slow disk slows the city down
            # instead of filling the broker's memory.
            return transport.sent - committed() > max_backlog

        runner.throttle = behind
    progress = Progress()
    shown = asyncio.create_task(_show(console, runner, client, progress, stored, stop))
    try:
        await runner.run(stop, duration)
    finally:
        stop.set()
        log.info("stopping the simulator")
        await transport.drain(within=2.0)
        await transport.close()
        await _within(12, "the live view", shown)
        log.info("simulator stopped")
    return runner


async def simulate(options: SimOptions, api: str, mqtt_url: str, *, token: str | None = None,
                   client_id: str | None = None, client_secret: str | None = None,
                   duration: float | None = None, console: Console | None = None) -> int:
    """`cityos simulate`: provision through the API, publish over MQTT until Ctrl-C."""
    console = console or Console()
    stop = asyncio.Event()
    client = PlatformClient(api, token=token, client_id=client_id, client_secret=client_secret)
    try:
        with _stop_on_signals(stop):
            await client.wait_ready()
            await _run_simulator(console, options, client, mqtt_url, stop, duration=duration)
    finally:
        await client.close()
    console.print("simulator stopped")
    return 0


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    mqtt_port: int = 1883
    duration: float | None = None  # wall seconds, for tests; None runs until Ctrl-C
    # MQTT messages published but not yet committed before the clock is held. Small, because amqtt
    # drops a QoS 1 message its subscriber has not acknowledged within 5 s.
    max_backlog: int = 6
    # History kept for the demo tenant (the hub's retention policy for it); 0 leaves the policy alone.
    retention_days: int = 1
    log_path: Path | None = None  # named on the console when set (cityos demo sets it)
    # "sumo": the city's signals decided by the platform's control loop, SUMO as the street (sim/sumo_demo.py)
    traffic: str = "synthetic"
    traffic_dir: Path | None = None  # the SUMO network and demand files (default: a temporary folder)


class _IngestCounter:
    """What the platform's ingest worker has committed: MQTT messages (any outcome) and stored values."""

    def __init__(self) -> None:
        self.messages = 0
        self.stored = 0

    def on_commit(self, envelopes: list[Any], report: Any) -> None:
        self.messages += len(envelopes)
        self.stored += int(report.stored)


class _QuietServer:
    """uvicorn in-process without its own signal handling: the demo owns SIGINT and SIGTERM."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        # A request still open at Ctrl-C (a browser tab, a long provisioning call) gets 10 s, then the
        # server stops anyway: the demo must always stop when asked.
        from cityos.config import Settings
        from cityos.core.serving import uvicorn_options

        # proxy_headers=False: only CITYOS_TRUSTED_PROXIES decides whose X-Forwarded-For is believed.
        self.server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                            lifespan="on", timeout_graceful_shutdown=10, proxy_headers=False,
                                            **uvicorn_options(Settings())))
        self.task: asyncio.Task[None] | None = None
        self.where = f"{host}:{port}"

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when it cannot start (its port taken): an error of the demo's server
            # instead, so it cannot escape the event loop as an exit.
            raise RuntimeError(f"the API server could not start on {self.where}") from exc

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.task = asyncio.create_task(self._serve())
        try:
            while not self.server.started:
                if self.task.done():
                    self.task.result()
                    raise RuntimeError("the API server stopped during start-up")
                await asyncio.sleep(0.05)
            yield
        finally:
            self.server.should_exit = True
            # Open requests get 10 s (above); the app's own shutdown (workers, engines) gets the rest.
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await _within(15, "the API server", self.task)


async def demo(options: SimOptions, demo_options: DemoOptions, console: Console | None = None) -> int:
    """`cityos demo`: broker + API + ingestion + simulator, no external services."""
    from cityos.app import create_app
    from cityos.config import Settings
    from cityos.core import migrate

    console = console or Console()
    stop = asyncio.Event()
    mqtt_port = free_port(demo_options.mqtt_port, demo_options.host)
    api_port = free_port(demo_options.port, demo_options.host, taken={mqtt_port})
    mqtt_url = f"mqtt://{demo_options.host}:{mqtt_port}"
    api = f"http://{demo_options.host}:{api_port}"
    # The app reads these while starting. Its own ingest workers speak MQTT 5 with shared
    # subscriptions, which amqtt lacks, so the demo starts a 3.1.1 worker of its own (see platform.py).
    os.environ["CITYOS_MQTT_URL"] = mqtt_url
    # The token issuer, OIDC discovery and e-licence issuer name this port (unless CITYOS_PUBLIC_URL is set),
    # not the default 8000 the demo may not have got.
    previous_listen = os.environ.get("CITYOS_LISTEN_URL")
    os.environ["CITYOS_LISTEN_URL"] = api
    os.environ["CITYOS_INGEST_WORKERS"] = "0"
    # NB-IoT devices' CoAP API (ThingsBoard's), on 5683 or another free UDP port.
    coap_port = int(os.environ.setdefault("CITYOS_COAP_PORT", str(free_port(5683, demo_options.host, udp=True))))
    os.environ.setdefault("CITYOS_COAP_HOST", demo_options.host)
    os.environ.setdefault("CITYOS_WEB", "1")  # the cockpit and portal
    os.environ.setdefault("CITYOS_MAP_SEED", str(options.seed))  # the base map shows the simulated city
    # The simulated noise stations stand along roads: GB 3096-2008 zone 4a (traffic-side) limits.
    os.environ.setdefault("CITYOS_ENV_NOISE_ZONE", "4a")
    control_set = _control_loop_for(demo_options.traffic)
    settings = Settings()
    with _stop_on_signals(stop):
        began = time.monotonic()
        await asyncio.to_thread(migrate.upgrade, settings)
        broker = EmbeddedBroker(demo_options.host, mqtt_port)
        await broker.start(None)  # ingest workers may connect now; devices once the registry is up
        app = create_app(settings)
        client = PlatformClient(api)
        try:
            async with _QuietServer(app, demo_options.host, api_port).running():
                broker.attach(app.state.iot)
                await _authenticate(console, app, client)
                await _import_city_transit(console, app, options.seed)
                await _bound_history(app, demo_options.retention_days)
                size = database_size(settings.database_url)
                console.print(f"[bold]CityOS demo[/bold] up in {time.monotonic() - began:.1f} s "
                              f"(database {_redacted(settings.database_url)}{f', {size}' if size else ''}, "
                              f"history kept {demo_options.retention_days * 24} h, MQTT broker {mqtt_url})")
                if demo_options.log_path is not None:
                    console.print(f"  log file       {demo_options.log_path} (library messages and tracebacks)")
                console.print(f"  API            {api}\n  OpenAPI docs   {api}/docs\n"
                              f"  NGSI-LD        {api}/ngsi-ld/v1/entities?type=AirQualityObserved\n"
                              f"  IoT health     {api}/api/iot/health\n"
                              f"  CoAP devices   coap://{demo_options.host}:{coap_port}/api/v1/{{token}}/telemetry\n"
                              f"  cockpit        {api}/cockpit\n"
                              "  Ctrl-C stops everything.")
                residents_done = asyncio.Event()
                residents = asyncio.create_task(simulated_residents(app, options.seed, residents_done),
                                                name="simulated residents")
                population = asyncio.create_task(_load_population(console, app), name="demo-population")
                buses = asyncio.create_task(_simulated_buses(app, options.seed), name="simulated buses")
                sumo = demo_options.traffic == "sumo"
                street = None

                def sumo_roads() -> Any:  # SUMO's road traffic once the street runs (with --traffic sumo)
                    return street.field.take_edge_traffic() if street is not None else None

                roads = asyncio.create_task(_simulated_roads(app, options.seed, sumo_roads if sumo else None),
                                            name="simulated road speeds")
                counter = _IngestCounter()
                worker = embedded_ingest_worker(app.state.iot, mqtt_url, kinds="readings" if sumo else "all")
                worker.stats.on_commit.append(counter.on_commit)
                await worker.start()
                # With SUMO, the cabinets' answers to phase commands get a worker of their own: behind the
                # readings' backlog they would miss the control loop's acknowledgement timeout.
                answers = None
                if sumo:
                    answers = embedded_ingest_worker(app.state.iot, mqtt_url, "cityos-demo-rpc", kinds="rpc")
                    await answers.start()
                # Device RPC (and phase commands) through the embedded broker: MQTT 3.1.1, as the platform.
                app.state.iot_commands = embedded_command_sender(app.state.iot, mqtt_url)
                try:
                    if sumo and not stop.is_set():
                        street = await _sumo_traffic(console, app, mqtt_url, options.seed, demo_options)
                    if not stop.is_set():
                        await _run_simulator(console, options, client, mqtt_url, stop,
                                             stored=lambda: counter.stored,
                                             committed=lambda: counter.messages, max_backlog=demo_options.max_backlog,
                                             duration=demo_options.duration)
                finally:
                    residents_done.set()
                    await _within(5, "the simulated residents", residents)
                    population.cancel()  # a batch in flight rolls back
                    buses.cancel()
                    roads.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await buses
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await roads
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await population
                    if street is not None:
                        await _within(12, "the SUMO field", street.stop())
                    await app.state.iot_commands.close()
                    # Before the app's lifespan ends: the worker commits through the app's engine.
                    await _within(5, "the ingest worker", worker.stop())
                    if answers is not None:
                        await _within(5, "the RPC answer worker", answers.stop())
                    # uvicorn waits for open keep-alive connections before it stops: close ours first.
                    await client.close()
                    log.info("ingest worker stopped; stopping the API")
        finally:
            log.info("API stopped; stopping the broker")
            await client.close()
            await _within(5, "the MQTT broker", broker.stop())
            log.info("broker stopped")
            if control_set:
                os.environ.pop("CITYOS_TRAFFIC_CONTROL_SECONDS", None)
            if previous_listen is None:
                os.environ.pop("CITYOS_LISTEN_URL", None)
            else:
                os.environ["CITYOS_LISTEN_URL"] = previous_listen
    size = database_size(settings.database_url)
    console.print(f"CityOS demo stopped{f' (database {size})' if size else ''}")
    return 0


def _control_loop_for(traffic: str) -> bool:
    """With SUMO's traffic the platform's control loop runs (every 5 s unless CITYOS_TRAFFIC_CONTROL_SECONDS
    says otherwise); returns whether the demo set the variable (and so unsets it when it stops)."""
    from cityos.sim.sumo_demo import CONTROL_SECONDS, TrafficMode

    TrafficMode(traffic)  # an unknown mode is a ValueError, before anything starts
    if traffic != TrafficMode.sumo or os.environ.get("CITYOS_TRAFFIC_CONTROL_SECONDS"):
        return False
    os.environ["CITYOS_TRAFFIC_CONTROL_SECONDS"] = CONTROL_SECONDS
    return True


async def _sumo_traffic(console: Console, app: Any, mqtt_url: str, seed: int, demo_options: DemoOptions) -> Any:
    """The city's signals and detectors as devices, SUMO as the street (cityos.sim.sumo_demo); None if it
    cannot start (SUMO missing or failing): the rest of the demo runs on."""
    import tempfile

    from cityos.sim.sumo_demo import start_city_traffic
    from cityos.traffic.control_loop import control_interval

    began = time.monotonic()
    directory = demo_options.traffic_dir or Path(tempfile.mkdtemp(prefix="cityos-sumo-"))
    try:
        street = await start_city_traffic(app, mqtt_url, seed, directory)
    except Exception as exc:
        log.exception("the SUMO traffic did not start")
        console.print(f"[red]SUMO traffic did not start: {exc!r}[/red] (the demo runs on without it)")
        return None
    sites = street.field.sites
    console.print(f"  SUMO traffic   {len(sites)} signals decided by the platform every {control_interval():g} s "
                  f"from {len(street.field.tokens) - 1} cabinets' and a detector gateway's MQTT "
                  f"({time.monotonic() - began:.0f} s to start; /api/traffic/signals, cockpit traffic layer)")
    return street


async def _simulated_buses(app: Any, seed: int) -> None:
    """智慧出行: the city's buses running late and crowded as the bus model says (cityos.sim.buses), their
    on-board reports fed to the real-time tracker: predictions, occupancy, /transit and /cockpit/transit."""
    from cityos.sim.buses import run_live

    try:
        await run_live(app.state.mobility_live, "", "city", seed)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("simulated buses stopped")


async def _load_population(console: Console, app: Any) -> None:
    """一网协同: the synthetic residents and companies (CITYOS_DEMO_RESIDENTS, default 100,000; 5,000
    companies), loaded after a pause so the devices start first, then swept once (decisions, payouts);
    then their life events over time and the demo resident's falls, until the demo stops (cancelled)."""
    count = int(os.environ.get("CITYOS_DEMO_RESIDENTS", "100000"))
    await asyncio.sleep(float(os.environ.get("CITYOS_DEMO_POPULATION_DELAY", "15")))
    stops = [_falls(console, app)]
    try:
        if count > 0:
            population = await _load_residents(console, app, count)
            stops.append(_life_events(console, app, population))
        await asyncio.Event().wait()  # the demo's shutdown cancels this task
    finally:
        for stop in stops:
            await stop()


async def _load_residents(console: Console, app: Any, count: int) -> Any:
    from cityos.livelihood.proactive.bulk import load_population
    from cityos.sim.population import companies, residents

    began = time.monotonic()
    today = clock.now().date()
    population = residents(count, today)
    async with app.state.livelihood.engine.connect() as conn:
        from sqlalchemy import func, select

        from cityos.livelihood import models as lm

        loaded = (await conn.execute(select(func.count()).select_from(lm.subjects).where(
            lm.subjects.c.tenant == "", lm.subjects.c.id == "R0"))).scalar_one()
    if loaded:  # a restarted demo keeps its population (and its decisions and payouts)
        console.print(f"  livelihood     {count} residents already loaded (/livelihood/uptake)")
        return population
    people = await load_population(app.state.livelihood, "", population, "R")
    firms_count = int(os.environ.get("CITYOS_DEMO_COMPANIES", str(max(5000, count // 20))))
    firms = await load_population(app.state.livelihood, "", companies(firms_count, today), "C")
    console.print(f"  livelihood     {people['subjects']} residents, {firms['subjects']} companies in "
                  f"{time.monotonic() - began:.0f} s: {people['decisions'] + firms['decisions']} eligibility "
                  f"decisions, {people['payouts'] + firms['payouts']} 免申即享 payouts (/livelihood/uptake)")
    posted = await _seed_financing(app, [f"C{i}" for i in range(firms["subjects"])])
    console.print(f"  financing      {posted[0]} loan products, {posted[1]} companies' needs (/livelihood/financing)")
    return population


def _life_events(console: Console, app: Any, population: Any) -> Callable[[], Awaitable[None]]:
    """The residents' life events, a few every CITYOS_DEMO_LIFE_EVENT_SECONDS (default 20 s): their
    departments publish the change, the platform re-evaluates, notifies and pays (免申即享)."""
    from cityos.core.tasks import periodic
    from cityos.sim.livelihood_demo import LifeEvents

    events = LifeEvents(app, population, per_step=3)

    async def step() -> None:
        done = await events.step()
        if done["payouts"] or done["notices"]:
            log.info("life events: %s (so far %d events, %d notices, %d payouts)", done, events.published,
                     events.notices, events.payouts)

    interval = float(os.environ.get("CITYOS_DEMO_LIFE_EVENT_SECONDS", "20"))
    console.print(f"  life events    every {interval:g} s: job losses, disability certifications, births, "
                  "80th birthdays → notices and 免申即享 payouts (/livelihood/uptake)")
    return periodic("demo-life-events", step, interval, first=interval)


def _falls(console: Console, app: Any) -> Callable[[], Awaitable[None]]:
    """The demo resident's wristband reports a fall every CITYOS_DEMO_FALL_MINUTES (default 30; the first
    a minute in): the alert walks the escalation chain (/care) unless someone acknowledges it."""
    from cityos.core.tasks import periodic
    from cityos.sim.livelihood_demo import simulated_fall

    async def fall() -> None:
        alerts = await simulated_fall(app)
        log.info("simulated fall of the demo resident: alerts %s", alerts)

    minutes = float(os.environ.get("CITYOS_DEMO_FALL_MINUTES", "30"))
    console.print(f"  care           a simulated fall every {minutes:g} min walks the escalation chain (/care)")
    return periodic("demo-falls", fall, minutes * 60,
                    first=float(os.environ.get("CITYOS_DEMO_FIRST_FALL_SECONDS", "60")))


async def _seed_financing(app: Any, company_ids: list[str]) -> tuple[int, int]:
    """融资对接: the banks' products (published by the financial office) and some companies' needs; a
    re-run adds nothing (the same products and needs are duplicates)."""
    from cityos.core.errors import Conflict
    from cityos.livelihood.enterprise.financing import parse_need
    from cityos.security.policy import Principal
    from cityos.sim.financing import PRODUCTS, needs

    office = Principal("cityos-demo", kind="service", role="sys_admin", department="finance-office")
    financing = app.state.financing
    made = posted = 0
    for product in PRODUCTS:
        try:
            await financing.publish_product(office, "", {**product, "department": "finance-office"})
            made += 1
        except Conflict:
            pass
    for company, need in needs(company_ids, int(os.environ.get("CITYOS_DEMO_FINANCING_NEEDS", "60"))):
        try:
            await financing.insert_need(office, "", company, parse_need(need))
            posted += 1
        except Conflict:
            pass
    return made, posted


async def _simulated_roads(app: Any, seed: int, live_traffic: Any = None) -> None:
    """路况: the grid's segments with speeds from the city's daily pattern and incidents, or from SUMO's
    street when `live_traffic` gives them (cityos.sim.congestion): the congestion index, its forecast and
    the cockpit's traffic layer."""
    from cityos.sim.congestion import run_live

    try:
        # After the demo's first seconds (seeding, residents): the three-hour backfill writes ~4,400
        # readings and would slow what a new user sees first.
        await asyncio.sleep(float(os.environ.get("CITYOS_DEMO_ROADS_DELAY", "20")))
        await run_live(app, seed, live_traffic=live_traffic)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("simulated road speeds stopped")


async def _import_city_transit(console: Console, app: Any, seed: int) -> None:
    """The simulated city's buses and metro as GTFS feed `city` (one year from today), for the planner."""
    from cityos.security.policy import Principal
    from cityos.sim.city import build_city
    from cityos.sim.transit import city_gtfs

    today = clock.now().date()
    data = await asyncio.to_thread(city_gtfs, build_city(seed), today - timedelta(days=7), today + timedelta(days=365))
    system = Principal("cityos-demo", kind="service", role="sys_admin")
    feed = await app.state.mobility.import_feed(system, "", "city", data, "City transit / 城市公交地铁")
    console.print(f"  transit        GTFS feed 'city': {feed['counts']['stops']} stops, "
                  f"{feed['counts']['stopTimes']} stop times (/api/mobility/plan)")
async def _bound_history(app: Any, days: int) -> None:
    """The demo tenant's history retention (the hub's purge loop applies it), so the database stops growing."""
    if days <= 0:
        return
    from cityos.hub.temporal.retention import set_policy

    store = app.state.hub.service.store
    async with store.write() as conn:
        await store.ensure_tenant(conn, "")
        await set_policy(conn, "", "", days)


async def _authenticate(console: Console, app: Any, client: PlatformClient) -> None:
    """The demo's administrator (created once; its password is shown only now) and the simulator's OAuth client."""
    security = app.state.security.service
    created = await security.ensure_demo_admin()
    if created is not None:
        username, password, totp_secret = created
        console.print(f"[bold yellow]Administrator created[/bold yellow] (shown once, store it now): "
                      f"user [bold]{username}[/bold] password [bold]{password}[/bold] "
                      f"TOTP secret [bold]{totp_secret}[/bold]")
    await _demo_operator(console, security)
    await _demo_residents(console, app)
    installed = await install_default_rules(app)
    if installed:
        console.print(f"Installed {len(installed)} default alarm rules (PM2.5, river level, smoke, noise, devices …)")
    # A fresh client per run: its secret lives only in this process's memory.
    client_id = f"simulator-{secrets.token_hex(4)}"
    secret = await security.create_client(client_id, "operator")
    client.use_client(client_id, secret)


async def _demo_operator(console: Console, security: Any) -> None:
    """An operator for the cockpit, created once: password and TOTP secret are shown only now.

    Operators need a second factor; the QR code below enrols it in any authenticator app.
    """
    password = secrets.token_urlsafe(12) + "-Op1"
    try:
        new = await security.create_user("operator", password, "operator", with_totp=True,
                                         display_name="Demo operator")
    except AlreadyExists:
        return
    uri = new.totp_uri()
    console.print(f"[bold yellow]Cockpit operator created[/bold yellow] (shown once, store it now): "
                  f"user [bold]operator[/bold] password [bold]{password}[/bold]\n"
                  f"  TOTP secret [bold]{new.totp_secret}[/bold] (scan the QR code, or: "
                  f"uv run python -c \"import pyotp; print(pyotp.TOTP('{new.totp_secret}').now())\")")
    qr = qrcode.QRCode(border=1)
    qr.add_data(uri)
    buffer = io.StringIO()
    qr.print_ascii(out=buffer, invert=True)
    console.print(buffer.getvalue(), highlight=False, markup=False)


async def _demo_residents(console: Console, app: Any) -> None:
    """A citizen and an enterprise account with profiles (一网协同), created once: passwords shown only now."""
    from cityos.sim.livelihood_demo import COMPANY_SUBJECT, ensure_accounts

    for account in await ensure_accounts(app):
        page = "/portal/policy-calculator" if account.subject == COMPANY_SUBJECT else "/portal/services-for-me"
        what = ("Enterprise account (惠企政策, policy calculator, financing)" if account.subject == COMPANY_SUBJECT
                else "Citizen account (服务找人 services for me, notices, 免申即享 payouts, care wristband)")
        console.print(f"[bold yellow]{what} created[/bold yellow] (shown once, store it now): "
                      f"user [bold]{account.username}[/bold] password [bold]{account.password}[/bold] "
                      f"(portal {page})")


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
