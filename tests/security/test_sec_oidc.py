"""External OIDC SSO against a tiny real identity provider (HTTP on 127.0.0.1: discovery + JWKS, ES256)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sec_harness import Harness

from cityos.security.tokens import OidcTrust


class Provider:
    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {"k1": ec.generate_private_key(ec.SECP256R1())}
        self.hits: list[str] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.hits.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    body: Any = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    body = {"keys": [{**json.loads(ECAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig",
                                      "alg": "ES256"} for kid, k in provider.keys.items()]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, kid: str = "k1", key: ec.EllipticCurvePrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": "cityos-app", "sub": "u-123", "iat": now, "exp": now + 300,
                   "preferred_username": "wang", "name": "王小明", **claims}
        return jwt.encode(payload, key or self.keys[kid], algorithm="ES256", headers={"kid": kid})


@pytest.fixture
def idp() -> Iterator[Provider]:
    provider = Provider()
    try:
        yield provider
    finally:
        provider.server.shutdown()
        provider.server.server_close()


@pytest.fixture
def sso(sec: Harness, idp: Provider) -> Harness:
    from cityos.core import clock

    clock.reset_clock()  # the provider signs with the wall clock
    sec.service.oidc = OidcTrust(idp.issuer, "cityos-app", refetch_interval=0.0)
    return sec


async def test_jwt_bearer_grant_maps_a_local_user(sso: Harness, idp: Provider) -> None:
    r = await sso.client.post("/auth/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                                   "assertion": idp.sign(cityos_role="enterprise")})
    assert r.status_code == 200, r.text
    me = (await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})).json()
    assert me["username"] == "wang@127.0.0.1" and me["role"] == "enterprise"
    # The external token itself is accepted as a bearer token too, mapped to the same user.
    me2 = (await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {idp.sign()}"})).json()
    assert me2["id"] == me["id"]
    assert "/.well-known/openid-configuration" in idp.hits and "/jwks" in idp.hits


async def test_idp_cannot_grant_admin(sso: Harness, idp: Provider) -> None:
    r = await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {idp.sign(cityos_role='sys_admin')}"})
    assert r.json()["role"] == "citizen"


@pytest.mark.parametrize("bad", ["aud", "iss", "exp", "key", "kid", "alg"])
async def test_invalid_external_tokens(sso: Harness, idp: Provider, bad: str) -> None:
    now = int(time.time())
    token = {
        "aud": lambda: idp.sign(aud="someone-else"),
        "iss": lambda: idp.sign(iss="http://127.0.0.1:1"),
        "exp": lambda: idp.sign(iat=now - 3600, exp=now - 600),
        "key": lambda: idp.sign(key=ec.generate_private_key(ec.SECP256R1())),
        "kid": lambda: idp.sign(kid="k9", key=ec.generate_private_key(ec.SECP256R1())),
        "alg": lambda: jwt.encode({"iss": idp.issuer, "aud": "cityos-app", "sub": "x", "iat": now, "exp": now + 60},
                                  "not-the-key-" * 4, algorithm="HS256", headers={"kid": "k1"}),
    }[bad]()
    r = await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, (bad, r.text)


async def test_jwks_refetched_on_unknown_kid(sso: Harness, idp: Provider) -> None:
    assert (await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {idp.sign()}"})).status_code == 200
    trust = sso.service.oidc
    assert trust is not None
    fetches = trust.fetches
    # Cached: a second token with a known kid does not refetch.
    assert (await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {idp.sign()}"})).status_code == 200
    assert trust.fetches == fetches
    idp.keys["k2"] = ec.generate_private_key(ec.SECP256R1())  # the provider rolls its key
    r = await sso.client.get("/auth/me", headers={"Authorization": f"Bearer {idp.sign(kid='k2')}"})
    assert r.status_code == 200 and trust.fetches == fetches + 1
