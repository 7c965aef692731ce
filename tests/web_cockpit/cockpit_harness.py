"""End-to-end harness for the cockpit: a REAL `cityos serve` process and headless Chromium.

Backend: SQLite only (a temporary file). The cockpit reads everything through the REST APIs,
whose PostgreSQL behaviour the domain suites cover; a second server per backend would double the
slowest tests in the tree for no UI coverage.

The server gets its own data directory (keys, UI session store), no MQTT ingest workers, cheap
argon2 parameters, and users made the way an operator makes them: the first administrator with
`cityos user add --totp`, tenant-wide roles (operator, auditor) the same way (the API gives them only
with a two-person approval), the others through `POST /auth/users` (TOTP enrolled; codes computed
with pyotp from the returned `otpauth://` URI).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cityos.security.policy import appointment_approval
from web_harness import (
    TokenCache,
    UsedSteps,
    bootstrap_admin_with_recovery,
    cli_add_user,
    cli_approve_with_recovery,
    free_port,
    fresh_code,
    headless_chromium,
    running_server,
    server_env,
    totp_secret,
)

__all__ = ["PASSWORD", "SCREENS", "Server", "browser", "fresh_code", "screenshot", "server", "totp_secret"]

SCREENS = Path(os.environ.get("CITYOS_SCREENSHOTS", "/tmp/cityos-screens"))
PASSWORD = "Correct-Horse-Battery-42"


@dataclass
class Server:
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    admin_secret: str = ""
    recovery_code: str = ""  # the break-glass code, spent by the first `appoint_admin`
    used_codes: UsedSteps = field(default_factory=UsedSteps)
    tokens: TokenCache = field(default_factory=TokenCache)

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
        """The administrator's access token, minted again before it expires (the session's server outlives
        one token's lifetime, CITYOS_ACCESS_TOKEN_SECONDS, 300 s, when the machine is loaded)."""
        return self.tokens.get("admin", lambda: self.login("admin", self.admin_secret))

    def create_user(self, username: str, role: str, department: str | None = None) -> str | None:
        """A user with PASSWORD; returns the TOTP secret when the role needs one.

        Tenant-wide roles (operator, auditor, an official without department) need two persons
        through the API: the harness makes them with the CLI, as an installer would.
        """
        if appointment_approval(role, department) is not None:
            return cli_add_user(self.env, username, role, PASSWORD, department)
        staff = role in ("official", "operator", "dept_admin", "auditor", "sys_admin")
        body: dict[str, Any] = {"username": username, "password": PASSWORD, "role": role, "totp": staff}
        if department:
            body["department"] = department
        with self.http(self.admin) as http:
            response = http.post("/auth/users", json=body)
        assert response.status_code == 201, response.text
        uri = response.json().get("otpauth_uri")
        return totp_secret(uri) if uri else None


    def appoint_admin(self, username: str, department: str) -> str:
        """A department administrator, appointed the two-person way (#5): the administrator nominates,
        the break-glass recovery code approves (once per server), the user enrols TOTP with the
        enrolment code; returns the TOTP secret."""
        assert self.recovery_code, "the recovery code is spent: one appointment per server"
        with self.http(self.admin) as http:
            asked = http.post("/auth/approvals", json={
                "kind": "create_user", "reason": "browser test",
                "params": {"username": username, "role": "dept_admin", "department": department}})
            assert asked.status_code == 201, asked.text
            approval = asked.json()["id"]
            cli_approve_with_recovery(self.env, approval, self.recovery_code)
            self.recovery_code = ""
            done = http.post(f"/auth/approvals/{approval}/execute")
            assert done.status_code == 200, done.text
            code = done.json()["result"]["enrolment_code"]
        with self.http() as http:
            enrolled = http.post("/auth/totp/enroll", data={"username": username, "password": PASSWORD,
                                                             "enrolment_code": code})
            assert enrolled.status_code == 200, enrolled.text
            secret = totp_secret(enrolled.json()["otpauth_uri"])
            confirmed = http.post("/auth/totp/confirm", data={"username": username, "password": PASSWORD,
                                                               "totp": fresh_code(secret, self.used_codes)})
            assert confirmed.status_code == 200, confirmed.text
        return secret


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cockpit-e2e")
    port = free_port()
    env = server_env(root, port)
    # A low storm threshold, so a test can raise a storm with a few reports; the city's zone spelt out.
    env.update(CITYOS_INCIDENT_STORM_PER_MINUTE="3", CITYOS_TIMEZONE="Asia/Shanghai")
    admin_secret, recovery = bootstrap_admin_with_recovery(env, PASSWORD, upgrade_timeout=180, add_timeout=120)
    log = root / "server.log"
    # Generous: on a loaded CI machine the server has been seen to need over 90 s to answer.
    with running_server(env, port, log, start_timeout=240, poll_interval=0.3) as process:
        yield Server(f"http://127.0.0.1:{port}", env, process, log, admin_secret=admin_secret,
                     recovery_code=recovery)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    needed = "chromium and chromedriver are needed for the cockpit's browser tests"
    with headless_chromium(window_size=(1920, 1080), page_load_timeout=60, skip_reason=needed) as driver:
        yield driver


def screenshot(driver: Any, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
