"""End-to-end harness for the cockpit: a REAL `cityos serve` process and headless Chromium.

Backend: SQLite only (a temporary file). The cockpit reads everything through the REST APIs,
whose PostgreSQL behaviour the domain suites cover; a second server per backend would double the
slowest tests in the tree for no UI coverage.

The server gets its own data directory (keys, UI session store), no MQTT ingest workers, cheap
argon2 parameters, and users made the way an operator makes them: the first administrator with
`cityos user add --totp`, the others through `POST /auth/users` (TOTP enrolled; codes computed
with pyotp from the returned `otpauth://` URI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest

SCREENS = Path(os.environ.get("CITYOS_SCREENSHOTS", "/tmp/cityos-screens"))
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "Correct-Horse-Battery-42"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def totp_secret(uri: str) -> str:
    return parse_qs(urlsplit(uri).query)["secret"][0]


def fresh_code(secret: str, used: set[str]) -> str:
    """A TOTP code not used before (the server refuses a time step twice): waits for the next step."""
    totp = pyotp.TOTP(secret)
    while True:
        code = totp.now()
        if code not in used:
            used.add(code)
            return code
        time.sleep(1.0)


@dataclass
class Server:
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    admin_secret: str = ""
    used_codes: set[str] = field(default_factory=set)
    _admin_token: str | None = None

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def login(self, username: str, secret: str | None) -> str:
        form = {"grant_type": "password", "username": username, "password": PASSWORD}
        if secret:
            form["totp"] = fresh_code(secret, self.used_codes)
        with self.http() as http:
            response = http.post("/auth/token", data=form)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    @property
    def admin(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.login("admin", self.admin_secret)
        return self._admin_token

    def create_user(self, username: str, role: str, department: str | None = None) -> str | None:
        """A user with PASSWORD; returns the TOTP secret when the role needs one."""
        staff = role in ("official", "operator", "dept_admin", "auditor", "sys_admin")
        body: dict[str, Any] = {"username": username, "password": PASSWORD, "role": role, "totp": staff}
        if department:
            body["department"] = department
        with self.http(self.admin) as http:
            response = http.post("/auth/users", json=body)
        assert response.status_code == 201, response.text
        uri = response.json().get("otpauth_uri")
        return totp_secret(uri) if uri else None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cockpit-e2e")
    port = _free_port()
    env = {**os.environ,
           "CITYOS_DATABASE_URL": f"sqlite:///{root / 'cityos.db'}",
           "CITYOS_DATA_DIR": str(root / "data"),
           "CITYOS_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "CITYOS_INGEST_WORKERS": "0",
           "CITYOS_MQTT_URL": f"mqtt://127.0.0.1:{_free_port()}",
           "CITYOS_WEB": "1",
           "CITYOS_ARGON2_TIME_COST": "1",
           "CITYOS_ARGON2_MEMORY_KIB": "8192",
           "CITYOS_AUTH_RATE_PER_MINUTE": "1000",
           "COLUMNS": "500",  # rich must not wrap the otpauth URI
           "NO_COLOR": "1"}
    for name in ("CITYOS_IOT_ADMIN_TOKEN", "CITYOS_WEB_STORAGE_SECRET"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "cityos.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=180)
    made = subprocess.run([*cli, "user", "add", "admin", "--role", "sys_admin", "--password", PASSWORD, "--totp"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    uri = next(word for word in made.stdout.split() if word.startswith("otpauth://"))
    log = root / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate",
                                    "--log-level", "warning"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", env, process, log, admin_secret=totp_secret(uri))
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()) or not Path(CHROMEDRIVER).exists():
        pytest.skip("chromium and chromedriver are needed for the cockpit's browser tests")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1920,1080", "--lang=zh-CN", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
