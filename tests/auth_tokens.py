"""Bearer tokens for tests: real JWTs signed by the running app's token issuer.

Tokens are minted directly (no password grant, no argon2) so that domain tests stay fast; the
token endpoint itself is tested in tests/security.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class Auth:
    app: Any

    def token(self, role: str, department: str | None = None, districts: Iterable[str] = (), tenant: str = "",
              user_id: str | None = None, username: str | None = None,
              departments: Iterable[str] | None = None) -> str:
        """A signed access token for a principal with these claims (`departments` defaults to [department])."""
        issuer = self.app.state.security.service.issuer
        deps = list(departments) if departments is not None else ([department] if department else [])
        subject = user_id or uuid.uuid4().hex
        claims = {"kind": "user", "usr": username or f"{role}-{subject[:8]}", "role": role, "tnt": tenant,
                  "dep": department, "deps": deps, "dis": list(districts), "sid": uuid.uuid4().hex, "mfa": True}
        access, _jti, _ttl = issuer.issue(subject, claims)
        return str(access)

    def headers(self, role: str, **claims: Any) -> dict[str, str]:
        """`Authorization` header for `role`; keyword arguments as for `token`."""
        return {"Authorization": f"Bearer {self.token(role, **claims)}"}


@pytest.fixture
def auth(app: Any) -> Auth:
    return Auth(app)
