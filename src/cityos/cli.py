"""`cityos` command line: serve, db upgrade, simulate, demo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from cityos.config import Settings, listen_url

app = typer.Typer(help="CityOS smart-city platform", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema management", no_args_is_help=True)
app.add_typer(db_app, name="db")

from cityos.security.cli import audit_app, client_app, keys_app, user_app  # noqa: E402

app.add_typer(user_app, name="user")
app.add_typer(keys_app, name="keys")
app.add_typer(client_app, name="client")
app.add_typer(audit_app, name="audit")
from cityos.operations.cli import backup_app  # noqa: E402

app.add_typer(backup_app, name="backup")
from cityos.operations.events_cli import events_app  # noqa: E402

app.add_typer(events_app, name="events")
devices_app = typer.Typer(help="IoT device registry (provision, import, list)", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
console = Console()


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("heads", help="Alembic revision to upgrade to")) -> None:
    """Run the Alembic migrations against CITYOS_DATABASE_URL."""
    from cityos.core import migrate

    settings = Settings()
    migrate.upgrade(settings, revision)
    console.print(f"[green]database at {_redacted(settings.database_url)} is at {revision}[/green]")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Alembic revision to go back to, e.g. base")) -> None:
    """Undo migrations down to REVISION."""
    from cityos.core import migrate

    migrate.downgrade(Settings(), revision)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="TCP port"),
    workers: int = typer.Option(1, help="Worker processes (PostgreSQL only; SQLite has one writer)"),
    migrate_first: bool = typer.Option(True, "--migrate/--no-migrate", help="Run migrations before serving"),
    log_level: str = typer.Option("info", help="Log level"),
) -> None:
    """Serve the CityOS API (NGSI-LD hub at /ngsi-ld/v1, OpenAPI docs at /docs)."""
    import uvicorn

    from cityos.core import migrate

    settings = Settings()
    from cityos.core.requestid import configure_logging

    configure_logging(log_level, os.environ.get("CITYOS_LOG_FORMAT", "text"))
    if migrate_first:
        migrate.upgrade(settings)
    if workers > 1 and not settings.is_postgres:
        console.print("[yellow]SQLite allows one writer: running a single worker[/yellow]")
        workers = 1
    console.print(f"CityOS on http://{host}:{port}  (cockpit: /cockpit, API docs: /docs, NGSI-LD: /ngsi-ld/v1, "
                  f"database: {_redacted(settings.database_url)})")
    os.environ.setdefault("CITYOS_DATABASE_URL", settings.database_url)
    # MQTT ingestion on by default (CITYOS_MQTT_URL), with a client id stable across restarts (its broker
    # session keeps the unacknowledged messages) and distinct per server on this host. Forked uvicorn
    # workers would share the id: run dedicated ingest processes then (deploy/iot.md).
    os.environ.setdefault("CITYOS_INGEST_WORKERS", "1" if workers == 1 else "0")
    import socket

    os.environ.setdefault("CITYOS_INGEST_CLIENT_ID", f"cityos-ingest-{socket.gethostname()}-{port}")
    os.environ.setdefault("CITYOS_WEB", "1")  # the cockpit and portal (CITYOS_WEB=0: API only)
    os.environ.setdefault("CITYOS_GC_TUNE", "1")  # see cityos.core.gctuning
    # The token issuer and absolute URLs follow the address actually served unless CITYOS_PUBLIC_URL says otherwise.
    os.environ["CITYOS_LISTEN_URL"] = listen_url(host, port)
    from cityos.core.serving import uvicorn_options

    # Slow clients are cut off: request head (CITYOS_HEADER_TIMEOUT), idle keep-alive; bodies in RequestLimits.
    # proxy_headers=False: X-Forwarded-For is read by `cityos.security.api.client_ip`, from the proxies
    # CITYOS_TRUSTED_PROXIES names only (uvicorn would otherwise trust 127.0.0.1 by default).
    uvicorn.run("cityos.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, proxy_headers=False, **uvicorn_options(settings))


@app.command()
def simulate(
    devices: int = typer.Option(2000, help="Number of simulated devices"),
    speed: float = typer.Option(60.0, help="Simulated seconds per real second until the replay reaches now"),
    seed: int = typer.Option(42, help="Seed: the same seed gives the same city, devices and readings"),
    mqtt: str = typer.Option("mqtt://127.0.0.1:1883", help="MQTT broker the devices publish to"),
    api: str = typer.Option("http://127.0.0.1:8000", help="CityOS API (provisioning, city entities, health)"),
    scenario: str = typer.Option("demo", help="demo (smog + flood early on) | normal | none"),
    history_hours: float = typer.Option(24.0, help="With speed > 1, start this many hours ago and replay up to now"),
    faults: bool = typer.Option(True, "--faults/--no-faults", help="Inject dropouts, spikes, outages, ..."),
    duration: float | None = typer.Option(None, help="Stop after this many real seconds"),
) -> None:
    """Run the simulated city against a running CityOS: provision devices, publish readings over MQTT.

    It authenticates as an OAuth client (CITYOS_SIM_CLIENT_ID / CITYOS_SIM_CLIENT_SECRET; create one
    with role operator) or with a bearer token (CITYOS_TOKEN).
    """
    import asyncio

    from cityos.sim.demo import simulate as run
    from cityos.sim.faults import FaultConfig
    from cityos.sim.runner import SimOptions

    options = SimOptions(devices=devices, speed=speed, seed=seed, scenario=scenario, history_hours=history_hours,
                         faults=FaultConfig() if faults else FaultConfig.none())
    raise typer.Exit(asyncio.run(run(options, api, mqtt, token=os.environ.get("CITYOS_TOKEN"),
                                     client_id=os.environ.get("CITYOS_SIM_CLIENT_ID"),
                                     client_secret=os.environ.get("CITYOS_SIM_CLIENT_SECRET"),
                                     duration=duration, console=console)))


@app.command()
def demo(
    devices: int = typer.Option(2000, help="Number of simulated devices"),
    speed: float = typer.Option(60.0, help="Simulated seconds per real second until the replay reaches now"),
    seed: int = typer.Option(42, help="Seed for the city, devices and readings"),
    host: str = typer.Option("127.0.0.1", help="Interface for the API and the broker"),
    port: int = typer.Option(8000, help="API port (another free one if taken)"),
    mqtt_port: int = typer.Option(1883, help="Embedded MQTT broker port (another free one if taken)"),
    scenario: str = typer.Option("demo", help="demo (smog + flood early on) | normal | none"),
    history_hours: float = typer.Option(24.0, help="Start this many hours ago and replay up to now"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder for the demo's database and log "
                                         "(default: the platform data path, e.g. ~/.local/share/cityos/demo)"),
    traffic: str = typer.Option("synthetic", envvar="CITYOS_DEMO_TRAFFIC", help=(
        "synthetic (road speeds from the daily pattern) | sumo (the city's signals decided by the platform's "
        "control loop, SUMO as the street; about 0.2 core more)")),
    duration: float | None = typer.Option(None, hidden=True, help="Stop after this many real seconds"),
) -> None:
    """One command, no external services: embedded MQTT broker + API on SQLite + ingestion + simulated city."""
    import asyncio

    from cityos.security.settings import default_data_dir
    from cityos.sim.demo import DemoOptions, configure_logging
    from cityos.sim.demo import demo as run
    from cityos.sim.runner import SimOptions
    from cityos.sim.sumo_demo import TrafficMode

    if traffic not in set(TrafficMode):
        modes = ", ".join(m.value for m in TrafficMode)
        raise typer.BadParameter(f"{traffic!r} is not a traffic mode: use one of {modes}",
                                 param_hint="'--traffic' / CITYOS_DEMO_TRAFFIC")
    folder = (data_dir or default_data_dir() / "demo").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # The database lives in the data folder, not wherever the command was typed (CITYOS_DATABASE_URL wins).
    os.environ.setdefault("CITYOS_DATABASE_URL", f"sqlite:///{folder / 'cityos-demo.db'}")
    os.environ.setdefault("CITYOS_GC_TUNE", "1")  # see cityos.core.gctuning
    log_path = folder / "demo.log"
    configure_logging(log_path)
    # Small gateway messages: the embedded broker's ingest commits (and acknowledges) in small steps.
    options = SimOptions(devices=devices, speed=speed, seed=seed, scenario=scenario, history_hours=history_hours,
                         max_per_message=20)
    raise typer.Exit(asyncio.run(run(options, DemoOptions(host=host, port=port, mqtt_port=mqtt_port,
                                                          duration=duration, log_path=log_path, traffic=traffic,
                                                          traffic_dir=folder / "sumo"),
                                     console=console)))


def _iot_call(work: Any) -> Any:
    """Run `work(iot_service)` against CITYOS_DATABASE_URL without serving (no MQTT workers)."""
    import asyncio

    from cityos.app import create_app

    async def run() -> Any:
        os.environ["CITYOS_INGEST_WORKERS"] = "0"
        application = create_app(Settings())
        async with application.router.lifespan_context(application):
            return await work(application.state.iot)

    return asyncio.run(run())


@devices_app.command("provision")
def devices_provision(
    profile: str = typer.Option(..., help="Device profile id (see GET /api/iot/profiles)"),
    name: str = typer.Option(..., help="Unique device name"),
    lon: float | None = typer.Option(None), lat: float | None = typer.Option(None),
    district: str | None = typer.Option(None), department: str | None = typer.Option(None),
    gateway: bool = typer.Option(False, help="The device is a gateway"),
) -> None:
    """Register one device; prints its id and access token (shown only now)."""
    from cityos.iot.models import DeviceIn

    spec = DeviceIn(name=name, profile=profile, lon=lon, lat=lat, district=district, department=department,
                    gateway=gateway)
    device_id, token = _iot_call(lambda iot: iot.provision(spec))
    console.print(f"{device_id}\ntoken: [bold]{token}[/bold]  (store it now: only its hash is kept)")


@devices_app.command("import")
def devices_import(
    path: str = typer.Argument(..., help="CSV: name,profile,lon,lat,district,department[,firmware,gateway]"),
) -> None:
    """Register devices from a CSV file; prints name,token per created row and the rejected rows."""
    from pathlib import Path

    result = _iot_call(lambda iot: iot.import_csv(Path(path).read_text(encoding="utf-8-sig")))
    print("name,token")
    for row in result.created:
        print(f"{row['name']},{row['token']}")
    for error in result.errors:
        console.print(f"[red]row {error['row']}: {error['error']['detail']}[/red]", highlight=False)
    raise typer.Exit(1 if result.errors else 0)


@devices_app.command("list")
def devices_list(profile: str | None = typer.Option(None), district: str | None = typer.Option(None),
                 status: str | None = typer.Option(None), limit: int = typer.Option(100)) -> None:
    """List registered devices."""
    from rich.table import Table

    items, total = _iot_call(lambda iot: iot.list_devices(profile=profile, district=district, status=status,
                                                          limit=limit))
    table = Table("name", "profile", "district", "department", "status", "last seen", "battery")
    for d in items:
        p = d.public()
        table.add_row(p["name"], p["profile"], p["district"] or "", p["department"] or "", p["status"],
                      p["lastSeen"] or "", "" if p["battery"] is None else f"{p['battery']:g}")
    console.print(table)
    console.print(f"{len(items)} of {total}")


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    app()
