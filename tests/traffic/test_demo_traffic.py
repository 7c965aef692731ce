"""`cityos demo --traffic sumo`: the city's 54 signals decided by the platform, SUMO's grid as the street.

What the demo starts, on both backends, over the demo's own embedded broker (amqtt with device tokens):
the field (`cityos.sim.sumo_demo.start_city_traffic`) registers the signals and the detector and cabinet
devices, the app's control loop (`start_control_loop`, `CITYOS_TRAFFIC_CONTROL_SECONDS`) decides, phase
commands go out through the demo's RPC sender, and the cabinets in SUMO show and acknowledge them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cityos.cli import app as cli
from cityos.core import clock
from cityos.security.policy import Principal
from cityos.sim.congestion import sumo_readings
from cityos.sim.platform import EmbeddedBroker, embedded_command_sender, embedded_ingest_worker, free_port
from cityos.sim.sumo_demo import start_city_traffic
from cityos.sim.sumo_field import zones_of
from cityos.traffic.citynet import MORNING_PEAK_UTC
from cityos.traffic.congestion.grid import city_sections
from cityos.traffic.control_loop import detector_entity, detector_reading, start_control_loop
from iot.mqtt_support import wait_for

try:
    import libsumo
except ImportError:  # the SUMO test is skipped without it
    libsumo = None

DECIDED = 10  # signals whose phase the controller changed, acknowledged, before the test looks closer
CLEARANCE_S = 3 + 2  # the network plans' yellow and all-red: the lamps reach the commanded green after it


async def applied_commands(client: Any, signals: list[str]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for signal in signals:
        history = (await client.get(f"/api/traffic/signals/{signal}/commands?limit=1000")).json()
        out[signal] = [c for c in history if c["outcome"] == "applied"]
    return out


@pytest.mark.slow
@pytest.mark.skipif(libsumo is None, reason="libsumo is not installed")
async def test_the_demos_signals_are_decided_by_the_platform_with_sumo_as_the_street(
        client: Any, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port(0)
    url = f"mqtt://127.0.0.1:{port}"
    broker = EmbeddedBroker("127.0.0.1", port)
    await broker.start(app.state.iot)
    worker = embedded_ingest_worker(app.state.iot, url, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}")
    await worker.start()
    # Set and restored by hand: monkeypatch does not see Starlette's State attributes (they live in its
    # `_state`), so it would delete the app's own sender on undo and later tests would send no RPC.
    platform_sender = app.state.iot_commands
    app.state.iot_commands = embedded_command_sender(app.state.iot, url)
    monkeypatch.setenv("CITYOS_TRAFFIC_CONTROL_SECONDS", "2")
    street = loop = None
    try:
        street = await start_city_traffic(app, url, 42, tmp_path, report_every=2.0, start=MORNING_PEAK_UTC)
        sites = street.field.sites
        assert len(sites) == 54 and len(street.field.tokens) == 55  # the cabinets and the detector gateway
        loop = start_control_loop(app)
        assert loop is not None

        async def decided() -> bool:
            found = await applied_commands(client, list(sites))
            return sum(any(c["source"] == "controller" and c["ackedMs"] is not None for c in cs)
                       for cs in found.values()) >= DECIDED

        assert await wait_for(decided, 150, every=3.0), loop.stats

        # A request the cabinet cannot apply (a signal it does not drive) is answered with an error.
        some = next(iter(sites.values()))
        odd = await client.post(f"/api/iot/devices/{some.cabinet}/rpc",
                                json={"method": "setPhase", "params": {"signal": "nowhere", "phase": 0,
                                                                       "sequence": []}})
        assert odd.status_code == 201, odd.text

        async def refused() -> bool:
            return str((await client.get(f"/api/iot/rpc/{odd.json()['id']}")).json()["status"]) == "failed"

        assert await wait_for(refused, 10)
        await loop.stop()  # no new decisions: the lamps finish the last change
        await asyncio.sleep(CLEARANCE_S + 1)
    finally:
        if loop is not None:
            await loop.stop()
        if street is not None:
            await street.stop()
        await app.state.iot_commands.close()
        app.state.iot_commands = platform_sender
        await worker.stop()
        await broker.stop()

    field = street.field
    history = await applied_commands(client, list(sites))
    applied = [c for cs in history.values() for c in cs]
    by_controller = [c for c in applied if c["source"] == "controller"]
    assert len(by_controller) >= DECIDED
    # Every phase command reached a cabinet as RPC and was acknowledged, the time kept with it.
    assert all(c["rpcStatus"] == "succeeded" and c["ackedMs"] is not None for c in applied), \
        [c for c in applied if c["rpcStatus"] != "succeeded"][:3]
    assert {c["rpcId"] for c in applied} <= set(field.acknowledged)
    assert field.rejected == [odd.json()["id"]]
    # SUMO's lamps show what the platform decided: each signal's green is its current phase's; and the
    # detectors fed the hub through their gateway, so the controller decided, not the fixed-time fallback.
    for signal, site in sites.items():
        shown = (await client.get(f"/api/traffic/signals/{signal}")).json()
        assert field.shown[site.tls][-1][1] == shown["state"], (signal, shown, field.shown[site.tls][-3:])
        assert shown["fallback"] is False, shown
    lanes = [lane for site in sites.values() for lane in site.in_lanes]
    found = await app.state.hub.service.retrieve_many(app.state.iot.tenant, [detector_entity(lane) for lane in lanes])
    assert len(found) == len(set(lanes)) and all(detector_reading(r.attrs) is not None for r in found.values())
    assert loop.stats.acknowledged >= len(by_controller) and loop.stats.unacknowledged == 0
    # The arterials' video/radar zones reported through the same gateway every 30 s of the run, into the hub.
    zones = zones_of(sites)
    assert field.zone_readings >= 2 * len(zones) and field.zone_readings % len(zones) == 0
    seen = await app.state.hub.service.retrieve_many(app.state.iot.tenant,
                                                     [f"urn:ngsi-ld:TrafficFlowObserved:{name}" for name in zones])
    assert len(seen) == len(zones) and all(any(a.endswith("stoppedVehicles") for a in r.attrs)
                                           for r in seen.values())
    # The street's road traffic feeds the congestion index (the demo's roads with --traffic sumo): every
    # segment of the grid is a pair of SUMO edges, sampled while the street ran.
    sections = city_sections(42)
    rows = sumo_readings(sections, field.take_edge_traffic(), clock.now())
    assert len(rows) == len(sections) and sum(r["flowVph"] for r in rows) > 0
    assert all(0 <= r["speedKmh"] <= 70 for r in rows)  # within the grid's 50/60 km/h limits and SUMO's spread
    operator = Principal("test-roads", kind="service", role="sys_admin")
    await app.state.congestion.register_grid(operator, "", 42)
    assert (await app.state.congestion.report(operator, "", {"readings": rows}))["accepted"] == len(sections)


@pytest.mark.parametrize(("args", "env"), [(["--traffic", "bogus"], {}), ([], {"CITYOS_DEMO_TRAFFIC": "SUMO!"})])
def test_an_unknown_traffic_mode_is_a_clear_cli_error(args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", *args, "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 2
    assert "is not a traffic mode: use one of synthetic, sumo" in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "cityos-demo.db").exists()  # nothing started
