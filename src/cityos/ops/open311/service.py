"""Open311 GeoReport v2: the service catalogue, API keys, and service requests as incidents.

A service request is an incident of source ``open311`` (see `cityos.ops.incidents`); its Open311
`status` is ``closed`` once its incident (or the incident it was merged into) is resolved or
closed, ``open`` before. Personal fields (email, first_name, last_name, phone, device_id,
account_id) are stored encrypted with the incident and never appear in a GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float, env_int
from cityos.core import clock
from cityos.ops.incidents.core import NewIncident, Plan
from cityos.ops.incidents.models import CATEGORY_PATTERN
from cityos.ops.incidents.service import IncidentService
from cityos.ops.open311.media import MediaStore
from cityos.ops.open311.models import api_keys
from cityos.security.audit import AuditEvent
from cityos.security.masking import mask_public_text
from cityos.security.policy import Principal

DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")
PERSONAL = ("email", "first_name", "last_name", "phone", "device_id", "account_id")
KNOWN_FIELDS = frozenset({"api_key", "jurisdiction_id", "service_code", "lat", "long", "address_string",
                          "address_id", "description", "media_url", *PERSONAL})
_ATTRIBUTE = re.compile(r"^attribute\[([A-Za-z0-9_\-]{1,64})\](\[\])?$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}$")
_PHONE = re.compile(r"^[0-9+\-() ]{3,32}$")
_CODE = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
MAX_DAYS = 90


class Open311Error(Exception):
    """An error in the GeoReport format: [{"code": status, "description": ...}]."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


@dataclass(frozen=True)
class Attribute:
    code: str
    datatype: str
    required: bool
    description: str
    order: int
    variable: bool = True
    datatype_description: str | None = None
    values: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"variable": self.variable, "code": self.code, "datatype": self.datatype,
                "required": self.required, "datatype_description": self.datatype_description,
                "order": self.order, "description": self.description,
                "values": [{"key": k, "name": n} for k, n in self.values]}


@dataclass(frozen=True)
class Service:
    code: str
    name: str
    description: str
    category: str
    type: str
    keywords: tuple[str, ...]
    group: str
    attributes: tuple[Attribute, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"service_code": self.code, "service_name": self.name, "description": self.description,
                "metadata": bool(self.attributes), "type": self.type, "keywords": ",".join(self.keywords),
                "group": self.group}

    def definition(self) -> dict[str, Any]:
        return {"service_code": self.code, "attributes": [a.to_json() for a in self.attributes]}


@dataclass
class Catalogue:
    jurisdiction: str
    contact: str
    key_service: str
    services: dict[str, Service] = field(default_factory=dict)
    # The tenant whose requests this jurisdiction publishes: what anonymous GETs read (the catalogue's
    # `tenant`, overridden by CITYOS_OPEN311_TENANT; default the default tenant "").
    tenant: str = ""

    @classmethod
    def load(cls) -> Catalogue:
        """`services.yaml` shipped with the package, or the file named by CITYOS_OPEN311_SERVICES."""
        path = os.environ.get("CITYOS_OPEN311_SERVICES")
        text = Path(path).read_text("utf-8") if path else \
            resources.files("cityos.ops.open311").joinpath("services.yaml").read_text("utf-8")
        doc = yaml.safe_load(text)
        services: dict[str, Service] = {}
        for raw in doc.get("services", []):
            attributes = []
            for order, attr in enumerate(raw.get("attributes") or [], start=1):
                if attr["datatype"] not in DATATYPES:
                    raise ValueError(f"service {raw['service_code']}: unknown datatype {attr['datatype']!r}")
                attributes.append(Attribute(
                    str(attr["code"]), str(attr["datatype"]), bool(attr.get("required", False)),
                    str(attr.get("description", attr["code"])), int(attr.get("order", order)),
                    bool(attr.get("variable", True)), attr.get("datatype_description"),
                    tuple((str(v["key"]), str(v["name"])) for v in attr.get("values") or [])))
            category = str(raw["category"])
            if not re.match(CATEGORY_PATTERN, category):
                raise ValueError(f"service {raw['service_code']}: bad category {category!r}")
            services[str(raw["service_code"])] = Service(
                str(raw["service_code"]), str(raw["service_name"]), str(raw.get("description", "")), category,
                str(raw.get("type", "realtime")), tuple(raw.get("keywords") or ()), str(raw.get("group", "")),
                tuple(attributes))
        tenant = os.environ.get("CITYOS_OPEN311_TENANT", str(doc.get("tenant") or ""))
        return cls(str(doc.get("jurisdiction", "cityos")), str(doc.get("contact", "")),
                   str(doc.get("key_service", "")), services, tenant)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _one(form: dict[str, list[str]], name: str, limit: int) -> str | None:
    values = form.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Open311Error(400, f"{name} is given more than once")
    value = values[0].strip()
    if len(value) > limit:
        raise Open311Error(400, f"{name} is longer than {limit} characters")
    return value or None


