"""Open data (数据开放): tiers, API keys, the CKAN shapes of packages and resources, reading rows.

Tiers follow the open type: unconditional datasets are read by anyone; conditional ones need an API key
issued for them (with a purpose and a rate limit); datasets "not open" are invisible here (404, nothing
leaked). Whoever reads, confidential fields never appear and sensitive ones are masked; internal fields
of a conditional dataset appear only with a key.

The rate limit is a sliding minute counted in the database (`data_key_calls`), so it holds for the
whole deployment however many API workers serve the key; refused calls count too, so a client that keeps
hammering stays refused until it slows down.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.db import dialect_insert, write_transaction
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.data.catalogue import Catalogue
from cityos.data.datastore import RowQuery, Source, day_end, desensitise, search_rows
from cityos.data.models import OPEN_CONDITIONAL, OPEN_NONE, OPEN_TYPES, SHARE_TYPES, UPDATE_CYCLES, api_keys, key_calls

DOWNLOAD_FORMATS = ("csv", "json", "geojson", "parquet")
MAX_RATE = 6000


class NotAuthorized(BadRequestData):
    status, error_type, title = 403, "AccessDenied", "Access denied"


class RateLimited(BadRequestData):
    status, error_type, title = 429, "TooManyRequests", "Too many requests"


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    holder: str
    datasets: tuple[str, ...]
    rate_per_minute: int

    def covers(self, code: str) -> bool:
        return "*" in self.datasets or code in self.datasets


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def resource_code(resource_id: str) -> tuple[str, str | None]:
    """`code` (the datastore resource) or `code.csv` etc. (a download) → (code, format)."""
    code, dot, fmt = resource_id.rpartition(".")
    if dot and fmt in DOWNLOAD_FORMATS:
        return code, fmt
    return resource_id, None


class OpenData:
    def __init__(self, engine: AsyncEngine, catalogue: Catalogue) -> None:
        self.engine = engine
        self.catalogue = catalogue

    # ------------------------------------------------------------------ keys

    async def issue_key(self, tenant: str, holder: str, purpose: str, codes: list[str], rate: int,
                        created_by: str) -> dict[str, Any]:
        if not holder.strip() or len(holder) > 256:
            raise BadRequestData("holder is required (at most 256 characters)")
        if len(purpose.strip()) < 4 or len(purpose) > 2000:
            raise BadRequestData("purpose is required (4-2000 characters)")
        if not 1 <= rate <= MAX_RATE:
            raise BadRequestData(f"ratePerMinute must be 1-{MAX_RATE}")
        if not codes or len(codes) > 500:
            raise BadRequestData("datasets must list 1-500 dataset codes")
        for code in codes:
            ds = await self.catalogue.get(tenant, code)
            if ds["open_type"] == OPEN_NONE:
                raise BadRequestData(f"dataset {code!r} is not open (不予开放)")
        secret = "cok_" + secrets.token_urlsafe(24)
        key_id = uuid.uuid4().hex
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            await conn.execute(insert(api_keys).values(
                id=key_id, key_hash=key_hash(secret), tenant=tenant, holder=holder.strip(), purpose=purpose.strip(),
                datasets=sorted(set(codes)), rate_per_minute=rate, created_by=created_by, created_at=clock.now()))
        return {"id": key_id, "key": secret, "holder": holder, "datasets": sorted(set(codes)), "ratePerMinute": rate}

    async def revoke_key(self, tenant: str, key_id: str) -> None:
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            done = await conn.execute(update(api_keys).where(api_keys.c.id == key_id[:32], api_keys.c.tenant == tenant,
                                                             api_keys.c.revoked_at.is_(None))
                                      .values(revoked_at=clock.now()))
        if done.rowcount != 1:
            raise ResourceNotFound(f"no active key {key_id[:32]!r}")

    async def key_of(self, secret: str) -> ApiKey | None:
        if not secret.startswith("cok_") or len(secret) > 100:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash(secret)))).first()
        if row is None or row.revoked_at is not None:
            return None
        return ApiKey(row.id, row.tenant, row.holder, tuple(row.datasets), row.rate_per_minute)

    async def spend(self, key: ApiKey) -> None:
        """Count one call of `key`; 429 when the sliding minute is over its rate (see the module docstring)."""
        now = time.time()
        minute = int(now // 60)
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            counted = dialect_insert(conn, key_calls).values(key_id=key.id, minute=minute, calls=1)
            counted = counted.on_conflict_do_update(index_elements=["key_id", "minute"],
                                                    set_={"calls": key_calls.c.calls + 1})
            calls = (await conn.execute(counted.returning(key_calls.c.calls))).scalar_one()
            previous = (await conn.execute(select(key_calls.c.calls).where(
                key_calls.c.key_id == key.id, key_calls.c.minute == minute - 1))).scalar_one_or_none() or 0
        inside = 1 - (now - minute * 60) / 60  # the share of the previous minute still in the window
        if previous * inside + calls > key.rate_per_minute:
            # wait until enough of the previous minute (or, with none left, this minute) has slid out
            wait = 60 - (now - minute * 60) if previous * inside < 1 else \
                60 * (previous * inside + calls - key.rate_per_minute) / previous
            raise RateLimited(f"this key allows {key.rate_per_minute} calls a minute",
                              headers={"Retry-After": str(min(60, max(1, math.ceil(wait))))})

    async def prune_calls(self) -> int:
        """Drop per-minute counts no window reads any more (older than the previous minute)."""
        async with write_transaction(self.engine, self.catalogue.lock) as conn:
            done = await conn.execute(delete(key_calls).where(key_calls.c.minute < int(time.time() // 60) - 1))
        return int(done.rowcount or 0)

    # ------------------------------------------------------------------ packages

    async def open_dataset(self, tenant: str, code: str) -> dict[str, Any]:
        ds = await self.catalogue.get(tenant, code)
        if ds["open_type"] == OPEN_NONE:
            raise ResourceNotFound(f"no dataset {code!r}")
        return ds

    async def check_access(self, ds: dict[str, Any], key: ApiKey | None) -> None:
        if ds["open_type"] != OPEN_CONDITIONAL:
            return
        if key is None:
            raise NotAuthorized(f"dataset {ds['id']!r} is conditionally open (有条件开放): apply for an API key")
        if key.tenant != ds["tenant"] or not key.covers(ds["id"]):
            raise NotAuthorized(f"this API key does not cover dataset {ds['id']!r}")
        await self.spend(key)

    async def read(self, ds: dict[str, Any], query: RowQuery, key: ApiKey | None,
                   conn: AsyncConnection | None = None) -> dict[str, Any]:
        """datastore_search over a dataset the caller may read (check_access first)."""
        src = await self.source(ds, query.as_of, conn)
        classes = {f["id"]: f["class"] for f in ds["fields"]}
        found, total = await search_rows(self.engine, src, query, conn) if src else ([], 0)
        clear = frozenset({"internal"}) if key is not None else frozenset()
        records = desensitise(found, classes, clear)
        if query.fields:
            wanted = set(query.fields)
            records = [{k: v for k, v in r.items() if k in wanted} for r in records]
        shown = self.visible_fields(ds, key is not None)
        if query.fields:
            shown = [f for f in shown if f["id"] in set(query.fields)]
        return {"records": records, "total": total, "fields": shown}

    def visible_fields(self, ds: dict[str, Any], with_key: bool) -> list[dict[str, Any]]:
        shown: list[dict[str, Any]] = [{"id": "_id", "type": "int"}]
        for f in ds["fields"]:
            if f["class"] == "confidential" or (f["class"] == "internal" and not with_key):
                continue
            shown.append({"id": f["id"], "type": f["type"], "info": {"label": f["id"], "dataClass": f["class"]}})
        return shown

    async def source(self, ds: dict[str, Any], as_of: str | None,
                     conn: AsyncConnection | None = None) -> Source | None:
        types = {f["id"]: f["type"] for f in ds["fields"]}
        history = ds["source_kind"] == "readings"
        until = day_end(as_of) if as_of else None
        if history:
            return Source(ds["tenant"], ds["id"], 0, types, "entityId", "observedAt", until,
                          subkey_field="attribute")
        version = await self.catalogue.version_as_of(ds["tenant"], ds["id"], until, conn)
        if version is None:
            return None
        key_field = {"entities": "id", "index": "_key"}.get(ds["source_kind"], str(ds["source"].get("keyField", "")))
        return Source(ds["tenant"], ds["id"], int(version), types, key_field, None)


def ckan_package(ds: dict[str, Any], base: str = "") -> dict[str, Any]:
    """A dataset in CKAN's package shape (package_show / package_search results)."""
    code = ds["id"]
    created = clock.iso(clock.as_utc(ds["created_at"]))
    modified = clock.iso(clock.as_utc(ds["modified_at"]))
    resources = [ckan_resource(ds, None, base, 0)]
    formats = ["csv", "json", "parquet"] + (["geojson"] if ds["geo"] else [])
    resources += [ckan_resource(ds, fmt, base, i + 1) for i, fmt in enumerate(formats)]
    tags = [{"id": t, "name": t, "display_name": t, "state": "active", "vocabulary_id": None} for t in ds["tags"]]
    return {
        "id": code, "name": code, "title": ds["title"], "notes": ds["description"], "type": "dataset",
        "state": "active", "private": False, "version": str(ds["version"]), "url": "", "author": ds["provider"],
        "maintainer": ds["provider"],
        "license_id": "cc-by-4.0" if ds["open_type"] != OPEN_CONDITIONAL else "other-closed",
        "license_title": "Creative Commons Attribution 4.0" if ds["open_type"] != OPEN_CONDITIONAL
        else "有条件开放 (conditional)",
        "metadata_created": created, "metadata_modified": modified,
        "owner_org": ds["provider"], "organization": ckan_organization(ds["provider"]),
        "groups": [{"id": ds["category"], "name": ds["category"], "title": ds["category"],
                    "display_name": ds["category"], "description": "", "image_display_url": ""}],
        "tags": tags, "num_tags": len(tags), "resources": resources, "num_resources": len(resources),
        "extras": [{"key": k, "value": str(v)} for k, v in (
            ("title_en", ds["title_en"]), ("resource_code", code), ("provider", ds["provider"]),
            ("category", ds["category"]), ("update_cycle", ds["update_cycle"]),
            ("update_cycle_zh", UPDATE_CYCLES.get(ds["update_cycle"], "")),
            ("share_type", ds["share_type"]), ("share_type_zh", SHARE_TYPES.get(ds["share_type"], "")),
            ("open_type", ds["open_type"]), ("open_type_zh", OPEN_TYPES.get(ds["open_type"], "")),
            ("row_count", ds["row_count"]), ("district", ds["district"] or ""))],
        "fields": [{"id": f["id"], "type": f["type"], "dataClass": f["class"]} for f in ds["fields"]],
    }


