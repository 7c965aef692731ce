"""Bearer tokens for tests: real JWTs signed by the running app's token issuer.

Tokens are minted directly (no password grant, no argon2) so that domain tests stay fast; the
token endpoint itself is tested in tests/security. They are valid from 2000 to 2100 unless
`issued_at`/`ttl` say otherwise, so tests that move the injectable clock keep their tokens.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
LONG_TTL = 100 * 365 * 86400


@dataclass
class Auth:
    app: Any

    def token(self, role: str, department: str | None = None, districts: Iterable[str] = (), tenant: str = "",
              user_id: str | None = None, username: str | None = None,
              departments: Iterable[str] | None = None, issued_at: datetime | None = None,
              ttl: int | None = None) -> str:
        """A signed access token for a principal with these claims (`departments` defaults to [department])."""
        issuer = self.app.state.security.service.issuer
        deps = list(departments) if departments is not None else ([department] if department else [])
        subject = user_id or uuid.uuid4().hex
        claims = {"kind": "user", "usr": username or f"{role}-{subject[:8]}", "role": role, "tnt": tenant,
                  "dep": department, "deps": deps, "dis": list(districts), "sid": uuid.uuid4().hex, "mfa": True}
        if issued_at is None and ttl is None:
            issued_at, ttl = LONG_AGO, LONG_TTL
        access, _jti, _ttl = issuer.issue(subject, claims, ttl=ttl, now=issued_at)
        return str(access)

    def headers(self, role: str, **claims: Any) -> dict[str, str]:
        """`Authorization` header for `role`; keyword arguments as for `token`."""
        return {"Authorization": f"Bearer {self.token(role, **claims)}"}


@pytest.fixture
def auth(app: Any) -> Auth:
    return Auth(app)


def server_headers(role: str = "sys_admin", **claims: Any) -> dict[str, str]:
    """A bearer header for a `cityos serve` subprocess started with this process's environment.

    In development mode the server signs with the key in CITYOS_DATA_DIR (the same file this
    process reads), so a token minted here is accepted there.
    """
    from cityos.security.settings import SecuritySettings
    from cityos.security.tokens import TokenIssuer, load_signing_keys

    settings = SecuritySettings()
    issuer = TokenIssuer(settings, load_signing_keys(settings))
    claims = {"kind": "user", "usr": f"{role}-server-test", "role": role, "tnt": "", "dep": None, "deps": [],
              "dis": [], "sid": uuid.uuid4().hex, "mfa": True, **claims}
    token, _jti, _ttl = issuer.issue(uuid.uuid4().hex, claims, ttl=LONG_TTL, now=LONG_AGO)
    return {"Authorization": f"Bearer {token}"}
