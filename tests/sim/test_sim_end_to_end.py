"""End to end: embedded amqtt broker + the API with MQTT ingestion + the simulator, and `cityos demo` under SIGINT.

These depend on the IoT domain's ingestion (cityos.iot) and its embedded-broker plugin; they use
no outside services.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import select

from auth_tokens import Auth
from cityos.app import create_app
from cityos.config import Settings
from cityos.core.clock import parse_iso
from cityos.livelihood import models as lm
from cityos.sim import livelihood_demo
from cityos.sim.demo import DemoOptions, demo
from cityos.sim.faults import FaultConfig
from cityos.sim.platform import free_port
from cityos.sim.runner import SimOptions

pytestmark = pytest.mark.slow


async def test_simulated_readings_reach_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    monkeypatch.setenv("CITYOS_DATABASE_URL", url)
    # demo() points the app's settings at its broker through the environment; monkeypatch restores it.
    monkeypatch.setenv("CITYOS_MQTT_URL", "mqtt://127.0.0.1:1")
    monkeypatch.setenv("CITYOS_INGEST_WORKERS", "0")
    monkeypatch.setenv("CITYOS_COAP_PORT", str(free_port(0, udp=True)))
    monkeypatch.setenv("CITYOS_COAP_HOST", "127.0.0.1")
    # 一网协同 at a small scale: 300 residents and 30 companies at once, life events every second, a fall at once.
    monkeypatch.setenv("CITYOS_DEMO_RESIDENTS", "300")
    monkeypatch.setenv("CITYOS_DEMO_COMPANIES", "30")
    monkeypatch.setenv("CITYOS_DEMO_POPULATION_DELAY", "0")
    monkeypatch.setenv("CITYOS_DEMO_LIFE_EVENT_SECONDS", "1")
    monkeypatch.setenv("CITYOS_DEMO_FIRST_FALL_SECONDS", "1")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    options = SimOptions(devices=50, speed=300, seed=7, scenario="demo", start=start, max_per_message=20,
                         faults=FaultConfig.none())
    began = time.monotonic()
    api = free_port(0)
    code = await demo(options, DemoOptions(port=api, mqtt_port=free_port(0, taken={api}), duration=8.0),
                      Console(quiet=True))
    assert code == 0 and time.monotonic() - began < 60

    app = create_app(Settings(database_url=url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cityos.test") as http:
            r = await http.get("/ngsi-ld/v1/entities", params={"type": "TrafficFlowObserved", "limit": 100})
            assert r.status_code == 200, r.text
            flows: list[dict[str, Any]] = r.json()
            assert flows, "no traffic readings reached the hub"
            stamps = [parse_iso(e["intensity"]["observedAt"]) for e in flows if "intensity" in e]
            assert stamps and max(stamps) > start + timedelta(minutes=5)  # the replay moved on from its start
            assert all(start <= t <= datetime.now(UTC) + timedelta(seconds=5) for t in stamps)
            districts = (await http.get("/ngsi-ld/v1/entities", params={"type": "District", "limit": 50})).json()
            assert len(districts) >= 8
            assert districts[0]["location"]["value"]["type"] == "Polygon"
            # Device health is for staff who manage devices; readings and districts above are public.
            operator = Auth(app).headers("operator")
            assert (await http.get("/api/iot/health")).status_code == 401
            health = (await http.get("/api/iot/health", headers=operator)).json()
            assert health["devices"] >= 50
            assert health["byStatus"].get("active", 0) >= 25
            # The demo imported the city's own GTFS feed: the journey planner answers across the city.
            feeds = (await http.get("/api/mobility/feeds")).json()
            assert [f["feedId"] for f in feeds] == ["city"] and feeds[0]["notices"] == []
            plan = await http.get("/api/mobility/plan", params={
                "fromPlace": "19.96,110.21", "toPlace": "20.09,110.44", "time": "10:00", "maxTransfers": 3,
                "date": (datetime.now(UTC) + timedelta(days=1)).date().isoformat()})
            assert plan.status_code == 200, plan.text
            assert any(leg["transitLeg"] for i in plan.json()["plan"]["itineraries"] for leg in i["legs"])
            # 一网协同: the demo citizen sees services for them, the population's life events were
            # published by their departments, and the demo resident's fall started the escalation chain.
            security = app.state.security.service
            resident = await livelihood_demo._user_id(security, "resident")
            assert resident and await livelihood_demo._user_id(security, "company")
            mine = (await http.get("/api/livelihood/me/services",
                                   headers=Auth(app).headers("citizen", user_id=resident))).json()
            assert {"elderly-allowance-80", "dibao-screening"} <= {i["policy"]["id"] for i in mine["items"]}
            async with app.state.livelihood.engine.connect() as conn:
                shared = (await conn.execute(select(lm.records.c.dataset).where(
                    lm.records.c.dataset.in_(["job-loss", "disability", "birth"])))).all()
                falls = (await conn.execute(select(lm.care_alerts.c.kind).where(
                    lm.care_alerts.c.subject_id == livelihood_demo.RESIDENT_SUBJECT))).all()
            assert shared, "no life event reached the platform"
            assert [f.kind for f in falls] == ["fall"]


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc to look for orphans")
def test_demo_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    api_port = free_port(0)
    mqtt_port = free_port(0, taken={api_port})
    env = dict(os.environ)
    env.pop("CITYOS_MQTT_URL", None)
    env.pop("CITYOS_DATABASE_URL", None)  # the demo keeps its database in its data folder
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cityos.cli", "demo", "--devices", "100", "--port", str(api_port),
         "--mqtt-port", str(mqtt_port), "--data-dir", str(data)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # A first start migrates and seeds a new database: generous, since a loaded CI machine is slow.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        else:
            proc.kill()
            pytest.fail("the demo's API did not answer within 180 s; its output:\n" + proc.communicate()[0])
        time.sleep(4)  # let provisioning and publishing start
        children = _children(proc.pid)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # the demo prints every thread's and task's stack
            time.sleep(3)
            proc.kill()
            pytest.fail("the demo did not stop within 30 s of SIGINT; its output and stacks:\n"
                        + proc.communicate()[0])
        assert proc.returncode == 0, out
        assert time.monotonic() - began < 30
        assert "CityOS demo stopped" in out
        # Database and log in the data folder, both named on the console; no traceback on the console.
        assert (data / "cityos-demo.db").exists() and (data / "demo.log").exists()
        compact = "".join(out.split())  # rich wraps long paths at the console's width
        assert str(data / "cityos-demo.db") in compact and str(data / "demo.log") in compact, out
        assert "historykept24h" in compact and "Traceback" not in out, out
        assert not any(Path(f"/proc/{c}").exists() for c in children), "orphan processes left behind"
        for port in (api_port, mqtt_port):
            assert free_port(port) == port, f"port {port} still bound"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
