"""Offline verification of CityOS e-licences: only the standard library and `cryptography`.

This module imports nothing else from CityOS, so a verifier (a kiosk, a bank, an app) can copy it
and check a licence without calling the server:

    from cityos.services.licences.verify import verify_offline
    jwks = <GET /api/services/licences/public-key, saved once; it lists retired keys too>
    result = verify_offline(document, jwks, revocations=<GET /api/services/licences/revocations>)
    result.valid, result.reason

The document format (``"format": "cityos-licence/1"``)::

    {"id", "format", "licenceType", "tenant", "holder", "subject": {...},
     "issuer": {"name", "department"}, "applicationId", "issuedAt", "expiresAt" | null,
     "verifyUrl", "proof": {"alg": "EdDSA", "kid", "canonicalization", "signature"}}

Signing input: the document without ``proof``, canonicalised as RFC 8785 (JCS) for the JSON
subset licences may use: objects, arrays, strings, booleans, null and integers of at most 2^53;
floating-point numbers are refused (JCS number formatting is what differs between JSON
libraries). Object keys are sorted by UTF-16 code units, no whitespace, strings in UTF-8 with only
``"``, ``\\`` and control characters escaped. The signature is Ed25519 (RFC 8032) over those bytes,
base64url without padding. SM2 (GB/T 32918) is not offered: `cryptography` has no SM2.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "cityos-licence/1"
REVOCATION_FORMAT = "cityos-licence-revocations/1"
CANONICALIZATION = "RFC8785-JCS-no-floats"
MAX_SAFE_INT = 2**53
CLOCK_SKEW = timedelta(minutes=5)

# Reasons a verification gives (the `reason` field); "valid" when it passes.
REASONS = ("valid", "malformed", "unknown_key", "bad_signature", "unknown_licence", "revoked", "expired",
           "not_yet_valid", "wrong_holder", "wrong_type", "wrong_tenant")


@dataclass
class Verification:
    valid: bool
    reason: str
    licence: dict[str, Any] | None = None
    detail: str = ""


class CanonicalError(ValueError):
    pass


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _canonical_value(value: Any) -> Any:
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalError("object keys must be strings")
        return {k: _canonical_value(value[k]) for k in sorted(value, key=_utf16_key)}
    if isinstance(value, list | tuple):
        return [_canonical_value(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise CanonicalError("integers beyond 2^53 are not allowed")
        return value
    raise CanonicalError(f"{type(value).__name__} values are not allowed (no floating-point numbers)")


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of `value` for the subset above; raises CanonicalError outside it."""
    text = json.dumps(_canonical_value(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise CanonicalError("strings must be valid Unicode") from exc


def signing_input(document: dict[str, Any]) -> bytes:
    return canonical_bytes({k: v for k, v in document.items() if k != "proof"})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        raise ValueError("not an ISO 8601 time")
    parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def public_keys(jwks: dict[str, Any] | Iterable[dict[str, Any]]) -> dict[str, Ed25519PublicKey]:
    """kid → public key from a JWKS (``{"keys": [...]}``) or a list of OKP/Ed25519 JWKs."""
    entries = jwks.get("keys", []) if isinstance(jwks, dict) else list(jwks)
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in entries:
        if isinstance(jwk, dict) and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and \
                isinstance(jwk.get("kid"), str):
            try:
                keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
            except (ValueError, KeyError, TypeError):
                continue
    return keys


def check_signature(document: Any, keys: dict[str, Ed25519PublicKey]) -> Verification:
    """Shape, key and signature only (no time, revocation or holder checks)."""
    if not isinstance(document, dict):
        return Verification(False, "malformed", None, "the document must be a JSON object")
    proof = document.get("proof")
    if not isinstance(proof, dict) or proof.get("alg") != "EdDSA" or not isinstance(proof.get("kid"), str) or \
            not isinstance(proof.get("signature"), str):
        return Verification(False, "malformed", None, "proof must carry alg=EdDSA, kid and signature")
    key = keys.get(proof["kid"])
    if key is None:
        return Verification(False, "unknown_key", None, f"no public key {proof['kid'][:64]!r}")
    try:
        message = signing_input(document)
        signature = b64url_decode(proof["signature"])
    except (ValueError, TypeError) as exc:
        return Verification(False, "malformed", None, str(exc)[:200])
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return Verification(False, "bad_signature", None, "the signature does not match the content")
    return Verification(True, "valid", document)


def _check_fields(document: dict[str, Any]) -> str | None:
    for name in ("id", "licenceType", "holder", "issuedAt"):
        if not isinstance(document.get(name), str) or not document[name]:
            return f"{name} must be a non-empty string"
    if document.get("format") != FORMAT:
        return f"format must be {FORMAT!r}"
    if not isinstance(document.get("subject"), dict):
        return "subject must be an object"
    if document.get("expiresAt") is not None and not isinstance(document["expiresAt"], str):
        return "expiresAt must be a string or null"
    return None


def check_validity(document: dict[str, Any], now: datetime) -> Verification:
    """Fields and time window of a document whose signature has been checked."""
    problem = _check_fields(document)
    if problem:
        return Verification(False, "malformed", None, problem)
    try:
        issued = parse_time(document["issuedAt"])
        expires = parse_time(document["expiresAt"]) if document.get("expiresAt") else None
    except ValueError as exc:
        return Verification(False, "malformed", None, str(exc))
    if issued > now + CLOCK_SKEW:
        return Verification(False, "not_yet_valid", None, f"issued at {document['issuedAt']}")
    if expires is not None and now >= expires:
        return Verification(False, "expired", None, f"expired at {document['expiresAt']}")
    return Verification(True, "valid", document)


def revoked_ids(revocations: Any, keys: dict[str, Ed25519PublicKey], tenant: Any) -> set[str] | Verification:
    """The ids in a signed revocation list (its signature checked) or a plain iterable of ids."""
    if isinstance(revocations, dict):
        checked = check_signature(revocations, keys)
        if not checked.valid:
            return Verification(False, checked.reason, None, f"revocation list: {checked.detail}")
        if revocations.get("format") != REVOCATION_FORMAT or revocations.get("tenant") != tenant:
            return Verification(False, "malformed", None, "the revocation list is not for this licence's tenant")
        return {str(entry.get("id")) for entry in revocations.get("revoked", []) if isinstance(entry, dict)}
    return {str(item) for item in revocations}


def verify_offline(document: Any, jwks: dict[str, Any] | Iterable[dict[str, Any]], *,
                   now: datetime | None = None, revocations: Any = None, holder: str | None = None,
                   licence_type: str | None = None) -> Verification:
    """Verify a licence without the server: signature against the published keys, time window,
    and optionally a revocation list (signed list or ids), the expected holder and type."""
    keys = public_keys(jwks)
    result = check_signature(document, keys)
    if not result.valid:
        return result
    result = check_validity(document, now or datetime.now(UTC))
    if not result.valid:
        return result
    if revocations is not None:
        revoked = revoked_ids(revocations, keys, document.get("tenant"))
        if isinstance(revoked, Verification):
            return revoked
        if document["id"] in revoked:
            return Verification(False, "revoked", None, "the licence is on the revocation list")
    if holder is not None and document["holder"] != holder:
        return Verification(False, "wrong_holder", None, "the licence belongs to someone else")
    if licence_type is not None and document["licenceType"] != licence_type:
        return Verification(False, "wrong_type", None, f"expected a {licence_type!r} licence")
    return Verification(True, "valid", document)
