"""Field encryption: AES-256-GCM (or SM4-GCM, GB/T 32907) with a key ring.

A value is stored as ``enc:v1:<kid>:<base64url(nonce ‖ ciphertext ‖ tag)>``, so each value names
the key that encrypted it and keys can be rotated while old values stay readable.

The key ring comes from ``CITYOS_DATA_KEYS``: either ``kid:alg:base64key,kid2:alg:base64key``
(the first key is the active one; alg is ``aes256gcm`` or ``sm4gcm``) or ``@/path/keys.json``
(``{"active": kid, "keys": {kid: {"alg": ..., "key": base64}}}``). Without it, development mode
generates ``<data dir>/data-keys.json`` (mode 0600); production refuses to start.
`cityos keys rotate` adds a key to a file-backed ring and re-encrypts every registered column in
batches (`reencrypt`).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, Table, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core.keyfiles import create_once, replace_private
from cityos.security.settings import SecuritySettings

PREFIX = "enc:v1:"
SM4_AVAILABLE = hasattr(algorithms, "SM4")
KEY_SIZES = {"aes256gcm": 32, "sm4gcm": 16}


class CryptoError(Exception):
    pass


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sm4_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes | None) -> bytes:
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    if aad:
        encryptor.authenticate_additional_data(aad)
    return encryptor.update(plaintext) + encryptor.finalize() + encryptor.tag


def _sm4_decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
    decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, data[-16:])).decryptor()
    if aad:
        decryptor.authenticate_additional_data(aad)
    return decryptor.update(data[:-16]) + decryptor.finalize()


@dataclass
class KeyRing:
    keys: dict[str, tuple[str, bytes]]
    active: str
    path: Path | None = None  # set when file-backed (rotation writes here)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise CryptoError("the active data key is not in the key ring")
        for kid, (alg, key) in self.keys.items():
            if alg not in KEY_SIZES or len(key) != KEY_SIZES[alg] or ":" in kid:
                raise CryptoError(f"data key {kid!r}: bad algorithm or length")
            if alg == "sm4gcm" and not SM4_AVAILABLE:
                raise CryptoError("this build of cryptography has no SM4")

    def encrypt(self, plaintext: str, aad: bytes | None = None) -> str:
        alg, key = self.keys[self.active]
        nonce = os.urandom(12)
        data = plaintext.encode()
        sealed = AESGCM(key).encrypt(nonce, data, aad) if alg == "aes256gcm" else _sm4_encrypt(key, nonce, data, aad)
        return f"{PREFIX}{self.active}:{_b64e(nonce + sealed)}"

    def decrypt(self, token: str, aad: bytes | None = None) -> str:
        kid = key_id(token)
        if kid not in self.keys:
            raise CryptoError(f"unknown data key {kid!r}")
        alg, key = self.keys[kid]
        raw = _b64d(token.split(":", 3)[3])
        nonce, sealed = raw[:12], raw[12:]
        try:
            plain = (AESGCM(key).decrypt(nonce, sealed, aad) if alg == "aes256gcm"
                     else _sm4_decrypt(key, nonce, sealed, aad))
        except InvalidTag as exc:
            raise CryptoError("the value was altered or the key is wrong") from exc
        return plain.decode()

    def add_key(self, alg: str = "aes256gcm") -> str:
        """Generate a new active key; a file-backed ring is saved (the old keys stay for reading)."""
        kid = f"k{len(self.keys) + 1}-{secrets.token_hex(3)}"
        self.keys = {kid: (alg, os.urandom(KEY_SIZES[alg])), **self.keys}
        self.active = kid
        if self.path is not None:
            save_file(self.path, self)
        return kid

    def to_json(self) -> dict[str, object]:
        return {"active": self.active, "keys": {k: {"alg": a, "key": _b64e(v)} for k, (a, v) in self.keys.items()}}


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id(token: str) -> str:
    if not is_encrypted(token) or token.count(":") != 3:
        raise CryptoError("not an encrypted value")
    return token.split(":", 3)[2]


def _ring_json(ring: KeyRing) -> bytes:
    return json.dumps(ring.to_json(), indent=1).encode()


def save_file(path: Path, ring: KeyRing) -> None:
    replace_private(path, _ring_json(ring))


def _load_file(path: Path) -> KeyRing:
    return _parse_ring(path.read_bytes(), path)


def _parse_ring(raw: bytes, path: Path) -> KeyRing:
    doc = json.loads(raw)
    keys = {kid: (spec["alg"], _b64d(spec["key"])) for kid, spec in doc["keys"].items()}
    return KeyRing(keys, doc["active"], path)


def load_keyring(settings: SecuritySettings) -> KeyRing:
    raw = settings.data_keys
    if raw and raw.startswith("@"):
        return _load_file(Path(raw[1:]))
    if raw:
        keys: dict[str, tuple[str, bytes]] = {}
        for part in raw.split(","):
            kid, alg, b64 = part.strip().split(":", 2)
            keys[kid] = (alg, _b64d(b64))
        return KeyRing(keys, next(iter(keys)))
    if settings.production:
        raise CryptoError("production needs CITYOS_DATA_KEYS")
    path = settings.data_dir / "data-keys.json"
    # Processes starting together must agree on one key: data sealed with a key of its own would be lost.
    stored = create_once(path, lambda: _ring_json(KeyRing({"k1": ("aes256gcm", os.urandom(32))}, "k1", path)))
    return _parse_ring(stored, path)


@dataclass
class EncryptedColumn:
    table: Table
    key: Column[str]
    column: Column[str]


# Columns holding field-encrypted values; other domains append theirs (`register_encrypted`).
ENCRYPTED_COLUMNS: list[EncryptedColumn] = []


def register_encrypted(table: Table, key: str, column: str) -> None:
    ENCRYPTED_COLUMNS.append(EncryptedColumn(table, table.c[key], table.c[column]))


@dataclass
class ReencryptReport:
    active: str
    rewritten: dict[str, int] = field(default_factory=dict)


async def reencrypt(engine: AsyncEngine, ring: KeyRing, batch: int = 500,
                    progress: Callable[[str, int], None] | None = None) -> ReencryptReport:
    """Re-encrypt every registered value not under the active key, `batch` rows a transaction."""
    report = ReencryptReport(ring.active)
    current = f"{PREFIX}{ring.active}:%"
    for target in ENCRYPTED_COLUMNS:
        name = f"{target.table.name}.{target.column.name}"
        done = 0
        after: str | None = None
        while True:
            stmt = (select(target.key, target.column)
                    .where(target.column.like(f"{PREFIX}%"), ~target.column.like(current))
                    .order_by(target.key).limit(batch))
            if after is not None:
                stmt = stmt.where(target.key > after)
            async with engine.begin() as conn:
                rows = (await conn.execute(stmt)).all()
                for key, value in rows:
                    await conn.execute(update(target.table).where(target.key == key, target.column == value)
                                       .values({target.column.name: ring.encrypt(ring.decrypt(value))}))
            if not rows:
                break
            done += len(rows)
            after = rows[-1][0]
            if progress:
                progress(name, done)
        report.rewritten[name] = done
    return report
