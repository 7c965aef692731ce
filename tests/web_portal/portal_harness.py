"""End-to-end harness for the 一网通办 portal: a REAL `cityos serve` process and headless Chromium.

SQLite in a temporary directory; its own data directory (keys, UI sessions); no MQTT ingest;
cheap argon2. The first administrator is made with `cityos user add --totp`, everybody else
through `POST /auth/users`; TOTP codes are computed with pyotp from the `otpauth://` URIs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cityos.security.policy import appointment_approval
from web_harness import (
    TokenCache,
    UsedSteps,
    bootstrap_admin,
    cli_add_user,
    free_port,
    fresh_code,
    headless_chromium,
    running_server,
    server_env,
    totp_secret,
)

SCREENS = Path("/tmp/cityos-screens")
DOCS_SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "Portal-Pass-Word-2025"


@dataclass
class Portal:
    url: str
    log: Path
    admin_secret: str
    env: dict[str, str]
    used: UsedSteps = field(default_factory=UsedSteps)
    secrets: dict[str, str] = field(default_factory=dict)
    tokens: TokenCache = field(default_factory=TokenCache)

    def code(self, username: str) -> str:
        """A TOTP code of `username` not used yet (the server refuses a time step twice)."""
        secret = self.secrets[username] if username != "admin" else self.admin_secret
        return fresh_code(secret, self.used)

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0,
                            headers={"Authorization": f"Bearer {token}"} if token else {})

    def token(self, username: str) -> str:
        """An access token of `username`, reused for TOKEN_REUSE_SECONDS after it was minted."""
        return self.tokens.get(username, lambda: self._mint(username))

    def _mint(self, username: str) -> str:
        form = {"grant_type": "password", "username": username, "password": PASSWORD}
        if username == "admin" or username in self.secrets:
            form["totp"] = self.code(username)
        with self.http() as http:
            reply = http.post("/auth/token", data=form)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["access_token"])

    @property
    def admin(self) -> str:
        """The administrator's access token, minted again well before it expires (the session's server
        outlives one token's lifetime, CITYOS_ACCESS_TOKEN_SECONDS, 300 s, when the machine is loaded)."""
        return self.token("admin")

    def add_user(self, username: str, role: str, department: str | None = None) -> None:
        if appointment_approval(role, department) is not None:
            # Tenant-wide roles (the auditor) need two persons through the API: made with the CLI.
            self.secrets[username] = cli_add_user(self.env, username, role, PASSWORD, department)
            return
        staff = role in ("official", "operator", "dept_admin", "sys_admin")
        body: dict[str, Any] = {"username": username, "password": PASSWORD, "role": role, "totp": staff,
                                "display_name": username}
        if department:
            body["department"] = department
        with self.http(self.admin) as http:
            reply = http.post("/auth/users", json=body)
        assert reply.status_code == 201, reply.text
        if staff:
            self.secrets[username] = totp_secret(reply.json()["otpauth_uri"])


@dataclass(frozen=True)
class Installation:
    """A fresh installation made the operator's way, once per session: `cityos db upgrade`, then the first
    administrator with `cityos user add --totp` (its database and data directory under `root`)."""

    root: Path
    admin_secret: str

    def copy_to(self, root: Path) -> str:
        """The installation's database and data directory copied into `root` (each module's server starts
        from its own copy, as fresh as before); returns the administrator's TOTP secret. The two CLI
        processes took about 5 s per module on an idle machine and 8 s on a loaded one."""
        for database in self.root.glob("cityos.db*"):  # with a -wal/-shm file, should one be left
            shutil.copy2(database, root / database.name)
        shutil.copytree(self.root / "data", root / "data")
        return self.admin_secret


