"""Tokens: grants, discovery, and each attack on a token (expired, forged, alg confusion, revoked, replay)."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sec_harness import PASSWORD, Harness


async def test_discovery_and_jwks(sec: Harness) -> None:
    disc = (await sec.client.get("/.well-known/openid-configuration")).json()
    assert disc["issuer"] == "http://cityos.test"
    assert disc["token_endpoint"].endswith("/auth/token")
    keys = (await sec.client.get("/.well-known/jwks.json")).json()["keys"]
    assert keys and keys[0]["kty"] == "OKP" and keys[0]["crv"] == "Ed25519" and "d" not in keys[0]


async def test_password_grant_and_me(sec: Harness) -> None:
    alice = await sec.user("alice", "citizen", tenant="t1")
    tokens = await sec.token(alice)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 300
    assert tokens["refresh_token"].startswith("rt_")
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "EdDSA" and header["kid"] == sec.service.issuer.keys[0].kid
    me = (await sec.client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})).json()
    assert me["username"] == "alice" and me["role"] == "citizen" and me["tenant"] == "t1"
    # Anonymous has no /auth/me; a non-Bearer scheme is refused.
    assert (await sec.client.get("/auth/me")).status_code == 401
    assert (await sec.client.get("/auth/me", headers={"Authorization": "Basic abc"})).status_code == 401


async def test_wrong_password_and_bad_grant(sec: Harness) -> None:
    await sec.user("bob")
    r = await sec.client.post("/auth/token", data={"grant_type": "password", "username": "bob", "password": "x"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = await sec.client.post("/auth/token", data={"grant_type": "implicit"})
    assert r.json()["error"] == "unsupported_grant_type"
    r = await sec.client.post("/auth/token", json={"grant_type": "password"})
    assert r.status_code == 415
    r = await sec.client.post("/auth/token", content=b"grant_type=password&grant_type=client_credentials",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.json()["error"] == "invalid_request"


async def _me(sec: Harness, token: str) -> int:
    return (await sec.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})).status_code


async def test_expired_token(sec: Harness) -> None:
    tokens = await sec.token(await sec.user("carol"))
    assert await _me(sec, tokens["access_token"]) == 200
    sec.now[0] += timedelta(seconds=300 + 31)
    assert await _me(sec, tokens["access_token"]) == 401


def _forge(claims: dict[str, object], key: object, alg: str, kid: str) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})  # type: ignore[arg-type]


async def test_forged_tokens(sec: Harness) -> None:
    tokens = await sec.token(await sec.user("dave", tenant="t1"))
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    kid = sec.service.issuer.keys[0].kid
    claims["role"] = "sys_admin"
    # 1. signed by another Ed25519 key under our kid
    assert await _me(sec, _forge(claims, Ed25519PrivateKey.generate(), "EdDSA", kid)) == 401
    # 2. alg=none
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": kid}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert await _me(sec, f"{head}.{body}.") == 401
    # 3. HS256 keyed with our public key (algorithm confusion), done by hand since PyJWT refuses.
    import hashlib
    import hmac
    public_pem = sec.service.issuer.keys[0].public.public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": kid}).encode()).rstrip(b"=").decode()
    sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    assert await _me(sec, forged) == 401
    # 4. our signature, payload changed afterwards
    parts = tokens["access_token"].split(".")
    assert await _me(sec, f"{parts[0]}.{body}.{parts[2]}") == 401
    # 5. unknown kid; wrong audience / issuer signed with our real key
    assert await _me(sec, _forge(claims, sec.service.issuer.keys[0].private, "EdDSA", "nope")) == 401
    for change in ({"aud": "other"}, {"iss": "http://evil"}):
        assert await _me(sec, _forge({**claims, **change}, sec.service.issuer.keys[0].private, "EdDSA", kid)) == 401
    # 6. garbage
    for junk in ("a.b.c", "x", "....", "Bearer"):
        assert await _me(sec, junk) == 401


async def test_oversized_token(sec: Harness) -> None:
    tokens = await sec.token(await sec.user("erin"))
    big = tokens["access_token"] + "A" * 9000
    r = await sec.client.get("/auth/me", headers={"Authorization": f"Bearer {big}"})
    assert r.status_code == 401 and "too large" in r.json()["detail"]


async def test_revoked_token(sec: Harness) -> None:
    tokens = await sec.token(await sec.user("frank"))
    assert await _me(sec, tokens["access_token"]) == 200
    r = await sec.client.post("/auth/revoke", data={"token": tokens["access_token"]})
    assert r.status_code == 200
    assert await _me(sec, tokens["access_token"]) == 401
    r = await sec.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 400


async def test_refresh_rotation_and_replay(sec: Harness) -> None:
    first = await sec.token(await sec.user("gina"))
    r = await sec.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"]})
    assert r.status_code == 200
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert await _me(sec, second["access_token"]) == 200
    # The thief replays the rotated token: refused, and the whole family dies.
    r = await sec.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"]})
    assert r.status_code == 400 and "reuse" in r.json()["error_description"]
    assert await _me(sec, second["access_token"]) == 401
    r = await sec.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": second["refresh_token"]})
    assert r.status_code == 400
    rows = await sec.state.audit.search(__import__("cityos.security.audit", fromlist=["AuditQuery"])
                                        .AuditQuery(action="auth.refresh_replay"), masked=False)
    assert len(rows) == 1


async def test_refresh_expires(sec: Harness) -> None:
    first = await sec.token(await sec.user("hank"))
    sec.now[0] += timedelta(days=31)
    r = await sec.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"]})
    assert r.status_code == 400


async def test_client_credentials(sec: Harness) -> None:
    secret = await sec.service.create_client("traffic-app", "operator", tenant="t1")
    r = await sec.client.post("/auth/token", data={"grant_type": "client_credentials"},
                              auth=("traffic-app", secret))
    assert r.status_code == 200, r.text
    me = (await sec.client.get("/auth/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})).json()
    assert me["kind"] == "service" and me["role"] == "operator"
    r = await sec.client.post("/auth/token", data={"grant_type": "client_credentials", "client_id": "traffic-app",
                                                   "client_secret": "wrong"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_password_is_argon2(sec: Harness) -> None:
    await sec.user("ivan")
    row = await sec.service.get_user("ivan")
    assert row["password_hash"].startswith("$argon2id$") and PASSWORD not in str(row)
