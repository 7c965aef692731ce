"""Shared pieces of the browser harnesses (`web_cockpit/cockpit_harness`, `web_portal/portal_harness`).

A REAL `cityos serve` process on a free port (SQLite in a temporary directory, its own data directory,
no MQTT ingest, cheap argon2), its first administrator made with `cityos user add --totp`, and a
headless Debian Chromium driven through Selenium. What differs between the harnesses (timeouts,
window sizes, users, passwords) is passed in by them.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLI = [sys.executable, "-m", "cityos.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def totp_secret(uri: str) -> str:
    """The secret of an `otpauth://` URI."""
    return parse_qs(urlsplit(uri).query)["secret"][0]


class UsedSteps:
    """The last TOTP time step the tests used, per secret: the server accepts the current step and its
    neighbours (±1), each once and in increasing order, so it refuses that step and every earlier one."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}


# An API token is reused this long: well inside the server's 300-s access-token lifetime. A new token of a
# staff member spends one of their TOTP time steps (30 s, refused twice by the server), so minting one per
# request made a test wait half a minute for each.
TOKEN_REUSE_SECONDS = 120.0


class TokenCache:
    """Access tokens by username, each reused for TOKEN_REUSE_SECONDS after it was minted."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, username: str, mint: Callable[[], str]) -> str:
        token, minted = self._tokens.get(username, ("", 0.0))
        if not token or time.monotonic() - minted > TOKEN_REUSE_SECONDS:
            token = mint()
            self._tokens[username] = (token, time.monotonic())
        return token


def fresh_code(secret: str, used: UsedSteps) -> str:
    """A TOTP code the server accepts now: of the current step or the next (so two sign-ins of one person
    within 30 s need no wait), the first one above the last used; waits for the next step when both are."""
    totp = pyotp.TOTP(secret)
    while True:
        now = int(time.time()) // totp.interval
        step = max(now, used.last.get(secret, now - 1) + 1)
        if step <= now + 1:
            used.last[secret] = step
            return str(totp.at(step * totp.interval))
        time.sleep(1.0)


def server_env(root: Path, port: int) -> dict[str, str]:
    """The environment of a test server whose database and data directory live under `root`."""
    env = {**os.environ,
           "CITYOS_DATABASE_URL": f"sqlite:///{root / 'cityos.db'}",
           "CITYOS_DATA_DIR": str(root / "data"),
           "CITYOS_PUBLIC_URL": f"http://127.0.0.1:{port}",
           "CITYOS_INGEST_WORKERS": "0",
           "CITYOS_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
           "CITYOS_WEB": "1",
           "CITYOS_ARGON2_TIME_COST": "1",
           "CITYOS_ARGON2_MEMORY_KIB": "8192",
           "CITYOS_AUTH_RATE_PER_MINUTE": "1000",
           "COLUMNS": "500",  # rich must not wrap the otpauth URI
           "NO_COLOR": "1"}
    for name in ("CITYOS_IOT_ADMIN_TOKEN", "CITYOS_WEB_STORAGE_SECRET"):
        env.pop(name, None)
    return env


def cli_add_user(env: dict[str, str], username: str, role: str, password: str, department: str | None = None,
                 timeout: float = 120) -> str:
    """`cityos user add --totp` (the installation's root path, e.g. for tenant-wide roles such as
    operator and auditor, which the API gives only with a two-person approval); the TOTP secret."""
    command = [*CLI, "user", "add", username, "--role", role, "--password", password, "--totp"]
    if department:
        command += ["--department", department]
    made = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert made.returncode == 0, made.stdout + made.stderr
    uri = next(word for word in made.stdout.split() if word.startswith("otpauth://"))
    return totp_secret(uri)


def bootstrap_admin(env: dict[str, str], password: str, *, upgrade_timeout: float, add_timeout: float) -> str:
    """`cityos db upgrade`, then the sys_admin `admin` with `--totp`; returns its TOTP secret."""
    return bootstrap_admin_with_recovery(env, password, upgrade_timeout=upgrade_timeout, add_timeout=add_timeout)[0]


def bootstrap_admin_with_recovery(env: dict[str, str], password: str, *, upgrade_timeout: float,
                                  add_timeout: float) -> tuple[str, str]:
    """As `bootstrap_admin`, and the break-glass recovery code the first administrator's creation prints
    (a test spends it once to appoint a department administrator, the second person of #5)."""
    subprocess.run([*CLI, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=upgrade_timeout)
    made = subprocess.run([*CLI, "user", "add", "admin", "--role", "sys_admin", "--password", password, "--totp"],
                          env=env, capture_output=True, text=True, timeout=add_timeout)
    assert made.returncode == 0, made.stdout + made.stderr
    uri = next(word for word in made.stdout.split() if word.startswith("otpauth://"))
    recovery = re.search(r"envelope\):\s+(\S+)", made.stdout)
    assert recovery, made.stdout
    return totp_secret(uri), recovery.group(1)


def cli_approve_with_recovery(env: dict[str, str], approval: str, code: str, timeout: float = 120) -> None:
    """`cityos user approve <id> --recovery-code …`: the break-glass second person of a role appointment."""
    made = subprocess.run([*CLI, "user", "approve", approval, "--recovery-code", code], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert made.returncode == 0, made.stdout + made.stderr


@contextmanager
def running_server(env: dict[str, str], port: int, log: Path, *, start_timeout: float,
                   poll_interval: float) -> Iterator[subprocess.Popen[bytes]]:
    """`cityos serve` on 127.0.0.1:`port` (output to `log`) until /health answers; stopped on exit."""
    with open(log, "wb") as sink:
        process = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate",
                                    "--log-level", "warning"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}")
            time.sleep(poll_interval)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def headless_chromium(*, window_size: tuple[int, int], page_load_timeout: float, skip_reason: str,
                      lang: str = "zh-CN") -> Iterator[Any]:
    """A Selenium driver of headless Chromium; the test is skipped when Chromium or chromedriver is missing."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(skip_reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    width, height = window_size
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", f"--lang={lang}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(page_load_timeout)
    try:
        yield driver
    finally:
        driver.quit()
