"""Two API processes and two ingest processes on one database and a 3-node JetStream cluster.

Four `cityos serve` processes share the events stream (`CITYOS_EVENTS_URL`, instances 0/4 … 3/4, so each
entity's events reach one process); the two ingest processes pull device messages from the device
stream (`CITYOS_INGEST_NATS_URL`); the API processes have no ingest at all. Device messages are published
to the stream as devices (through NATS) would publish them.

- A cockpit session (headless Chromium signed in to API process A; NiceGUI over its websocket) shows a
  non-zero reading rate: A stores no reading itself, so every one it counts was stored by an ingest
  process and reached A as a `hub.entity.changed` event.
- A sustained-window rule fires exactly once for an entity whose readings were stored by both ingest
  processes (each one's `cityos_ingest_readings_total` rose), and A's cockpit lists the alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest

from auth_tokens import server_headers
from cityos.core.jetstream import servers
from nats_cluster import NatsCluster
from own_services import free_port
from web_harness import UsedSteps, cli_add_user, fresh_code, headless_chromium, running_server

# Four whole-app processes and a browser on a loaded 2-core machine: their start-up alone has taken 3 min.
pytestmark = pytest.mark.timeout(1200)

PASSWORD = "Correct-Horse-Battery-42"
METRICS_TOKEN = uuid.uuid4().hex


class Processes:
    def __init__(self, urls: dict[str, str], env: dict[str, str], device_stream: str) -> None:
        self.urls, self.env, self.device_stream = urls, env, device_stream
        self.used_codes = UsedSteps()


@pytest.fixture
def four(database_url: str, cluster: NatsCluster, tmp_path: Path) -> Iterator[Processes]:
    device_stream = f"D{uuid.uuid4().hex[:8]}"
    base = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_EVENTS_URL": cluster.url,
            "CITYOS_EVENTS_REPLICAS": "3", "CITYOS_EVENTS_STREAM": f"S{uuid.uuid4().hex[:8]}",
            "CITYOS_EVENTS_SUBJECTS": f"s{uuid.uuid4().hex[:8]}", "CITYOS_RULES_TICK_SECONDS": "0.5",
            "CITYOS_RULES_RESYNC_SECONDS": "1", "CITYOS_INGEST_WORKERS": "0",
            "CITYOS_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}", "CITYOS_METRICS_TOKEN": METRICS_TOKEN,
            "CITYOS_ARGON2_TIME_COST": "1", "CITYOS_ARGON2_MEMORY_KIB": "8192",
            "CITYOS_AUTH_RATE_PER_MINUTE": "1000", "COLUMNS": "500", "NO_COLOR": "1"}
    base.pop("CITYOS_WEB_STORAGE_SECRET", None)
    roles = {"api-a": {"CITYOS_WEB": "1"}, "api-b": {},
             "ingest-1": {"CITYOS_INGEST_NATS_URL": cluster.url, "CITYOS_INGEST_NATS_STREAM": device_stream,
                          "CITYOS_INGEST_NATS_REPLICAS": "3"}}
    roles["ingest-2"] = roles["ingest-1"]
    with contextlib.ExitStack() as stack:
        urls = {}
        for index, (role, extra) in enumerate(roles.items()):
            port = free_port()
            # No CITYOS_PUBLIC_URL: tokens minted by this test (auth_tokens) name the default issuer.
            env = {**base, **extra, "CITYOS_EVENTS_INSTANCE": f"{index}/4"}
            stack.enter_context(running_server(env, port, tmp_path / f"{role}.log", start_timeout=240,
                                               poll_interval=0.3))
            urls[role] = f"http://127.0.0.1:{port}"
        yield Processes(urls, base, device_stream)


async def ingested(http: httpx.AsyncClient, base: str) -> float:
    """The process's `cityos_ingest_readings_total` (0 before its first batch)."""
    r = await http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text
    found = re.search(r"^cityos_ingest_readings_total\s+(\S+)$", r.text, re.M)
    return float(found.group(1)) if found else 0.0


async def sustained_alarms(http: httpx.AsyncClient, base: str, entity_suffix: str) -> list[dict[str, Any]]:
    r = await http.get(f"{base}/api/ops/alarms", headers=server_headers())
    assert r.status_code == 200, r.text
    return [a for a in r.json()["items"]
            if a["ruleId"] == "pm25-sustained-4p" and str(a["entityId"]).endswith(f":{entity_suffix}")]


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium(window_size=(1600, 1000), page_load_timeout=90,
                           skip_reason="chromium and chromedriver are needed for the cockpit session") as driver:
        yield driver


