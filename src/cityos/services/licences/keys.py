"""Licence signing keys: Ed25519, from a PEM file, never from the database.

The file is ``CITYOS_LICENCE_KEY_FILE``; without it, development mode generates
``<data dir>/licence-signing.pem`` (mode 0600) on first run and production refuses to start. The
file holds PKCS#8 private keys (``BEGIN PRIVATE KEY``) and, optionally, public keys
(``BEGIN PUBLIC KEY``) of retired keys whose private half has been destroyed. The first private
key signs; every key in the file verifies, and all are published, so licences signed before a
rotation keep verifying. `rotate_key_file` puts a new key first; `retire_key` replaces a private
key by its public half.

The key id (``kid``) is the RFC 7638 JWK thumbprint, base64url, first 16 characters.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cityos.config import env_optional
from cityos.core.keyfiles import create_once, replace_private
from cityos.security.settings import SecuritySettings
from cityos.services.licences.verify import b64url

_PEM_BLOCK = re.compile(rb"-----BEGIN (PRIVATE|PUBLIC) KEY-----.+?-----END \1 KEY-----", re.S)


@dataclass(frozen=True)
class LicenceKey:
    kid: str
    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None

    @classmethod
    def of(cls, key: Ed25519PrivateKey | Ed25519PublicKey) -> LicenceKey:
        private = key if isinstance(key, Ed25519PrivateKey) else None
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        return cls(thumbprint(public), public, private)

    @property
    def x(self) -> str:
        return b64url(self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}

    def public_pem(self) -> str:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, message: bytes) -> bytes:
        if self.private is None:
            raise RuntimeError(f"licence key {self.kid} is retired (public only)")
        return self.private.sign(message)


def thumbprint(public: Ed25519PublicKey) -> str:
    x = b64url(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(members.encode()).digest())[:16]


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_file_path(settings: SecuritySettings | None = None) -> Path:
    settings = settings or SecuritySettings()
    explicit = env_optional("CITYOS_LICENCE_KEY_FILE")
    if explicit:
        return Path(explicit)
    if settings.production:
        raise RuntimeError("production needs CITYOS_LICENCE_KEY_FILE (the e-licence signing key)")
    path = settings.data_dir / "licence-signing.pem"
    create_once(path, lambda: _private_pem(Ed25519PrivateKey.generate()))
    return path


def load_keys(path: Path) -> list[LicenceKey]:
    """The keys in `path`, signing key first; raises when there is no private key to sign with."""
    keys: list[LicenceKey] = []
    for match in _PEM_BLOCK.finditer(path.read_bytes()):
        block = match.group(0)
        loaded = (serialization.load_pem_private_key(block, password=None) if match.group(1) == b"PRIVATE"
                  else serialization.load_pem_public_key(block))
        if not isinstance(loaded, Ed25519PrivateKey | Ed25519PublicKey):
            raise RuntimeError(f"{path}: only Ed25519 keys are supported for e-licences")
        keys.append(LicenceKey.of(loaded))
    signing = [k for k in keys if k.private is not None]
    if not signing:
        raise RuntimeError(f"{path} holds no Ed25519 private key to sign licences with")
    # The first private key signs; keep the file's order otherwise.
    return [signing[0], *[k for k in keys if k is not signing[0]]]


def rotate_key_file(path: Path) -> str:
    """Generate a new signing key in front of the existing ones; returns its kid."""
    new = Ed25519PrivateKey.generate()
    old = path.read_bytes() if path.exists() else b""
    replace_private(path, _private_pem(new) + old)
    return LicenceKey.of(new).kid


def retire_key(path: Path, kid: str) -> None:
    """Replace the private key `kid` by its public key (it keeps verifying, can no longer sign)."""
    out: list[bytes] = []
    for key in load_keys(path):
        if key.kid == kid and key.private is not None:
            out.append(key.public_pem().encode())
        elif key.private is not None:
            out.append(_private_pem(key.private))
        else:
            out.append(key.public_pem().encode())
    if not any(b"PRIVATE" in block for block in out):
        raise RuntimeError("cannot retire the last signing key; rotate first")
    replace_private(path, b"".join(out))