def _coordinate(raw: str | None, name: str, bound: float) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise Open311Error(400, f"{name} must be a number") from exc
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise Open311Error(400, f"{name} must be between {-bound:g} and {bound:g}")
    return value


def _attribute_value(attr: Attribute, values: list[str]) -> Any:
    keys = {k for k, _ in attr.values}
    if attr.datatype == "multivaluelist":
        if any(v not in keys for v in values):
            raise Open311Error(400, f"attribute[{attr.code}] must be among {', '.join(sorted(keys))}")
        return sorted(set(values))
    if len(values) != 1:
        raise Open311Error(400, f"attribute[{attr.code}] takes one value")
    value = values[0]
    if attr.datatype == "number":
        try:
            number = float(value)
        except ValueError as exc:
            raise Open311Error(400, f"attribute[{attr.code}] must be a number") from exc
        if not math.isfinite(number):
            raise Open311Error(400, f"attribute[{attr.code}] must be a finite number")
        return number
    if attr.datatype == "datetime":
        try:
            return clock.iso(clock.parse_iso(value))
        except ValueError as exc:
            raise Open311Error(400, f"attribute[{attr.code}] must be an ISO 8601 date-time") from exc
    if attr.datatype == "singlevaluelist":
        if value not in keys:
            raise Open311Error(400, f"attribute[{attr.code}] must be one of {', '.join(sorted(keys))}")
        return value
    limit = 256 if attr.datatype == "string" else 4000
    if len(value) > limit:
        raise Open311Error(400, f"attribute[{attr.code}] is longer than {limit} characters")
    return value


def _public(text: str | None) -> str | None:
    return mask_public_text(text) if text else None


def iso_or_none(value: datetime | None) -> str | None:
    return clock.iso(clock.as_utc(value)) if value is not None else None


