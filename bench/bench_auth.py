"""Bearer tokens for the benchmarks: the hub API needs one since issue #5.

`bearer()` signs a sys_admin token (valid for a day) with the development signing key in
CITYOS_DATA_DIR, the key a `cityos serve` / uvicorn started with the same environment uses; for
an in-process app, `bearer(app)` uses that app's own issuer.
"""

from __future__ import annotations

import os
import uuid

# The issuer follows the address a server listens on unless CITYOS_PUBLIC_URL is set: pin it, so the token
# signed here and the benchmarked server (which inherits this environment) name the same issuer.
os.environ.setdefault("CITYOS_PUBLIC_URL", "http://127.0.0.1:8000")
from typing import Any


def bearer(app: Any = None, role: str = "sys_admin", tenant: str = "") -> dict[str, str]:
    from cityos.security.settings import SecuritySettings
    from cityos.security.tokens import TokenIssuer, load_signing_keys

    if app is not None:
        issuer = app.state.security.service.issuer
    else:
        settings = SecuritySettings()
        issuer = TokenIssuer(settings, load_signing_keys(settings))
    claims = {"kind": "user", "usr": f"bench-{role}", "role": role, "tnt": tenant, "dep": None, "deps": [],
              "dis": [], "sid": uuid.uuid4().hex, "mfa": True}
    token, _jti, _ttl = issuer.issue(f"bench-{uuid.uuid4().hex[:8]}", claims, ttl=86400)
    return {"Authorization": f"Bearer {token}"}
