"""E-licences (电子证照): issue signed licences, verify them, revoke them, list a holder's wallet.

A licence is a JSON document signed with Ed25519 (see `verify` for the format and the canonical
form); the QR code encodes the verify URL (default) or the compact signed document. Verification
online (`verify_document`) adds to the offline checks what only the issuer knows: that the
document is the one issued (``doc_hash``) and whether it has been revoked.

Licence records (`get`, `wallet`) are ``{"id", "licenceType", "holder", "status", "issuedAt",
"expiresAt", "revokedAt", "issuerDepartment", "applicationId", "document": <signed document>}``.
`public_view` is what anyone may see of a licence: the subject masked where sensitive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import qrcode
import qrcode.constants
import qrcode.exceptions
import qrcode.image.svg
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc, as_utc_or_none, iso
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, Conflict, OperationNotSupported, ResourceNotFound
from cityos.core.events import EventBus
from cityos.security.audit import AuditEvent
from cityos.security.crypto import CryptoError, KeyRing
from cityos.security.masking import mask_json_text, mask_public_text, mask_text, mask_value
from cityos.security.policy import Principal
from cityos.services.licences.keys import LicenceKey
from cityos.services.licences.models import licences
from cityos.services.licences.verify import (
    CANONICALIZATION,
    FORMAT,
    REVOCATION_FORMAT,
    CanonicalError,
    Verification,
    b64url,
    canonical_bytes,
    check_signature,
    check_validity,
    signing_input,
)

MAX_SUBJECT_BYTES = 16 * 1024
MAX_TEXT = 128
# Subject members shown masked to verifiers (compared case-insensitively). Any other string is
# shown with ID and mobile numbers inside it masked.
SENSITIVE_SUBJECT_KEYS = frozenset(k.lower() for k in (
    "idNumber", "idCard", "idCardNumber", "id_number", "identityNumber", "passportNumber", "phone", "mobile",
    "telephone", "email", "address", "birthDate", "dateOfBirth", "birthday", "name", "holderName",
    "legalRepresentative", "legalPerson", "bankAccount"))

AuditSink = Callable[[AuditEvent], Awaitable[None]]


def qr_svg(data: str) -> bytes:
    """An SVG QR code (error correction M); raises OperationNotSupported when `data` does not fit."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4,
                       image_factory=qrcode.image.svg.SvgPathImage)
    qr.add_data(data.encode())
    try:
        qr.make(fit=True)
    except (qrcode.exceptions.DataOverflowError, ValueError) as exc:
        raise OperationNotSupported("the content is too large for a QR code; use the verify URL") from exc
    image = qr.make_image()
    svg: bytes = image.to_string()
    return svg


# Names of organisations and things, which verifiers see in clear (a licence's purpose is to show
# them). Every other member whose name ends in "name" names a person (applicantName, childName,
# motherName, holderName, …): personal data of the sensitive class, which anonymous verifiers see
# masked (张*), as the class rules mask a sensitive value for anyone outside the owning department.
PUBLIC_NAME_KEYS = frozenset(k.lower() for k in (
    "companyName", "enterpriseName", "organisationName", "organizationName", "businessName", "shopName",
    "projectName", "serviceName", "licenceName", "productName", "siteName", "buildingName"))


def _sensitive_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SENSITIVE_SUBJECT_KEYS or (lowered.endswith("name") and lowered not in PUBLIC_NAME_KEYS)


def _mask_free(value: Any) -> Any:
    """Free text shown to anyone: ID and phone numbers masked, in every spelling `mask_public_text` knows."""
    if isinstance(value, str):
        return mask_public_text(mask_text(value))
    if isinstance(value, list):
        return [_mask_free(v) for v in value]
    return mask_json_text(value)


def mask_subject(subject: Any) -> Any:
    if not isinstance(subject, dict):
        return _mask_free(subject)
    return {key: (mask_value(value) if _sensitive_key(key) else mask_subject(value))
            for key, value in subject.items()}


