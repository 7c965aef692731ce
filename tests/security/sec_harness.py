"""Shared helpers and fixtures of the security tests (imported by conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from cityos.core import clock
from cityos.security.api import SecurityState
from cityos.security.approvals import ApprovalService
from cityos.security.audit import AuditLog, purge_for_tests
from cityos.security.crypto import load_keyring
from cityos.security.service import NewUser, SecurityService
from cityos.security.settings import SecuritySettings
from cityos.security.tokens import TokenIssuer, load_signing_keys

PASSWORD = "Correct-Horse-9-battery"
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


@pytest.fixture
def now() -> Iterator[list[datetime]]:
    """A movable clock: now[0] is the time."""
    moment = [T0]
    clock.set_clock(lambda: moment[0])
    try:
        yield moment
    finally:
        clock.reset_clock()


def test_settings(data_dir: Path, **overrides: Any) -> SecuritySettings:
    base = SecuritySettings(env="development", data_dir=data_dir, jwt_key_file=None, data_keys=None,
                            issuer="http://cityos.test", audience="cityos", argon2_time_cost=1,
                            argon2_memory_kib=1024, revocation_cache_seconds=0, auth_rate_per_minute=100_000,
                            oidc_issuer=None, admin_password=None)
    return replace(base, **overrides)


@dataclass
class Harness:
    app: Any
    state: SecurityState
    client: httpx.AsyncClient
    now: list[datetime]
    engine: Any

    @property
    def service(self) -> SecurityService:
        return self.state.service

    async def user(self, username: str, role: str = "citizen", tenant: str = "", department: str | None = None,
                   **kw: Any) -> NewUser:
        from cityos.security.policy import TOTP_ROLES
        return await self.service.create_user(username, PASSWORD, role, tenant=tenant, department=department,
                                              with_totp=role in TOTP_ROLES, allow_admin=True, **kw)

    def code(self, new: NewUser, step_offset: int = 0) -> str:
        assert new.totp_secret
        totp = pyotp.TOTP(new.totp_secret)
        return totp.at(int(self.now[0].timestamp()) + step_offset * 30)

    async def token(self, new: NewUser, password: str = PASSWORD) -> dict[str, Any]:
        form = {"grant_type": "password", "username": new.username, "password": password}
        if new.totp_secret:
            form["totp"] = self.code(new)
        r = await self.client.post("/auth/token", data=form)
        assert r.status_code == 200, r.text
        # Each TOTP step can be used once: move on so the next login gets a fresh code.
        from datetime import timedelta
        self.now[0] += timedelta(seconds=31)
        return dict(r.json())

    async def bearer(self, new: NewUser) -> dict[str, str]:
        return {"Authorization": f"Bearer {(await self.token(new))['access_token']}"}


async def build_state(app: Any, settings: SecuritySettings) -> SecurityState:
    engine = app.state.engine
    lock = app.state.hub.service.store.write_lock
    audit = AuditLog(engine, write_lock=lock)
    service = SecurityService(engine, settings, TokenIssuer(settings, load_signing_keys(settings)),
                              load_keyring(settings), audit, None, lock)
    await audit.start()
    return SecurityState(settings, service, ApprovalService(service), audit)


@pytest.fixture
async def sec(app: Any, client: httpx.AsyncClient, tmp_path: Path, now: list[datetime]) -> AsyncIterator[Harness]:
    original = app.state.security
    # The security tests speak for themselves: no default sys_admin token (it is the other issuer's).
    client.headers.pop("Authorization", None)
    state = await build_state(app, test_settings(tmp_path))
    app.state.security = state
    try:
        yield Harness(app, state, client, now, app.state.engine)
    finally:
        await state.audit.stop()
        app.state.security = original
        await purge_for_tests(app.state.engine)


def swap_settings(h: Harness, **overrides: Any) -> None:
    """Change settings of the running harness (frozen dataclass: replaced)."""
    new = replace(h.state.settings, **overrides)
    h.state.settings = new
    h.service.settings = new
    h.service.issuer.settings = new