@pytest.fixture(scope="session")
def portal_installation(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    root = tmp_path_factory.mktemp("portal-installation")
    env = server_env(root, free_port())
    return Installation(root, bootstrap_admin(env, PASSWORD, upgrade_timeout=300, add_timeout=300))


@pytest.fixture(scope="module")
def portal_server(tmp_path_factory: pytest.TempPathFactory, portal_installation: Installation) -> Iterator[Portal]:
    root = tmp_path_factory.mktemp("portal-e2e")
    port = free_port()
    env = server_env(root, port)
    admin_secret = portal_installation.copy_to(root)
    log = root / "server.log"
    with running_server(env, port, log, start_timeout=180, poll_interval=0.5):
        yield Portal(f"http://127.0.0.1:{port}", log, admin_secret, env)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    needed = "the portal's browser test needs /usr/bin/chromium and /usr/bin/chromedriver"
    with headless_chromium(window_size=(1600, 1000), page_load_timeout=90, skip_reason=needed) as driver:
        yield driver


class Browser:
    """Small selenium helpers for NiceGUI/Quasar pages."""

    def __init__(self, driver: Any, portal: Portal) -> None:
        self.driver = driver
        self.portal = portal

    def wait(self, condition: Callable[[Any], Any], timeout: float = 60.0, what: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25,
                                 ignored_exceptions=[StaleElementReferenceException]).until(condition)
        except TimeoutException:
            self.shot(f"failure-{what or 'wait'}")
            raise AssertionError(f"timed out waiting for {what}; at {self.driver.current_url}\n"
                                 f"{self.text()[:3000]}") from None

    def find(self, css: str, timeout: float = 60.0) -> Any:
        from selenium.webdriver.common.by import By

        def visible(driver: Any) -> Any:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    return element
            return None

        return self.wait(visible, timeout, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return [e for e in self.driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        try:
            return str(self.driver.find_element(By.TAG_NAME, "body").text)
        except Exception:
            return ""

    def wait_text(self, text: str, timeout: float = 60.0) -> None:
        self.wait(lambda _d: text in self.text(), timeout, repr(text))

    def click(self, css: str, timeout: float = 60.0) -> None:
        element = self.find(css, timeout)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()

    def type(self, css: str, value: str) -> None:
        """Replace the field's text by typing (selenium's clear() bypasses Vue's input events)."""
        from selenium.webdriver.common.keys import Keys

        element = self.find(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.send_keys(Keys.CONTROL, "a")
        element.send_keys(Keys.DELETE)
        element.send_keys(value)

    def choose(self, css: str, option_text: str) -> None:
        """Open a Quasar select and click the option containing `option_text`."""
        from selenium.webdriver.common.by import By

        def option(driver: Any) -> Any:
            for item in driver.find_elements(By.CSS_SELECTOR, ".q-menu .q-item"):
                if item.is_displayed() and option_text in item.text:
                    return item
            return None

        for attempt in range(3):  # a menu opened while the page still updates may close again
            self.click(css)
            try:
                self.wait(option, 8 if attempt < 2 else 30, f"option {option_text!r}").click()
                break
            except AssertionError:
                if attempt == 2:
                    raise
        self.wait(lambda d: not any(m.is_displayed() for m in d.find_elements(By.CSS_SELECTOR, ".q-menu")), 10,
                  "menu closed")

    def go(self, path: str) -> None:
        self.driver.get(self.portal.url + path)

    def login(self, username: str, next_path: str) -> None:
        self.go("/logout")
        self.driver.delete_all_cookies()
        self.go(f"/login?next={next_path}")
        self.type(".login-username input", username)
        self.type(".login-password input", PASSWORD)
        if username in self.portal.secrets:
            self.type(".login-totp input", self.portal.code(username))
        self.click(".login-submit")
        if username in self.portal.secrets:
            self.wait(lambda d: "/login" not in d.current_url or "TOTP" in self._login_error(), 60,
                      f"login of {username}")
            if "TOTP" in self._login_error():
                # Seen once in a CI run on PostgreSQL with no cause found (the API logins of the same
                # user around it passed): one retry with the next code. A second refusal fails the test
                # with the page's text; replay refusal itself is tested in tests/security.
                self.type(".login-password input", PASSWORD)
                self.type(".login-totp input", self.portal.code(username))
                self.click(".login-submit")
        self.wait(lambda d: "/login" not in d.current_url, 60, f"login of {username}")

    def _login_error(self) -> str:
        from selenium.webdriver.common.by import By

        try:
            errors = self.driver.find_elements(By.CSS_SELECTOR, ".login-error")
            return " ".join(e.text for e in errors if e.is_displayed())
        except Exception:  # the page navigated away while reading
            return ""

    def shot(self, name: str, keep: bool = False, at: str | None = None) -> Path:
        """A screenshot; scrolled to the top, or to the element `at`."""
        if at:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'}); window.scrollBy(0, -80);",
                                       self.find(at))
        else:
            self.driver.execute_script("window.scrollTo(0, 0);")
        time.sleep(0.4)
        SCREENS.mkdir(parents=True, exist_ok=True)
        path = SCREENS / f"portal-{name}.png"
        self.driver.save_screenshot(str(path))
        # Tests never rewrite tracked files by default: CITYOS_DOC_SCREENSHOTS=1 refreshes docs/screenshots.
        if keep and os.environ.get("CITYOS_DOC_SCREENSHOTS") == "1":
            DOCS_SCREENS.mkdir(parents=True, exist_ok=True)
            (DOCS_SCREENS / path.name).write_bytes(path.read_bytes())
        return path
