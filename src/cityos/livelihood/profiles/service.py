"""Department records → profiles.

A department publishes a record for a person or a company: its fields (checked against
`fields.py`), the purposes it is shared for (a profile field is used only by policies of those
purposes), the consent or legal basis, and the date the data describes. Sensitive and
confidential fields are sealed with the field key ring before they touch the database.

The identity registry creates subjects: a ``household`` record from public security for a
person, a ``registration`` record from market regulation for a company. Any other record for an
unknown subject is refused (404).

Contradictions: when a record gives a field another value than the current fact, the field's
authoritative department wins; between two non-authoritative departments the more recent
observation wins. The losing record is flagged with the field and the winner.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.livelihood import models as m
from cityos.livelihood.profiles.fields import MARKET, PUBLIC_SECURITY, FieldSpec, fields_of
from cityos.security.crypto import KeyRing
from cityos.security.policy import DataClass, Principal, Visibility, visible_class

SEALED_CLASSES = (DataClass.SENSITIVE.value, DataClass.CONFIDENTIAL.value)
IDENTITY_DATASETS = {"person": (PUBLIC_SECURITY, "household"), "company": (MARKET, "registration")}
PURPOSES = ("elderly", "social-assistance", "disability", "employment", "family", "veterans",
            "enterprise-support", "care")
MAX_FIELDS = 64


@dataclass(frozen=True)
class Fact:
    field: str
    value: Any
    department: str
    record_id: str
    observed_at: datetime
    purposes: tuple[str, ...]


@dataclass
class PublishResult:
    record_id: str
    subject_id: str
    kind: str
    created: bool
    changed: list[str]
    flags: list[dict[str, Any]]


def _text(doc: dict[str, Any], key: str, limit: int = 64) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequestData(f"{key}: a text of 1-{limit} characters")
    if any(ord(c) < 32 for c in value):
        raise BadRequestData(f"{key}: control characters are not allowed")
    return value.strip()


def parse_record(body: Any) -> dict[str, Any]:
    """A record body checked: {subject: {kind, id}, department, dataset, purposes, consent, observedAt,
    fields, userId?, district?}."""
    if not isinstance(body, dict):
        raise BadRequestData("a record is a JSON object")
    subject = body.get("subject")
    if not isinstance(subject, dict) or subject.get("kind") not in ("person", "company"):
        raise BadRequestData("subject: {kind: person|company, id}")
    subject_id = _text(subject, "id")
    kind = subject["kind"]
    purposes = body.get("purposes")
    if (not isinstance(purposes, list) or not purposes or len(purposes) > len(PURPOSES)
            or any(p not in PURPOSES for p in purposes)):
        raise BadRequestData(f"purposes: a list of {', '.join(PURPOSES)}")
    consent = body.get("consent")
    if (not isinstance(consent, dict) or consent.get("basis") not in ("law", "consent")
            or not isinstance(consent.get("reference"), str) or not 0 < len(consent["reference"]) <= 200):
        raise BadRequestData("consent: {basis: law|consent, reference: the law article or consent record}")
    observed = body.get("observedAt")
    try:
        observed_at = datetime.fromisoformat(str(observed))
    except ValueError as exc:
        raise BadRequestData("observedAt: an ISO 8601 date or date-time") from exc
    observed_at = observed_at.replace(tzinfo=UTC) if observed_at.tzinfo is None else observed_at.astimezone(UTC)
    values = body.get("fields")
    if not isinstance(values, dict) or not values or len(values) > MAX_FIELDS:
        raise BadRequestData(f"fields: an object of 1-{MAX_FIELDS} profile fields")
    specs = fields_of(kind)
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise BadRequestData(f"fields.{name}: not a {kind} profile field")
        try:
            parsed[name] = spec.parse(value)
        except ValueError as exc:
            raise BadRequestData(f"fields.{name}: {exc}") from exc
    out = {"kind": kind, "subject_id": subject_id, "department": _text(body, "department"),
           "dataset": _text(body, "dataset"), "purposes": sorted(set(purposes)),
           "consent": {"basis": consent["basis"], "reference": consent["reference"]},
           "observed_at": observed_at, "fields": parsed, "user_id": None, "district": None}
    for key, column in (("userId", "user_id"), ("district", "district")):
        if body.get(key) is not None:
            out[column] = _text(body, key, 128)
    return out


class ProfileStore:
    """Reads and writes profiles inside a caller's transaction (the proactive service owns the commit)."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def _seal(self, subject_id: str, value: Any) -> str:
        return self.keyring.encrypt(orjson.dumps(value).decode(), aad=subject_id.encode())

    def _open(self, subject_id: str, token: str) -> Any:
        return orjson.loads(self.keyring.decrypt(token, aad=subject_id.encode()))

    async def subject(self, conn: AsyncConnection, tenant: str, subject_id: str) -> Any:
        return (await conn.execute(select(m.subjects).where(
            m.subjects.c.tenant == tenant, m.subjects.c.id == subject_id))).first()

    async def subject_of_user(self, conn: AsyncConnection, tenant: str, user_id: str) -> Any:
        return (await conn.execute(select(m.subjects).where(
            m.subjects.c.tenant == tenant, m.subjects.c.user_id == user_id).limit(1))).first()

    async def facts(self, conn: AsyncConnection, tenant: str, subject_id: str) -> dict[str, Fact]:
        rows = (await conn.execute(select(m.facts).where(
            m.facts.c.tenant == tenant, m.facts.c.subject_id == subject_id))).all()
        return {r.field: Fact(r.field, self._open(subject_id, r.sealed) if r.sealed else r.value["v"], r.department,
                              r.record_id, as_utc(r.observed_at), tuple(r.purposes)) for r in rows}

    async def publish(self, conn: AsyncConnection, tenant: str, rec: dict[str, Any]) -> PublishResult:
        kind, subject_id, department = rec["kind"], rec["subject_id"], rec["department"]
        now = clock.now()
        found = await self.subject(conn, tenant, subject_id)
        created = False
        if found is None:
            if IDENTITY_DATASETS[kind] != (department, rec["dataset"]):
                who = "person" if kind == "person" else "company"
                registry = "/".join(IDENTITY_DATASETS[kind])
                raise ResourceNotFound(f"unknown {who} {subject_id!r}: the identity registry ({registry}) "
                                       "registers it first")
            await conn.execute(m.subjects.insert().values(tenant=tenant, id=subject_id, kind=kind,
                                                          user_id=rec["user_id"], district=rec["district"],
                                                          created_at=now))
            created = True
        elif found.kind != kind:
            raise BadRequestData(f"{subject_id!r} is a {found.kind}, not a {kind}")
        elif rec["user_id"] or rec["district"]:
            changes = {k: rec[k] for k in ("user_id", "district") if rec[k]}
            await conn.execute(m.subjects.update().where(m.subjects.c.tenant == tenant,
                                                         m.subjects.c.id == subject_id).values(**changes))
        record_id = uuid.uuid4().hex
        specs = fields_of(kind)
        current = await self.facts(conn, tenant, subject_id)
        flags: list[dict[str, Any]] = []
        changed: list[str] = []
        for name, value in rec["fields"].items():
            spec = specs[name]
            old = current.get(name)
            wins = True
            if old is not None and old.value != value:
                wins = self._new_wins(spec, old, department, rec["observed_at"])
                loser = old.record_id if wins else record_id
                winner = record_id if wins else old.record_id
                flags.append({"field": name, "flaggedRecord": loser, "winner": winner,
                              "reason": "authoritative source" if department == spec.authority
                              or old.department == spec.authority else "more recent observation"})
                if wins:
                    await self._flag(conn, tenant, old.record_id, name, record_id)
            if wins and (old is None or old.value != value or old.department != department):
                await self._set_fact(conn, tenant, subject_id, spec, value, department, record_id, rec)
                if old is None or old.value != value:
                    changed.append(name)
        clear = {k: v for k, v in rec["fields"].items() if specs[k].data_class not in SEALED_CLASSES}
        sealed = {k: v for k, v in rec["fields"].items() if specs[k].data_class in SEALED_CLASSES}
        own_flags = [f for f in flags if f["flaggedRecord"] == record_id]
        await conn.execute(m.records.insert().values(
            id=record_id, tenant=tenant, subject_id=subject_id, department=department, dataset=rec["dataset"],
            purposes=rec["purposes"], consent=rec["consent"], observed_at=rec["observed_at"], received_at=now,
            clear=clear, sealed=self._seal(subject_id, sealed) if sealed else None, flags=own_flags))
        return PublishResult(record_id, subject_id, kind, created, changed, flags)

    @staticmethod
    def _new_wins(spec: FieldSpec, old: Fact, department: str, observed_at: datetime) -> bool:
        if department == spec.authority and old.department != spec.authority:
            return True
        if old.department == spec.authority and department != spec.authority:
            return False
        return observed_at >= old.observed_at

    async def _flag(self, conn: AsyncConnection, tenant: str, record_id: str, name: str, winner: str) -> None:
        row = (await conn.execute(select(m.records.c.flags).where(
            m.records.c.tenant == tenant, m.records.c.id == record_id))).first()
        if row is not None:
            flags = [*row.flags, {"field": name, "flaggedRecord": record_id, "winner": winner,
                                  "reason": "superseded by the authoritative or a newer record"}]
            await conn.execute(m.records.update().where(m.records.c.id == record_id).values(flags=flags))

    async def _set_fact(self, conn: AsyncConnection, tenant: str, subject_id: str, spec: FieldSpec, value: Any,
                        department: str, record_id: str, rec: dict[str, Any]) -> None:
        sealed = spec.data_class in SEALED_CLASSES
        # Wrapped: SQLite's JSON column has numeric affinity and would hand a bare number back as a number.
        values = {"value": None if sealed else {"v": value},
                  "sealed": self._seal(subject_id, value) if sealed else None, "department": department,
                  "record_id": record_id, "observed_at": rec["observed_at"], "purposes": rec["purposes"]}
        where = and_(m.facts.c.tenant == tenant, m.facts.c.subject_id == subject_id, m.facts.c.field == spec.name)
        done = await conn.execute(m.facts.update().where(where).values(**values))
        if done.rowcount == 0:
            await conn.execute(m.facts.insert().values(tenant=tenant, subject_id=subject_id, field=spec.name,
                                                       **values))

    async def flagged(self, conn: AsyncConnection, tenant: str, subject_id: str) -> list[dict[str, Any]]:
        rows = (await conn.execute(select(m.records.c.id, m.records.c.department, m.records.c.dataset,
                                          m.records.c.flags).where(
            m.records.c.tenant == tenant, m.records.c.subject_id == subject_id))).all()
        return [{"record": r.id, "department": r.department, "dataset": r.dataset, "flags": r.flags}
                for r in rows if r.flags]


def view_facts(kind: str, facts: dict[str, Fact], principal: Principal | None, own: bool) -> dict[str, Any]:
    """A profile as `principal` may see it: each field's value (clear, masked or withheld by its data
    class and the owning department, which is the record's department) and its provenance."""
    from cityos.security.masking import mask_value

    specs = fields_of(kind)
    out: dict[str, Any] = {}
    for name, fact in sorted(facts.items()):
        spec = specs.get(name)
        if spec is None:
            continue
        seen = Visibility.CLEAR if own else visible_class(principal, spec.data_class, fact.department)
        if seen is Visibility.HIDDEN:
            continue
        value = fact.value if seen is Visibility.CLEAR else mask_value(fact.value)
        out[name] = {"value": value, "dataClass": spec.data_class, "department": fact.department,
                     "observedAt": fact.observed_at.isoformat(), "masked": seen is Visibility.MASKED}
    return out


def observed_date(fact: Fact) -> date:
    return fact.observed_at.date()