def ckan_resource(ds: dict[str, Any], fmt: str | None, base: str, position: int) -> dict[str, Any]:
    code = ds["id"]
    if fmt is None:
        url = f"{base}/api/3/action/datastore_search?resource_id={code}"
        rid, name, shown = code, f"{ds['title']} (DataStore)", "JSON"
    else:
        url = f"{base}/opendata/download/{code}.{fmt}"
        rid, name, shown = f"{code}.{fmt}", f"{ds['title']} ({fmt.upper()})", fmt.upper()
    return {"id": rid, "package_id": code, "name": name, "format": shown, "url": url, "url_type": None,
            "datastore_active": fmt is None, "state": "active", "position": position,
            "created": clock.iso(clock.as_utc(ds["created_at"])),
            "last_modified": clock.iso(clock.as_utc(ds["modified_at"])), "description": ds["title_en"],
            "mimetype": {None: "application/json", "csv": "text/csv", "json": "application/json",
                         "geojson": "application/geo+json", "parquet": "application/vnd.apache.parquet"}[fmt]}


def ckan_organization(name: str, count: int | None = None) -> dict[str, Any]:
    org = {"id": name, "name": name, "title": name, "display_name": name, "type": "organization",
           "state": "active", "is_organization": True, "approval_status": "approved", "description": "",
           "image_url": "", "created": "2026-01-01T00:00:00+00:00"}
    if count is not None:
        org["package_count"] = count
    return org