def sign_in_cockpit(driver: Any, base: str, username: str, secret: str, used: UsedSteps) -> None:
    from selenium.webdriver.common.by import By

    def wait(check: Any, what: str, seconds: float = 120.0) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                result = check()
                if result:
                    return result
            except Exception:  # the page is still being built
                pass
            time.sleep(0.3)
        raise AssertionError(f"timed out: {what}")

    def type_into(selector: str, text: str) -> bool:
        field = driver.find_elements(By.CSS_SELECTOR, f"{selector} input")[0]
        field.clear()
        field.send_keys(text)
        return True

    driver.get(f"{base}/login?next=/cockpit")
    wait(lambda: type_into(".login-username", username), "the login form")
    wait(lambda: type_into(".login-password", PASSWORD), "the password field")
    wait(lambda: type_into(".login-totp", fresh_code(secret, used)), "the TOTP field")
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".login-submit")[0].click() or True, "submitting")
    wait(lambda: driver.current_url.split("?")[0].endswith("/cockpit"), "landing on the cockpit")


def cockpit_rate(driver: Any) -> float:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, ".cityos-kpi-rate .cityos-kpi-value")
    text = found[0].text.replace(",", "") if found else ""
    try:
        return float(text)
    except ValueError:
        return 0.0  # "—" before the first refresh


@pytest.fixture
async def publisher(cluster: NatsCluster) -> AsyncIterator[Any]:
    connection = await nats.connect(servers(cluster.url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        yield connection.jetstream(timeout=10.0)
    finally:
        await connection.close()


async def test_cockpit_on_a_sees_readings_of_both_ingest_processes_and_one_sustained_alarm(
        four: Processes, browser: Any, publisher: Any) -> None:
    a, b = four.urls["api-a"], four.urls["api-b"]
    ingest = [four.urls["ingest-1"], four.urls["ingest-2"]]
    username = f"op{uuid.uuid4().hex[:6]}"
    secret = await asyncio.to_thread(cli_add_user, four.env, username, "sys_admin", PASSWORD)
    device = f"aq4p-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=60) as http:
        made = await http.post(f"{b}/api/iot/devices", headers=server_headers(), json={
            "name": device, "profile": "air-quality", "lon": 110.3, "lat": 20.0, "district": "D1"})
        assert made.status_code == 201, made.text
        rule = await http.post(f"{a}/api/ops/rules", headers=server_headers(), json={
            "id": "pm25-sustained-4p", "name": "PM2.5 > 300 for 3 s", "entityTypes": ["AirQualityObserved"],
            "severity": "critical",
            "condition": {"sustained": {"attr": "pm25", "op": ">", "value": 300, "for": "PT3S"}}})
        assert rule.status_code == 201, rule.text
        before = [await ingested(http, base) for base in ingest]

        await asyncio.to_thread(sign_in_cockpit, browser, a, username, secret, four.used_codes)
        # The provisioning's own entity changes leave the 10-s window first: from then on, what A counts
        # is readings (A ingests nothing itself).
        for _ in range(600):
            if await asyncio.to_thread(cockpit_rate, browser) == 0.0:
                break
            await asyncio.sleep(0.2)
        assert await asyncio.to_thread(cockpit_rate, browser) == 0.0

        # Readings, one every 0.3 s, until both ingest processes have stored some and the alarm is up
        # (a loaded machine may hand the first dozens all to one worker).
        subject = f"cityos.devices.{device}.telemetry"
        rates: list[float] = []
        both = fired = False
        for k in range(400):
            body = orjson.dumps({"ts": int(time.time() * 1000), "values": {"pm25": 310 + k % 50}})
            await publisher.publish(subject, body)
            await asyncio.sleep(0.3)
            if k % 5 == 4:
                counts = [await ingested(http, base) for base in ingest]
                both = all(now > then for now, then in zip(counts, before, strict=True))
                fired = bool(await sustained_alarms(http, b, device))
                rates.append(await asyncio.to_thread(cockpit_rate, browser))
                if both and fired and max(rates) > 0:
                    break
        assert both, "the readings did not reach both ingest processes"
        assert fired and max(rates) > 0, rates
        # The cockpit on A lists the alarm raised wherever the entity's partition is handled.
        from selenium.webdriver.common.by import By

        def alarm_listed() -> bool:
            return any(device in row.text for row in browser.find_elements(By.CSS_SELECTOR, ".cityos-alarm-row"))

        for _ in range(300):
            if await asyncio.to_thread(alarm_listed):
                break
            await asyncio.sleep(0.2)
        assert await asyncio.to_thread(alarm_listed)

        # Exactly one alarm for the window, though its readings went through two processes; seen alike
        # from both API processes.
        found_b = await sustained_alarms(http, b, device)
        found_a = await sustained_alarms(http, a, device)
        assert len(found_b) == 1 and [x["id"] for x in found_a] == [found_b[0]["id"]]
        assert found_b[0]["status"] == "active"
