"""Access tokens (JWT, EdDSA/Ed25519), refresh-token material, JWKS, and trust in an external OIDC issuer.

Signing keys come from ``CITYOS_JWT_KEY_FILE``: a PEM file holding one or more PKCS#8 Ed25519
private keys; the first signs, all verify (so a key can be rolled over without logging everyone
out). Without it, development mode generates ``<data dir>/jwt-signing.pem`` (mode 0600) on first
run; production refuses to start. Keys are never stored in the database.

Verification is strict: only ``alg=EdDSA`` with a known ``kid``; ``iss``, ``aud``, ``exp``,
``iat``, ``sub``, ``jti`` required; time checked against the injectable clock; tokens longer than
``CITYOS_MAX_TOKEN_BYTES`` are refused before parsing.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cityos.core import clock
from cityos.core.errors import ProblemError
from cityos.core.keyfiles import create_once
from cityos.core.outbound import DEFAULT_PORTS, AllowRule, Outbound, OutboundError
from cityos.security.settings import SecuritySettings

log = logging.getLogger("cityos.security.oidc")

_PEM_BLOCK = re.compile(rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----", re.S)
LEEWAY = 30  # seconds of clock skew tolerated on exp/iat/nbf


class InvalidToken(ProblemError):
    status, error_type, title = 401, "https://cityos.dev/errors/InvalidToken", "Invalid token"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                              f'error_description="{detail}"'})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_refresh_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        public = private.public_key()
        x = b64url(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        # RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
        return cls(b64url(hashlib.sha256(thumb.encode()).digest())[:16], private, public)

    def jwk(self) -> dict[str, str]:
        x = b64url(self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}

    def pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())


def load_signing_keys(settings: SecuritySettings) -> list[SigningKey]:
    if settings.jwt_key_file:
        path = Path(settings.jwt_key_file)
    elif settings.production:
        raise RuntimeError("production needs CITYOS_JWT_KEY_FILE")
    else:
        path = settings.data_dir / "jwt-signing.pem"
        generate_key_file(path)
    return load_key_file(path)


def generate_key_file(path: Path) -> None:
    """Create `path` (mode 0600) holding a new Ed25519 private key, unless it exists."""
    create_once(path, lambda: SigningKey.from_private(Ed25519PrivateKey.generate()).pem())


def load_key_file(path: Path) -> list[SigningKey]:
    """The Ed25519 keys of a PEM file of PKCS#8 private keys, the signing one first."""
    keys: list[SigningKey] = []
    for block in _PEM_BLOCK.findall(path.read_bytes()):
        private = serialization.load_pem_private_key(block, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise RuntimeError(f"{path}: only Ed25519 signing keys are supported")
        keys.append(SigningKey.from_private(private))
    if not keys:
        raise RuntimeError(f"{path} holds no PKCS#8 private key")
    return keys


@dataclass
class TokenIssuer:
    settings: SecuritySettings
    keys: list[SigningKey]
    _by_kid: dict[str, SigningKey] = field(init=False)

    def __post_init__(self) -> None:
        self._by_kid = {k.kid: k for k in self.keys}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def issue(self, subject: str, claims: dict[str, Any], ttl: int | None = None,
              now: datetime | None = None) -> tuple[str, str, int]:
        """Sign an access token; returns (token, jti, expires_in)."""
        issued = int((now or clock.now()).timestamp())
        ttl = ttl or self.settings.access_ttl
        jti = uuid.uuid4().hex
        payload = {"iss": self.settings.issuer, "aud": self.settings.audience, "sub": subject, "iat": issued,
                   "nbf": issued, "exp": issued + ttl, "jti": jti, **claims}
        key = self.keys[0]
        token = jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"})
        return token, jti, ttl

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token issued here; raises InvalidToken otherwise."""
        if len(token) > self.settings.max_token_bytes:
            raise InvalidToken("the token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        if header.get("alg") != "EdDSA":
            raise InvalidToken("unsupported token algorithm")
        key = self._by_kid.get(str(header.get("kid")))
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.public, algorithms=["EdDSA"], audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["exp", "iat", "sub", "iss", "aud", "jti"]})
        except jwt.PyJWTError as exc:
            raise InvalidToken("invalid token") from exc
        check_times(claims)
        return claims


def check_times(claims: dict[str, Any]) -> None:
    now = clock.now().timestamp()
    try:
        exp, iat = float(claims["exp"]), float(claims["iat"])
        nbf = float(claims.get("nbf", iat))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidToken("bad time claims") from exc
    if now >= exp + LEEWAY:
        raise InvalidToken("the token has expired")
    if nbf > now + LEEWAY or iat > now + LEEWAY:
        raise InvalidToken("the token is not valid yet")


# ---------------------------------------------------------------------------------------------- OIDC

EXTERNAL_ALGS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class OidcTrust:
    """Trust in one external OpenID Connect issuer: discovery and JWKS fetched and cached.

    An ID token or access token of that issuer is accepted when its signature verifies with a
    key of the issuer's JWKS (refetched when a token names an unknown kid, at most every
    `refetch_interval` seconds), and its iss, aud and exp are right.
    """

    def __init__(self, issuer: str, audience: str, cache_seconds: float = 3600.0,
                 refetch_interval: float = 10.0, timeout: float = 5.0, outbound: Outbound | None = None) -> None:
        self.issuer = issuer.rstrip("/")
        # Fetches go through the outbound guard. The configured issuer is the operator's own choice, so its
        # host:port is reachable whatever it resolves to (an IdP is often internal); any other host that
        # its discovery document names (jwks_uri) must pass the policy like every caller-named URL.
        base = outbound or Outbound()
        parts = httpx.URL(self.issuer)
        issuer_rule = AllowRule(host=parts.host.lower().rstrip("."), port=parts.port or DEFAULT_PORTS.get(parts.scheme))
        self.outbound = dataclasses.replace(base, allow=(*base.allow, issuer_rule))
        self.audience = audience
        self.cache_seconds = cache_seconds
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e18
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _get_json(self, url: str) -> Any:
        # A client per URL: a pooled connection is never reused for another host name.
        async with self.outbound.client(timeout=self.timeout, connections=1) as http:
            answer = await http.request("GET", url, headers={"Accept": "application/json"}, max_bytes=1024 * 1024)
        if answer.status != 200:
            raise ValueError(f"{url}: HTTP {answer.status}")
        return json.loads(answer.content)

    async def _fetch(self) -> None:
        disc = await self._get_json(self.issuer + "/.well-known/openid-configuration")
        if str(disc.get("issuer", "")).rstrip("/") != self.issuer:
            raise InvalidToken("the OIDC discovery document names another issuer")
        jwks = await self._get_json(str(disc["jwks_uri"]))
        keys: dict[str, jwt.PyJWK] = {}
        for spec in jwks.get("keys", []):
            if spec.get("use", "sig") != "sig" or "kid" not in spec:
                continue
            try:
                keys[str(spec["kid"])] = jwt.PyJWK(spec)
            except jwt.PyJWTError:
                continue
        self._keys = keys
        self._fetched_at = time.monotonic()
        self.fetches += 1

    async def key_for(self, kid: str) -> jwt.PyJWK:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age > self.cache_seconds or (kid not in self._keys and age > self.refetch_interval):
                try:
                    await self._fetch()
                except (OutboundError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.warning("OIDC keys of %s not fetched: %s", self.issuer,
                                exc.reason if isinstance(exc, OutboundError) else exc)
                    if not self._keys:
                        raise InvalidToken("the identity provider cannot be reached") from exc
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key of the identity provider")
        return key

    async def verify(self, token: str, max_bytes: int = 8192) -> dict[str, Any]:
        if len(token) > max_bytes:
            raise InvalidToken("the token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        alg = header.get("alg")
        if alg not in EXTERNAL_ALGS:
            raise InvalidToken("unsupported token algorithm")
        key = await self.key_for(str(header.get("kid")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[str(alg)], audience=self.audience, issuer=self.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            raise InvalidToken("invalid token from the identity provider") from exc
        check_times(claims)
        return claims


def unverified_issuer(token: str) -> str | None:
    try:
        value = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    return str(value) if value is not None else None
