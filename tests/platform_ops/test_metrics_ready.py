"""`/metrics` (Prometheus exposition, who may scrape it, what it counts) and `/ready` (each dependency
broken for real: the schema, the database, the MQTT broker), plus a real Prometheus server scraping a
running CityOS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from backends import admin_sql, postgres_database_url, postgres_test_url
from own_services import OwnMosquitto, free_port, wait_for_port


def _value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None when it is absent."""
    for line in exposition.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"{re.escape(name)}(\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


async def test_metrics_are_for_monitors_only(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                             auth: Any) -> None:
    anonymous = await anon_client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["type"].endswith("Unauthorized") or "title" in anonymous.json()
    citizen = await anon_client.get("/metrics", headers=auth.headers("citizen", username="c1"))
    assert citizen.status_code == 403
    official = await anon_client.get("/metrics", headers=auth.headers("official", department="water"))
    assert official.status_code == 403
    operator = await anon_client.get("/metrics", headers=auth.headers("operator", username="op"))
    assert operator.status_code == 200
    assert operator.headers["content-type"].startswith("text/plain")


async def test_a_prometheus_token_scrapes_without_an_account(anon_client: httpx.AsyncClient,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOS_METRICS_TOKEN", "scrape-secret-0123456789")
    assert (await anon_client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    ok = await anon_client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-0123456789"})
    assert ok.status_code == 200
    assert "cityos_http_requests_total" in ok.text


async def test_requests_are_counted_by_route_template(client: httpx.AsyncClient) -> None:
    entity = {"id": "urn:ngsi-ld:Thing:metrics-1", "type": "Thing", "n": {"type": "Property", "value": 1}}
    assert (await client.post("/ngsi-ld/v1/entities", json=entity)).status_code == 201
    for _ in range(3):
        assert (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:metrics-1")).status_code == 200
    assert (await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:nope")).status_code == 404
    body = (await client.get("/metrics")).text
    route = "/ngsi-ld/v1/entities/{entity_id}"
    ok = _value(body, "cityos_http_requests_total", method="GET", route=route, status="200")
    missing = _value(body, "cityos_http_requests_total", method="GET", route=route, status="404")
    assert ok is not None and ok >= 3
    assert missing is not None and missing >= 1
    # the raw id never becomes a label (its cardinality would be unbounded)
    assert "urn:ngsi-ld:Thing:metrics-1" not in body
    count = _value(body, "cityos_http_request_duration_seconds_count", method="GET", route=route)
    assert count is not None and count >= 4
    statements = _value(body, "cityos_db_statement_duration_seconds_count")
    assert statements is not None and statements > 0


async def test_state_gauges_follow_the_database(client: httpx.AsyncClient, app: Any) -> None:
    before = (await client.get("/metrics")).text
    assert _value(before, "cityos_incidents_open", category="environment.air") is None
    made = await client.post("/api/ops/incidents", json={
        "category": "environment.air", "title": "Smog 烟雾", "description": "metrics test",
        "location": {"type": "Point", "coordinates": [110.33, 20.03]}})
    assert made.status_code in (200, 201), made.text
    after = (await client.get("/metrics")).text
    assert _value(after, "cityos_incidents_open", category="environment.air") == 1
    assert _value(after, "cityos_incidents_sla_breached", category="environment.air") == 0
    assert _value(after, "cityos_login_failures_last_hour") is not None
    assert _value(after, "cityos_outbox_depth", outbox="iot_events", state="pending") == 0
    assert _value(after, "cityos_notification_lag_seconds") == 0


async def test_ready_reports_a_schema_behind_the_code(client: httpx.AsyncClient, app: Any) -> None:
    ready = await client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["schema"]["ok"] is True
    async with app.state.engine.begin() as conn:
        head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    try:
        behind = await client.get("/ready")
        assert behind.status_code == 503
        assert behind.json()["checks"]["schema"]["ok"] is False
        assert "0001" in behind.json()["checks"]["schema"]["reason"]
        assert (await client.get("/health")).status_code == 200  # alive, only not ready
    finally:
        async with app.state.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert (await client.get("/ready")).status_code == 200


# ---------------------------------------------------------------------- a real server process


class Server:
    """`cityos serve` (API only) in its own process."""

    def __init__(self, database_url: str, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.log = workdir / "server.log"
        self.env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_WEB": "0",
                    "CITYOS_IOT_HEALTH_SECONDS": "0", "CITYOS_INGEST_WORKERS": "0", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cityos.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if not wait_for_port(self.port, 60):
            raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10, **kw)

    def wait_ready(self, expected: int, seconds: float = 30.0) -> httpx.Response:
        deadline = time.monotonic() + seconds
        while True:
            answer = self.get("/ready")
            if answer.status_code == expected or time.monotonic() > deadline:
                return answer
            time.sleep(0.25)


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cityos.db'}"


def test_ready_follows_the_mqtt_broker(own_mosquitto: OwnMosquitto, tmp_path: Path) -> None:
    with Server(_sqlite_url(tmp_path), tmp_path, CITYOS_MQTT_URL=own_mosquitto.url, CITYOS_INGEST_WORKERS="1",
                CITYOS_INGEST_CLIENT_ID=f"ready-{os.getpid()}") as server:
        up = server.wait_ready(200)
        assert up.status_code == 200, up.text
        assert up.json()["checks"]["broker"]["ok"] is True
        own_mosquitto.stop()
        down = server.wait_ready(503)
        assert down.status_code == 503, down.text
        assert down.json()["checks"]["broker"]["ok"] is False
        assert server.get("/health").status_code == 200
        own_mosquitto.start()
        back = server.wait_ready(200, seconds=60)
        assert back.status_code == 200, back.text


@pytest.fixture
def own_database() -> Iterator[tuple[str, str]]:
    if postgres_test_url() is None:
        pytest.skip("PostgreSQL run only")
    name = f"cityos_ready_{os.getpid()}_{int(time.time())}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name, postgres_database_url(name)
    finally:
        admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_ready_follows_the_database(own_database: tuple[str, str], tmp_path: Path) -> None:
    name, url = own_database
    with Server(url, tmp_path) as server:
        assert server.wait_ready(200).status_code == 200
        # The database refuses connections and drops the ones it has: as if it went down.
        admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        down = server.wait_ready(503)
        assert down.status_code == 503, down.text
        assert down.json()["checks"]["database"]["ok"] is False
        admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        back = server.wait_ready(200)
        assert back.status_code == 200, back.text


def test_a_prometheus_server_scrapes_cityos(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("Debian's prometheus is not installed (./run test installs it)")
    token = "prometheus-scrape-token-42"
    with Server(_sqlite_url(tmp_path), tmp_path, CITYOS_METRICS_TOKEN=token) as server:
        assert server.wait_ready(200).status_code == 200
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: cityos\n    metrics_path: /metrics\n"
            f"    authorization:\n      credentials: {token}\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n")
        port = free_port()
        with (tmp_path / "prometheus.log").open("wb") as out:
            proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
        try:
            assert wait_for_port(port, 30), (tmp_path / "prometheus.log").read_text()[-2000:]
            api = f"http://127.0.0.1:{port}/api/v1"
            deadline = time.monotonic() + 60
            result: list[Any] = []
            while time.monotonic() < deadline and not result:
                server.get("/ngsi-ld/v1/types")  # traffic to count
                answer = httpx.get(f"{api}/query", params={"query": 'cityos_http_requests_total{route="/ready"}'},
                                   timeout=5).json()
                result = answer.get("data", {}).get("result", [])
                time.sleep(0.5)
            assert result, "Prometheus never stored a CityOS sample"
            targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
            assert targets[0]["health"] == "up", targets
            assert float(result[0]["value"][1]) >= 1
        finally:
            proc.terminate()
            proc.wait(20)


MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def test_the_shipped_alert_rules_are_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("Debian's prometheus (promtool) is not installed")
    checked = subprocess.run([promtool, "check", "rules", str(MONITORING / "cityos-alerts.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_alerts_and_dashboard_name_only_metrics_that_exist(client: httpx.AsyncClient) -> None:
    import json

    await client.get("/ngsi-ld/v1/types")
    exposition = (await client.get("/metrics")).text
    exported = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE cityos_")}
    # histogram and counter families appear with suffixes; the family names count too
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", name) for name in exported} | exported
    used: set[str] = set()
    for text_ in ((MONITORING / "cityos-alerts.yml").read_text(),
                  json.dumps(json.loads((MONITORING / "grafana-dashboard.json").read_text()))):
        used |= set(re.findall(r"cityos_[a-z_]+", text_))
    missing = {name for name in used if name not in exported and re.sub(r"_(bucket|count|sum|total)$", "", name)
               not in families}
    assert not missing, f"alerts or dashboard name metrics that /metrics does not export: {sorted(missing)}"