def public_view(document: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """What a verifier sees: type, issuer, times, status and the subject masked where sensitive."""
    view = {"id": document.get("id"), "licenceType": document.get("licenceType"),
            "tenant": document.get("tenant"), "issuer": document.get("issuer"),
            "holder": mask_value(document["holder"]) if isinstance(document.get("holder"), str) else None,
            "issuedAt": document.get("issuedAt"), "expiresAt": document.get("expiresAt"),
            "subject": mask_subject(document.get("subject"))}
    if status is not None:
        view["status"] = status
    return view


def _text(value: Any, name: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{name} must be a non-empty string of at most {limit} characters")
    return value


def document_hash(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


class LicenceService:
    def __init__(self, engine: AsyncEngine, keys: list[LicenceKey], keyring: KeyRing, bus: EventBus | None = None,
                 public_url: str = "http://127.0.0.1:8000", audit: AuditSink | None = None,
                 write_lock: asyncio.Lock | None = None) -> None:
        if not keys or keys[0].private is None:
            raise ValueError("the first licence key must be a private (signing) key")
        self.engine = engine
        self.keys = keys
        self._by_kid = {k.kid: k.public for k in keys}
        self.keyring = keyring
        self.bus = bus
        self.public_url = public_url.rstrip("/")
        self.audit = audit
        self._write_lock = write_lock or asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._write_lock) as conn:
            yield conn

    # ------------------------------------------------------------------ keys

    @property
    def signing_key(self) -> LicenceKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        """Every public key (the active one first, then retired ones that still verify)."""
        return {"keys": [{**k.jwk(), "status": "active" if i == 0 else "retired"} for i, k in enumerate(self.keys)]}

    def public_key_document(self) -> dict[str, Any]:
        return {**self.jwks(), "active": self.signing_key.kid, "pem": self.signing_key.public_pem(),
                "pems": {k.kid: k.public_pem() for k in self.keys}, "format": FORMAT,
                "canonicalization": CANONICALIZATION, "algorithm": "EdDSA (Ed25519)"}

    def verify_url(self, licence_id: str) -> str:
        # The QR code is scanned by people: it opens the portal's verify page, which shows the result of
        # GET /api/services/licences/verify/{id} (machines call that endpoint directly).
        return f"{self.public_url}/verify?id={licence_id}"

    def _sign(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self.signing_key
        signature = key.sign(signing_input(body))
        return {**body, "proof": {"alg": "EdDSA", "kid": key.kid, "canonicalization": CANONICALIZATION,
                                  "signature": b64url(signature)}}

    # ------------------------------------------------------------------ issue

    async def issue(self, tenant: str, holder: str, licence_type: str, subject: dict[str, Any],
                    issuer_department: str, application_id: str | None = None, *,
                    expires_at: datetime | None = None, valid_days: int | None = None,
                    issuer_name: str | None = None) -> dict[str, Any]:
        """Sign and store a licence; returns the signed document. Issuing again for the same
        application and type returns the licence issued first (idempotent)."""
        _text(holder, "holder")
        _text(licence_type, "licenceType")
        _text(issuer_department, "issuerDepartment")
        if application_id is not None:
            _text(application_id, "applicationId")
        if not isinstance(subject, dict):
            raise BadRequestData("subject must be a JSON object")
        try:
            if len(canonical_bytes(subject)) > MAX_SUBJECT_BYTES:
                raise BadRequestData(f"subject is larger than {MAX_SUBJECT_BYTES} bytes")
        except CanonicalError as exc:
            raise BadRequestData(f"subject: {exc}") from exc
        if application_id is not None:
            existing = await self._by_application(tenant, application_id, licence_type)
            if existing is not None:
                return existing
        now = clock.now()
        if expires_at is None and valid_days is not None:
            if valid_days <= 0:
                raise BadRequestData("valid_days must be positive")
            expires_at = now + timedelta(days=valid_days)
        if expires_at is not None:
            expires_at = as_utc(expires_at).astimezone(UTC)  # stored timestamps are UTC (SQLite keeps no offset)
        licence_id = uuid.uuid4().hex
        body = {"id": licence_id, "format": FORMAT, "licenceType": licence_type, "tenant": tenant,
                "holder": holder, "subject": subject,
                "issuer": {"name": issuer_name or self.public_url, "department": issuer_department},
                "applicationId": application_id, "issuedAt": iso(now),
                "expiresAt": iso(expires_at) if expires_at else None, "verifyUrl": self.verify_url(licence_id)}
        document = self._sign(body)
        row = {"id": licence_id, "tenant": tenant, "holder": holder, "licence_type": licence_type,
               "issuer_department": issuer_department, "application_id": application_id,
               "kid": self.signing_key.kid, "status": "valid", "issued_at": now, "expires_at": expires_at,
               "doc_hash": document_hash(document),
               "document": self.keyring.encrypt(canonical_bytes(document).decode())}
        try:
            async with self._write() as conn:
                await conn.execute(licences.insert().values(**row))
        except IntegrityError:
            if application_id is not None:
                existing = await self._by_application(tenant, application_id, licence_type)
                if existing is not None:
                    return existing
            raise
        if self.bus is not None:
            await self.bus.publish("services.licence.issued", {
                "tenant": tenant, "licence": {"id": licence_id, "licenceType": licence_type, "holder": holder,
                                              "issuerDepartment": issuer_department,
                                              "applicationId": application_id, "issuedAt": body["issuedAt"]}})
        return document

    async def _by_application(self, tenant: str, application_id: str, licence_type: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(licences).where(
                licences.c.tenant == tenant, licences.c.application_id == application_id,
                licences.c.licence_type == licence_type))).first()
        return None if row is None else self._document(row)

    # ------------------------------------------------------------------ read

    def _document(self, row: Any) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = orjson.loads(self.keyring.decrypt(row.document))
        except (CryptoError, orjson.JSONDecodeError) as exc:
            raise CryptoError(f"licence {row.id}: stored document cannot be read") from exc
        return doc

    def _record(self, row: Any) -> dict[str, Any]:
        revoked_at = as_utc_or_none(row.revoked_at)
        expires_at = as_utc_or_none(row.expires_at)
        status = row.status
        if status == "valid" and expires_at is not None and clock.now() >= expires_at:
            status = "expired"
        return {"id": row.id, "licenceType": row.licence_type, "holder": row.holder, "status": status,
                "issuedAt": iso(as_utc(row.issued_at)), "expiresAt": iso(expires_at) if expires_at else None,
                "revokedAt": iso(revoked_at) if revoked_at else None, "revocationReason": row.revocation_reason,
                "issuerDepartment": row.issuer_department, "applicationId": row.application_id,
                "document": self._document(row)}

    async def _row(self, licence_id: str, tenant: str | None) -> Any:
        query = select(licences).where(licences.c.id == licence_id)
        if tenant is not None:
            query = query.where(licences.c.tenant == tenant)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first()

    async def get(self, tenant: str, licence_id: str) -> dict[str, Any]:
        row = await self._row(licence_id, tenant)
        if row is None:
            raise ResourceNotFound(f"no licence {licence_id!r}")
        return self._record(row)

    async def wallet(self, tenant: str, holder: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(licences).where(licences.c.tenant == tenant,
                                                              licences.c.holder == holder)
                                       .order_by(licences.c.issued_at.desc(), licences.c.id))).all()
        return [self._record(r) for r in rows]

    # ------------------------------------------------------------------ verify

    async def verify_document(self, doc: dict[str, Any]) -> Verification:
        """Signature, time window, that it is the document we issued, and revocation.

        Accepts the signed document or a licence record (``{"document": ...}``). On success
        `licence` is the full document (callers showing it to third parties use `public_view`).
        """
        if isinstance(doc, dict) and "proof" not in doc and isinstance(doc.get("document"), dict):
            doc = doc["document"]
        result = check_signature(doc, self._by_kid)
        if not result.valid:
            return result
        result = check_validity(doc, clock.now())
        if not result.valid:
            return result
        row = await self._row(doc["id"], None)
        if row is None or row.tenant != doc.get("tenant"):
            return Verification(False, "unknown_licence", None, "no licence with this id was issued here")
        try:
            issued = row.doc_hash == document_hash(doc)
        except CanonicalError:
            issued = False
        if not issued:
            return Verification(False, "unknown_licence", None, "the document differs from the one issued")
        return self._state(row, doc)

    def _state(self, row: Any, doc: dict[str, Any]) -> Verification:
        if row.status == "revoked":
            at = as_utc_or_none(row.revoked_at)
            return Verification(False, "revoked", doc, f"revoked at {iso(at) if at else '?'}")
        expires_at = as_utc_or_none(row.expires_at)
        if expires_at is not None and clock.now() >= expires_at:
            return Verification(False, "expired", doc, f"expired at {iso(expires_at)}")
        return Verification(True, "valid", doc)

    async def verify_stored(self, licence_id: str, tenant: str | None = None) -> Verification:
        """Verify the licence stored under `licence_id` (the QR link): integrity, time, revocation."""
        row = await self._row(licence_id, tenant)
        if row is None:
            return Verification(False, "unknown_licence", None, "no licence with this id was issued here")
        try:
            doc = self._document(row)
        except CryptoError:
            return Verification(False, "bad_signature", None, "the stored licence was altered")
        checked = check_signature(doc, self._by_kid)
        if not checked.valid or row.doc_hash != document_hash(doc):
            return Verification(False, checked.reason if not checked.valid else "bad_signature", None,
                                "the stored licence was altered")
        return self._state(row, doc)

    async def verify_wallet_licence(self, tenant: str, holder: str, licence_id: str,
                                    expected_type: str | None) -> Verification:
        """For 免提交: may `holder` present licence `licence_id` of type `expected_type` now?"""
        row = await self._row(licence_id, tenant)
        if row is None:
            return Verification(False, "unknown_licence", None, "no such licence in this tenant")
        if row.holder != holder:
            return Verification(False, "wrong_holder", None, "the licence belongs to someone else")
        if expected_type is not None and row.licence_type != expected_type:
            return Verification(False, "wrong_type", None, f"expected a {expected_type!r} licence")
        return await self.verify_stored(licence_id, tenant)

    # ------------------------------------------------------------------ revoke

    async def revoke(self, tenant: str, licence_id: str, reason: str, by: Principal | None, *,
                     ip: str = "") -> dict[str, Any]:
        """Revoke a licence (audited); 404 unknown, 409 already revoked. Returns the record."""
        _text(reason, "reason", 512)
        now = clock.now()
        actor = (by.username or by.id) if by is not None else "system"
        async with self._write() as conn:
            row = (await conn.execute(select(licences.c.status).where(
                licences.c.id == licence_id, licences.c.tenant == tenant))).first()
            if row is None:
                raise ResourceNotFound(f"no licence {licence_id!r}")
            if row.status == "revoked":
                raise Conflict(f"licence {licence_id} is already revoked")
            await conn.execute(update(licences).where(licences.c.id == licence_id, licences.c.status == "valid")
                               .values(status="revoked", revoked_at=now, revoked_by=actor[:256],
                                       revocation_reason=reason.strip()[:512]))
        if self.audit is not None:
            await self.audit(AuditEvent.of(by, "licence.revoke", f"licence:{licence_id}", ip=ip, tenant=tenant,
                                           reason=reason.strip()[:512]))
        record = await self.get(tenant, licence_id)
        if self.bus is not None:
            await self.bus.publish("services.licence.revoked", {
                "tenant": tenant, "licence": {k: v for k, v in record.items() if k != "document"}})
        return record

    async def revocation_list(self, tenant: str) -> dict[str, Any]:
        """The tenant's revoked licences, signed like a licence (offline verifiers check it)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(licences.c.id, licences.c.revoked_at).where(
                licences.c.tenant == tenant, licences.c.status == "revoked")
                .order_by(licences.c.revoked_at, licences.c.id))).all()
        body = {"format": REVOCATION_FORMAT, "tenant": tenant, "issuer": self.public_url,
                "issuedAt": iso(clock.now()),
                "revoked": [{"id": r.id, "revokedAt": iso(as_utc(r.revoked_at))} for r in rows]}
        return self._sign(body)