class Open311Service:
    def __init__(self, engine: AsyncEngine, incidents: IncidentService, security: Any,
                 catalogue: Catalogue | None = None, write_lock: Any = None) -> None:
        self.engine = engine
        self.incidents = incidents
        self.security = security
        self.catalogue = catalogue or Catalogue.load()
        self._sqlite = engine.dialect.name == "sqlite"
        self._lock = write_lock
        self.max_requests = env_int("CITYOS_OPEN311_MAX_REQUESTS", 1000)
        self.media = MediaStore(engine, write_lock or asyncio.Lock())  # photos of reports (随手拍)
        # Verified keys (by digest) → (tenant, read at): a report must not cost a key query. A revocation
        # here drops the cache at once; one made by another process takes effect within the TTL.
        self.key_ttl = env_float("CITYOS_OPEN311_KEY_CACHE_SECONDS", 10.0)
        self._keys: dict[str, tuple[str, float]] = {}

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._sqlite and self._lock is not None:
            async with self._lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    # ------------------------------------------------------------------ catalogue

    def reader_tenant(self, principal: Principal | None, header_tenant: str | None,
                      request_tenant: str) -> str:
        """The tenant whose service requests a GET reads.

        Anonymous callers read the jurisdiction's tenant only: an NGSILD-Tenant header naming another
        tenant is refused (Open311 has no tenants; without this, anyone could read every tenant's
        requests by naming it). Signed-in callers read their token's tenant (`request_tenant`, already
        checked against the header)."""
        if principal is not None:
            return request_tenant
        if header_tenant is not None and header_tenant != self.catalogue.tenant:
            raise Open311Error(404, f"no jurisdiction for tenant {header_tenant[:64]!r}")
        return self.catalogue.tenant

    def service(self, code: str) -> Service:
        found = self.catalogue.services.get(code)
        if found is None:
            raise Open311Error(404, f"service_code {code[:64]!r} not found")
        return found

    # ------------------------------------------------------------------ API keys

    async def create_key(self, tenant: str, name: str, by: Principal | None) -> dict[str, Any]:
        key_id = secrets.token_hex(8)
        key = f"o311_{secrets.token_urlsafe(24)}"
        now = clock.now()
        async with self.write() as conn:
            await conn.execute(insert(api_keys).values(
                id=key_id, tenant=tenant, name=name, key_hash=hash_key(key), created_at=now,
                created_by=by.label if by else "anonymous"))
            # In the same transaction: a key never exists without its audit record.
            await self.security.audit.append_in(conn, [AuditEvent.of(
                by, "open311.key.create", f"open311-key:{key_id}", tenant=tenant, name=name)])
        return {"id": key_id, "name": name, "api_key": key, "createdAt": clock.iso(now)}

    async def list_keys(self, tenant: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).where(api_keys.c.tenant == tenant)
                                       .order_by(api_keys.c.created_at))).all()
        return [{"id": r.id, "name": r.name, "createdAt": iso_or_none(r.created_at), "createdBy": r.created_by,
                 "revokedAt": iso_or_none(r.revoked_at)} for r in rows]

    async def revoke_key(self, tenant: str, key_id: str, by: Principal | None) -> bool:
        async with self.write() as conn:
            result = await conn.execute(update(api_keys).where(
                api_keys.c.tenant == tenant, api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=clock.now()))
            if result.rowcount:
                await self.security.audit.append_in(conn, [AuditEvent.of(
                    by, "open311.key.revoke", f"open311-key:{key_id}", tenant=tenant)])
        self._keys.clear()
        return bool(result.rowcount)

    async def key_tenant(self, key: str | None) -> str:
        if not key:
            raise Open311Error(400, "api_key is required")
        digest = hash_key(key)
        moment = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and moment - cached[1] < self.key_ttl:
            return cached[0]
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys.c.tenant).where(
                api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)))).first()
        if row is None:
            self._keys.pop(digest, None)
            raise Open311Error(403, "invalid api_key")
        if self.key_ttl > 0:
            if len(self._keys) >= 10_000:
                self._keys.clear()
            self._keys[digest] = (str(row.tenant), moment)
        return str(row.tenant)

    # ------------------------------------------------------------------ POST requests

    def parse(self, form: dict[str, list[str]]) -> tuple[Service, NewIncident, str | None]:
        """Validate a POST requests form; returns the service, the incident to open and the account_id."""
        for name in form:
            if name not in KNOWN_FIELDS and not _ATTRIBUTE.match(name):
                raise Open311Error(400, f"unknown parameter {name[:64]!r}")
        code = _one(form, "service_code", 64)
        if code is None:
            raise Open311Error(400, "service_code is required")
        service = self.service(code)
        lat = _coordinate(_one(form, "lat", 40), "lat", 90)
        lon = _coordinate(_one(form, "long", 40), "long", 180)
        if (lat is None) != (lon is None):
            raise Open311Error(400, "lat and long go together")
        address = _one(form, "address_string", 512)
        address_id = _one(form, "address_id", 128)
        if lat is None and address is None and address_id is None:
            raise Open311Error(400, "a location is required: lat and long, address_string or address_id")
        description = _one(form, "description", 4000) or ""
        media_url = _one(form, "media_url", 1024)
        if media_url is not None and not re.match(r"^https?://[^\s<>\"]+$", media_url):
            raise Open311Error(400, "media_url must be an http(s) URL")
        reporter: dict[str, str] = {}
        for name in PERSONAL:
            value = _one(form, name, 254 if name == "email" else 128)
            if value is not None:
                reporter[name] = value
        if "email" in reporter and not _EMAIL.match(reporter["email"]):
            raise Open311Error(400, "email is not an e-mail address")
        if "phone" in reporter and not _PHONE.match(reporter["phone"]):
            raise Open311Error(400, "phone may hold digits, spaces and + - ( ) only")
        given: dict[str, list[str]] = {}
        for name, values in form.items():
            match = _ATTRIBUTE.match(name)
            if match:
                given.setdefault(match.group(1), []).extend(values)
        by_code = {a.code: a for a in service.attributes}
        unknown = sorted(set(given) - set(by_code))
        if unknown:
            raise Open311Error(400, f"service {service.code} has no attribute {unknown[0]!r}")
        answers: dict[str, Any] = {}
        for attr in service.attributes:
            values = [v for v in given.get(attr.code, []) if v != ""]
            if not values:
                if attr.required:
                    raise Open311Error(400, f"attribute[{attr.code}] is required")
                continue
            answers[attr.code] = _attribute_value(attr, values)
        if address_id is not None:
            answers["address_id"] = address_id
        for text in (description, address or "", *(str(v) for v in answers.values())):
            if "\x00" in text:
                raise Open311Error(400, "NUL characters are not allowed")
        new = NewIncident(
            category=service.category, title=service.name, description=description, source="open311",
            location={"type": "Point", "coordinates": [lon, lat]} if lon is not None and lat is not None else None,
            address=address, reporter=reporter or None, service_code=service.code, attributes=answers or None,
            media_url=media_url, token=secrets.token_hex(16))
        return service, new, reporter.get("account_id")

    async def submit(self, tenant: str, form: dict[str, list[str]], principal: Principal | None,
                     check: Any = None) -> dict[str, Any]:
        service, new, account_id = self.parse(form)
        if principal is not None:
            new.reporter_id = principal.id

        async def plan_check(plan: Plan) -> None:
            if check is not None:
                await check(plan)

        created = await self.incidents.create(tenant, new, principal, check=plan_check)
        incident = created.incident
        notice = f"Forwarded to {incident['department']}."
        if created.outcome == "merged" and created.parent is not None:
            notice = (f"Thank you: the same problem was already reported nearby; your report joins request "
                      f"{created.parent['id']} ({created.parent['reportCount']} reports). "
                      f"Forwarded to {created.parent['department']}.")
        return {"service_request_id": incident["id"], "service_notice": notice, "account_id": account_id,
                "token": new.token, "service": service.code}

    # ------------------------------------------------------------------ GET requests

    def _request(self, row: Any) -> dict[str, Any]:
        merged = row.parent_id is not None
        status = row.p_status if merged and row.p_status else row.status
        attributes = row.attributes or {}
        service = self.catalogue.services.get(row.service_code or "")
        return {
            "service_request_id": str(row.id),
            "status": "closed" if status in ("resolved", "closed") else "open",
            # Public: anyone may GET requests, so phone and ID numbers typed into free text are masked.
            "status_notes": _public(row.p_notes if merged else row.status_notes),
            "service_name": service.name if service else row.title,
            "service_code": row.service_code,
            "description": _public(row.description),
            "agency_responsible": row.p_department if merged else row.department,
            "service_notice": (f"Merged into request {row.parent_id}" if merged else None),
            "requested_datetime": iso_or_none(row.reported_at),
            "updated_datetime": iso_or_none(row.p_updated if merged else row.updated_at),
            "expected_datetime": iso_or_none(row.p_due if merged else row.resolution_due),
            "address": _public(row.address),
            "address_id": attributes.get("address_id"),
            "zipcode": None,
            "lat": row.lat,
            "long": row.lon,
            "media_url": row.media_url,
        }

    async def requests(self, tenant: str, params: dict[str, str | None]) -> list[dict[str, Any]]:
        raw_ids = params.get("service_request_id")
        if raw_ids is not None:
            parts = [p.strip() for p in raw_ids.split(",") if p.strip()]
            if not parts or len(parts) > 1000 or any(not p.isdecimal() or len(p) > 15 for p in parts):
                raise Open311Error(400, "service_request_id must be a comma-separated list of request ids")
            rows = await self.incidents.open311_rows(tenant, ids=[int(p) for p in parts], limit=self.max_requests)
            return [self._request(r) for r in rows]
        codes = None
        if params.get("service_code"):
            codes = [c.strip() for c in str(params["service_code"]).split(",") if c.strip()]
            if any(not _CODE.match(c) for c in codes):
                raise Open311Error(400, "service_code must be a comma-separated list of service codes")
        statuses = None
        if params.get("status"):
            statuses = {s.strip() for s in str(params["status"]).split(",") if s.strip()}
            if not statuses or not statuses <= {"open", "closed"}:
                raise Open311Error(400, "status must be open, closed or open,closed")
        start = self._date(params.get("start_date"), "start_date")
        end = self._date(params.get("end_date"), "end_date")
        if start is not None and end is not None and start > end:
            raise Open311Error(400, "start_date is after end_date")
        if start is None and end is None:
            end = clock.now()
            start = end - timedelta(days=MAX_DAYS)
        elif start is None and end is not None:
            start = end - timedelta(days=MAX_DAYS)
        rows = await self.incidents.open311_rows(tenant, service_codes=codes, start=start, end=end,
                                                 status=statuses, limit=self.max_requests)
        return [self._request(r) for r in rows]

    @staticmethod
    def _date(raw: str | None, name: str) -> datetime | None:
        if raw is None or raw == "":
            return None
        try:
            return clock.parse_iso(raw)
        except ValueError as exc:
            raise Open311Error(400, f"{name} must be a W3C date-time with a time zone, "
                                    "e.g. 2010-01-01T00:00:00Z") from exc

    async def request(self, tenant: str, request_id: str) -> dict[str, Any]:
        if not request_id.isdecimal() or len(request_id) > 15:
            raise Open311Error(404, f"service request {request_id[:40]!r} not found")
        rows = await self.incidents.open311_rows(tenant, ids=[int(request_id)], limit=1)
        if not rows:
            raise Open311Error(404, f"service request {request_id} not found")
        return self._request(rows[0])

    async def token(self, tenant: str, token: str) -> dict[str, Any]:
        found = await self.incidents.by_token(token) if re.match(r"^[0-9a-f]{32}$", token) else None
        if found is None or found[0] != tenant:
            raise Open311Error(404, f"token {token[:40]!r} not found")
        return {"service_request_id": str(found[1]), "token": token}
