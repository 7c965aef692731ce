"""The data resource catalogue (政务数据资源目录): harvesting the hub into datasets, registering departments'
datasets, searching with facets, versions (30-day snapshots).

What is catalogued automatically, per tenant:
- each hub entity type (current state), and its slices by district and by category (the way a city
  catalogue lists "schools of Longhua district" as its own resource);
- each observed type's reading history (the public attributes), whole and per district;
- derived indices are hub entity types too (AQI, KPIs), so they are catalogued the same way.

Rows are read through the hub's service API (`HubService.discovery`, `HubService.query`); the reading
history is read from the hub's history table (the hub has no bulk streaming API for it) with a watermark.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.config import env_float
from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.core.errors import BadRequestData, ResourceNotFound
from cityos.core.tasks import DutyCycle
from cityos.data.models import (
    OPEN_CONDITIONAL,
    OPEN_NONE,
    OPEN_UNCONDITIONAL,
    SHARE_CONDITIONAL,
    SHARE_UNCONDITIONAL,
    SNAPSHOT_DAYS,
    UPDATE_CYCLES,
    datasets,
    rows,
    versions,
)
from cityos.hub.store import EntityQuery, EntityRecord
from cityos.hub.temporal.instances import instances_of_type_in_parts
from cityos.security.classes import RANK, ClassRegistry

PAGE = 500
MIN_CELL = 3  # an aggregate cell of fewer readings is not published
APPEND_ROWS = 1000  # catalogue rows per write transaction when a harvest appends readings
CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,99}$")
PUBLIC, INTERNAL, SENSITIVE, CONFIDENTIAL = "public", "internal", "sensitive", "confidential"


@dataclass(frozen=True)
class TypeInfo:
    zh: str
    en: str
    category: str
    provider: str
    cycle: str


# Known types: title, theme (资源分类) and the default provider; others get the generic entry.
TYPES: dict[str, TypeInfo] = {
    "District": TypeInfo("行政区划", "Districts", "geography", "natural-resources", "yearly"),
    "Road": TypeInfo("道路", "Roads", "transport", "transport", "yearly"),
    "River": TypeInfo("河流", "Rivers", "geography", "water-authority", "yearly"),
    "PointOfInterest": TypeInfo("公共设施点位", "Points of interest", "public-services", "urban-management",
                                "monthly"),
    "AirQualityObserved": TypeInfo("空气质量监测", "Air quality observations", "environment", "environment",
                                   "realtime"),
    "WaterQualityObserved": TypeInfo("水质监测", "Water quality observations", "environment", "environment",
                                     "realtime"),
    "NoiseLevelObserved": TypeInfo("噪声监测", "Noise level observations", "environment", "environment", "realtime"),
    "TrafficFlowObserved": TypeInfo("交通流量", "Traffic flow observations", "transport", "transport", "realtime"),
    "ParkingSpot": TypeInfo("停车泊位", "Parking spots", "transport", "transport", "realtime"),
    "WaterObserved": TypeInfo("水位监测", "Water level observations", "water", "water-authority", "realtime"),
    "EnergyMeter": TypeInfo("智能电表", "Energy meters", "energy", "energy", "realtime"),
    "WasteContainer": TypeInfo("垃圾箱", "Waste containers", "urban-management", "sanitation", "realtime"),
    "Streetlight": TypeInfo("路灯", "Streetlights", "urban-management", "urban-management", "realtime"),
    "Device": TypeInfo("物联感知设备", "IoT devices", "iot", "it-operations", "realtime"),
    "AirQualityIndex": TypeInfo("空气质量指数", "Air quality index", "environment", "environment", "realtime"),
    "KeyPerformanceIndicator": TypeInfo("运营评估指标", "Key performance indicators", "evaluation",
                                        "data-office", "daily"),
    "Alert": TypeInfo("事件告警", "Alerts", "public-safety", "urban-management", "realtime"),
}
GENERIC = TypeInfo("数据资源", "Data resource", "other", "data-office", "irregular")
# Types never catalogued: the platform's own configuration.
SKIPPED_TYPES = frozenset({"DataClassPolicy"})
META_FIELDS = frozenset({"id", "type"})


@dataclass
class Slice:
    code: str
    title: str
    title_en: str
    district: str | None
    category_value: str | None
    rows: list[tuple[str, datetime | None, dict[str, Any]]] = field(default_factory=list)


def slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:40] or "x"


def term_of(iri: str) -> str:
    return iri.rsplit("/", 1)[-1].rsplit("#", 1)[-1]


def flatten(instances: Any) -> Any:
    """The value of an NGSI-LD attribute's first instance: a Property's value, a Relationship's object."""
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
        return None
    inst = instances[0]
    if "object" in inst:
        return inst["object"]
    if "value" in inst:
        value = inst["value"]
        return value.get("@value", value) if isinstance(value, dict) and "@value" in value else value
    return inst.get("languageMap") or inst.get("json")


def field_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "numeric"
    if isinstance(value, dict | list):
        return "json"
    if isinstance(value, str) and len(value) >= 19 and value[4:5] == "-" and value[10:11] == "T":
        return "timestamp"
    return "text"


def open_and_share(classes: Iterable[str], default: str) -> tuple[str, str]:
    """The open type and share type that follow from the fields' classes (GB/T 21063 practice)."""
    levels = set(classes)
    if default == CONFIDENTIAL and levels <= {CONFIDENTIAL, PUBLIC}:
        return OPEN_NONE, SHARE_CONDITIONAL
    open_type = OPEN_UNCONDITIONAL if levels <= {PUBLIC} else OPEN_CONDITIONAL
    share_type = SHARE_UNCONDITIONAL if levels <= {PUBLIC, INTERNAL} else SHARE_CONDITIONAL
    return open_type, share_type


def _numeric_in(records: list[EntityRecord], iri: str) -> bool:
    """Does any entity hold a number in this attribute (a quantity with readings worth a dataset)?"""
    for record in records:
        value = flatten(record.attrs.get(iri))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True
    return False


def digest(items: list[tuple[str, datetime | None, dict[str, Any]]]) -> str:
    h = hashlib.sha256()
    for key, _ts, doc in items:
        h.update(key.encode())
        h.update(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


class CatalogueError(BadRequestData):
    pass


class Catalogue:
    def __init__(self, engine: AsyncEngine, hub: Any, classes: ClassRegistry,
                 write_lock: asyncio.Lock | None = None, compact: Any = None) -> None:
        self.engine = engine
        self.hub = hub  # HubService
        self.classes = classes
        self.lock = write_lock or asyncio.Lock()
        # IRI → term with the core @context (the names a CKAN or CSV user sees).
        self.term: Any = compact or term_of
        self.lineage: Any = None  # cityos.data.lineage.Lineage, set by the domain's start
        self.sources: Any = None  # cityos.data.sources.Sources (一数一源), set by the domain's start
        self.index: Any = None  # cityos.data.searchindex.SearchIndex, set by the domain's start
        # The share of the wall time a harvest may take (CITYOS_DATA_HARVEST_SHARE, default a quarter): it rests
        # between its parts and slices, so the signal loop, the readings' ingest and the API keep the writer and
        # the event loop.
        self.harvest_share = env_float("CITYOS_DATA_HARVEST_SHARE", 0.25)
        self.harvest_rested = 0.0  # seconds the harvests rested between their slices (DutyCycle)

    def changed(self, tenant: str) -> None:
        """The catalogue of `tenant` was written: the search index reloads it."""
        if self.index is not None:
            self.index.invalidate(tenant)

    # ------------------------------------------------------------------ harvesting

    async def harvest(self, tenant: str, history_limit: int = 200_000) -> dict[str, Any]:
        """Catalogue every hub entity type of `tenant` (and its slices and reading history)."""
        pairs, counts = await self.hub.discovery(tenant)
        del pairs
        districts = await self._district_names(tenant)
        written: list[str] = []
        duty = DutyCycle(self.harvest_share)
        for type_iri in sorted(counts):
            term = self.term(type_iri)
            if term in SKIPPED_TYPES:
                continue
            records = await self._all_of_type(tenant, type_iri)
            if not records:
                continue
            state = await self._catalogue_type(tenant, type_iri, term, records, districts)
            await duty.rest()
            readings = await self._catalogue_readings(tenant, type_iri, term, records, districts, history_limit,
                                                      duty)
            hourly = await self._catalogue_hourly(tenant, type_iri, term, records, districts, history_limit, duty)
            written += state + readings + hourly
            if self.lineage is not None:
                await self.lineage.emit(tenant, "cityos.data.harvest", [("hub", term)],
                                        [("catalogue", c) for c in state])
                if readings:
                    await self.lineage.emit(tenant, "cityos.data.harvest", [("iot", f"{term}.history")],
                                            [("catalogue", c) for c in readings])
                if hourly:
                    await self.lineage.emit(tenant, "cityos.data.index", [("iot", f"{term}.history")],
                                            [("catalogue", c) for c in hourly])
        self.harvest_rested += duty.rested
        return {"tenant": tenant, "datasets": len(written), "codes": written}

    async def _district_names(self, tenant: str) -> dict[str, str]:
        try:
            records = await self._all_of_type(tenant, self.classes.expand("District"))
        except Exception:  # a tenant without districts
            return {}
        names: dict[str, str] = {}
        for record in records:
            name = flatten(record.attrs.get(self.classes.expand("name")))
            names[record.id] = str(name) if name else term_of(record.id)
        return names

    async def _all_of_type(self, tenant: str, type_iri: str) -> list[EntityRecord]:
        found: list[EntityRecord] = []
        after: str | None = None
        while True:
            page, _ = await self.hub.query(tenant, EntityQuery(types=[type_iri], limit=PAGE, after=after))
            found += page
            if len(page) < PAGE:
                return found
            after = page[-1].id

    def _district_of(self, record: EntityRecord, names: dict[str, str]) -> str | None:
        district = flatten(record.attrs.get(self.classes.expand("district")))
        if isinstance(district, str) and district:
            return district
        ref = flatten(record.attrs.get(self.classes.expand("refDistrict")))
        if isinstance(ref, str) and ref:
            return names.get(ref, term_of(ref))
        return None

    def _category_of(self, record: EntityRecord) -> str | None:
        for term in ("category", "roadClass"):
            value = flatten(record.attrs.get(self.classes.expand(term)))
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, str) and value:
                return value
        return None

    def _row(self, record: EntityRecord) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": record.id}
        for iri, instances in record.attrs.items():
            doc[self.term(iri)] = flatten(instances)
        return doc

    def _fields(self, tenant: str, type_iri: str, docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        tc = self.classes.for_type(tenant, type_iri)
        seen: dict[str, Any] = {}
        for doc in docs:
            for key, value in doc.items():
                if key not in seen or seen[key] is None:
                    seen[key] = value
        out = []
        for key, sample in seen.items():
            cls = PUBLIC if key == "id" else tc.attrs.get(self.classes.expand(key), tc.default)
            out.append({"id": key, "type": field_type(sample), "class": cls,
                        "source": {"department": tc.department, "system": "hub"}})
        return out, tc.default

    def _provider(self, tenant: str, type_iri: str, term: str, records: list[EntityRecord]) -> str:
        tc = self.classes.for_type(tenant, type_iri)
        found = Counter(d for d in (self.classes.department_of(r.attrs, tc) for r in records) if d)
        if found:
            return found.most_common(1)[0][0]
        return tc.department or TYPES.get(term, GENERIC).provider

    async def _catalogue_type(self, tenant: str, type_iri: str, term: str, records: list[EntityRecord],
                              districts: dict[str, str]) -> list[str]:
        info = TYPES.get(term, GENERIC)
        zh, en = (info.zh, info.en) if info is not GENERIC else (f"{term}数据", term)
        base = f"hub-{slug(term)}"
        slices: dict[str, Slice] = {base: Slice(base, zh, en, None, None)}
        for record in records:
            doc = self._row(record)
            item = (record.id, record.modified_at, doc)
            slices[base].rows.append(item)
            district = self._district_of(record, districts)
            category = self._category_of(record)
            if district:
                code = f"{base}-d-{slug(district)}"
                slices.setdefault(code, Slice(code, f"{district}{zh}", f"{en} of {district}", district, None))
                slices[code].rows.append(item)
            if category:
                code = f"{base}-c-{slug(category)}"
                slices.setdefault(code, Slice(code, f"{zh}（{category}）", f"{en}: {category}", None, category))
                slices[code].rows.append(item)
                if district:
                    code = f"{base}-c-{slug(category)}-d-{slug(district)}"
                    slices.setdefault(code, Slice(code, f"{district}{zh}（{category}）",
                                                  f"{en}: {category}, {district}", district, category))
                    slices[code].rows.append(item)
        fields, default = self._fields(tenant, type_iri, [doc for _k, _t, doc in slices[base].rows])
        provider = self._provider(tenant, type_iri, term, records)
        open_type, share_type = open_and_share((f["class"] for f in fields), default)
        geo = any(f["id"] == "location" for f in fields)
        written = []
        for sl in slices.values():
            tags = sorted({term, info.category, *([sl.district] if sl.district else []),
                           *([sl.category_value] if sl.category_value else [])})
            meta = {"title": sl.title, "title_en": sl.title_en,
                    "description": f"{sl.title}：由城市数据中枢自动编目的{zh}实体当前状态。 "
                                   f"{sl.title_en}: current state of the hub's {term} entities, catalogued "
                                   "automatically.",
                    "provider": provider, "category": info.category, "tags": tags, "format": "JSON",
                    "update_cycle": info.cycle, "share_type": share_type, "open_type": open_type,
                    "source_kind": "entities", "source": {"type": type_iri, "district": sl.district,
                                                          "category": sl.category_value},
                    "fields": fields, "district": sl.district, "geo": 1 if geo else 0}
            await self.upsert(tenant, sl.code, meta)
            await self.store_version(tenant, sl.code, sl.rows)
            written.append(sl.code)
        return written

    async def _catalogue_readings(self, tenant: str, type_iri: str, term: str, records: list[EntityRecord],
                                  districts: dict[str, str], limit: int, duty: DutyCycle) -> list[str]:
        """The reading history of the type's public observed attributes (append-only, version 0)."""
        tc = self.classes.for_type(tenant, type_iri)
        public_attrs = [iri for iri, cls in tc.attrs.items() if cls == PUBLIC and _numeric_in(records, iri)]
        if not public_attrs:
            return []
        district_of = {r.id: self._district_of(r, districts) for r in records}
        info = TYPES.get(term, GENERIC)
        zh, en = (info.zh, info.en) if info is not GENERIC else (f"{term}数据", term)
        base = f"readings-{slug(term)}"
        codes: dict[str, tuple[str | None, str, str]] = {base: (None, f"{zh}历史读数", f"{en}: reading history")}
        for name in sorted({d for d in district_of.values() if d}):
            codes[f"{base}-d-{slug(name)}"] = (name, f"{name}{zh}历史读数", f"{en}: reading history, {name}")
        # One dataset per measured quantity too (the way portals publish "PM2.5 hourly readings").
        attr_of_code = {f"{base}-a-{slug(self.term(iri))}": iri for iri in public_attrs}
        for code, iri in attr_of_code.items():
            codes[code] = (None, f"{zh}历史读数：{self.term(iri)}", f"{en}: {self.term(iri)} readings")
        fields: list[dict[str, Any]] = [{"id": "entityId", "type": "text", "class": PUBLIC},
                  {"id": "attribute", "type": "text", "class": PUBLIC},
                  {"id": "observedAt", "type": "timestamp", "class": PUBLIC},
                  {"id": "value", "type": "numeric", "class": PUBLIC},
                  {"id": "unitCode", "type": "text", "class": PUBLIC},
                  {"id": "district", "type": "text", "class": PUBLIC}]
        for f in fields:
            f["source"] = {"department": tc.department, "system": "iot"}
        provider = self._provider(tenant, type_iri, term, records)
        for code, (district, title, title_en) in codes.items():
            meta = {"title": title, "title_en": title_en,
                    "description": f"{title}（公开属性）。 {title_en} (public attributes), one row per reading.",
                    "provider": provider, "category": info.category,
                    "tags": sorted({term, info.category, "readings", *([district] if district else [])}),
                    "format": "JSON", "update_cycle": "realtime", "share_type": SHARE_UNCONDITIONAL,
                    "open_type": OPEN_UNCONDITIONAL, "source_kind": "readings",
                    "source": {"type": type_iri, "district": district}, "fields": fields,
                    "district": district, "geo": 0}
            await self.upsert(tenant, code, meta)
        empty = set(await self._append_readings(tenant, type_iri, public_attrs, district_of, codes, attr_of_code,
                                                limit, duty))
        return [c for c in codes if c not in empty]

    async def _catalogue_hourly(self, tenant: str, type_iri: str, term: str, records: list[EntityRecord],
                                districts: dict[str, str], limit: int, duty: DutyCycle) -> list[str]:
        """A derived index: hourly mean/min/max per district and quantity, public and sensitive quantities
        alike. Aggregation is how sensitive readings (a wearable's heart rate) may be opened: a cell of
        fewer than MIN_CELL readings is suppressed."""
        tc = self.classes.for_type(tenant, type_iri)
        wanted = [iri for iri, cls in tc.attrs.items() if cls in (PUBLIC, SENSITIVE) and _numeric_in(records, iri)]
        if not wanted:
            return []
        district_of = {r.id: self._district_of(r, districts) for r in records}
        cells: dict[tuple[str, str, str], list[float]] = {}
        async with self.engine.connect() as conn:
            async for found in instances_of_type_in_parts(conn, tenant, type_iri, wanted, newest_first=True,
                                                          limit=limit):
                for entity_id, attr, ts, instance in found:
                    value = instance.get("value") if isinstance(instance, dict) else None
                    district = district_of.get(entity_id)
                    if not district or not isinstance(value, int | float) or isinstance(value, bool):
                        continue
                    start = clock.as_utc(ts).replace(minute=0, second=0, microsecond=0)
                    cells.setdefault((clock.iso(start), district, self.term(attr)), []).append(float(value))
                await duty.rest()
        items: list[tuple[str, datetime | None, dict[str, Any]]] = []
        for (hour, district, quantity), values in sorted(cells.items()):
            if len(values) < MIN_CELL:
                continue
            items.append((f"{district}|{quantity}|{hour}", clock.parse_iso(hour),
                          {"hour": hour, "district": district, "quantity": quantity, "readings": len(values),
                           "mean": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}))
        if not items:
            return []
        info = TYPES.get(term, GENERIC)
        zh, en = (info.zh, info.en) if info is not GENERIC else (f"{term}数据", term)
        code = f"index-{slug(term)}-hourly"
        fields: list[dict[str, Any]] = [{"id": "hour", "type": "timestamp", "class": PUBLIC},
                  {"id": "district", "type": "text", "class": PUBLIC},
                  {"id": "quantity", "type": "text", "class": PUBLIC},
                  {"id": "readings", "type": "numeric", "class": PUBLIC},
                  {"id": "mean", "type": "numeric", "class": PUBLIC},
                  {"id": "min", "type": "numeric", "class": PUBLIC},
                  {"id": "max", "type": "numeric", "class": PUBLIC}]
        for f in fields:
            f["source"] = {"department": tc.department, "system": "data-office"}
        meta: dict[str, Any] = {"title": f"{zh}分区逐时统计", "title_en": f"{en}: hourly statistics per district",
                "description": f"{zh}分区逐时均值、最小值、最大值（少于{MIN_CELL}个读数的单元不发布）。 "
                               f"{en}: hourly mean, min and max per district and quantity (cells of fewer than "
                               f"{MIN_CELL} readings are suppressed).",
                "provider": "data-office", "category": info.category,
                "tags": sorted({term, info.category, "index", "hourly"}), "format": "JSON",
                "update_cycle": "daily", "share_type": SHARE_UNCONDITIONAL, "open_type": OPEN_UNCONDITIONAL,
                "source_kind": "index", "source": {"type": type_iri, "aggregate": "hourly"}, "fields": fields,
                "district": None, "geo": 0}
        await self.upsert(tenant, code, meta)
        await self.store_version(tenant, code, items)
        written = [code]
        for district in sorted({doc["district"] for _k, _t, doc in items}):
            part = f"{code}-d-{slug(district)}"
            await self.upsert(tenant, part, {**meta, "title": f"{district}{meta['title']}",
                                             "title_en": f"{meta['title_en']}, {district}", "district": district,
                                             "tags": sorted({*meta["tags"], district}),
                                             "source": {**meta["source"], "district": district}})
            await self.store_version(tenant, part, [item for item in items if item[2]["district"] == district])
            written.append(part)
        return written

    async def _append_readings(self, tenant: str, type_iri: str, attrs: list[str],
                               district_of: dict[str, str | None], codes: dict[str, Any],
                               attr_of_code: dict[str, str], limit: int, duty: DutyCycle) -> list[str]:
        """Append the new readings (after the watermark); the codes that still have no row are taken out
        of the catalogue and returned."""
        base = next(iter(codes))
        empty: list[str] = []
        found: list[Any] = []
        async with self.engine.connect() as conn:
            mark = (await conn.execute(select(func.max(rows.c.ts)).where(
                rows.c.tenant == tenant, rows.c.dataset == base, rows.c.version == 0))).scalar()
            async for part in instances_of_type_in_parts(conn, tenant, type_iri, attrs, after=mark, limit=limit):
                found += part
                await duty.rest()
        code_of_district = {d: c for c, (d, _t, _e) in codes.items() if d}
        code_of_attr = {iri: c for c, iri in attr_of_code.items()}
        pending: list[dict[str, Any]] = []
        previous: datetime | None = None
        for entity_id, attr, ts, instance in found:
            # Committed a slice at a time, each slice all copies of its readings and cut only between two
            # instants, so the watermark (the newest reading of `base`) stays exact if the harvest stops half-way;
            # one transaction for 200,000 readings held the SQLite writer for seconds (signal commands waited).
            if len(pending) >= APPEND_ROWS and ts != previous:
                await self._insert_rows(pending)
                pending = []
                await duty.rest()
            previous = ts
            value = instance.get("value") if isinstance(instance, dict) else None
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            district = district_of.get(entity_id)
            doc = {"entityId": entity_id, "attribute": self.term(attr), "observedAt": clock.iso(clock.as_utc(ts)),
                   "value": value, "unitCode": instance.get("unitCode"), "district": district}
            row = {"tenant": tenant, "version": 0, "key": entity_id, "ts": ts, "doc": doc, "subkey": doc["attribute"]}
            pending.append({**row, "dataset": base})
            if district and district in code_of_district:
                pending.append({**row, "dataset": code_of_district[district]})
            if attr in code_of_attr:
                pending.append({**row, "dataset": code_of_attr[attr]})
        await self._insert_rows(pending)
        async with write_transaction(self.engine, self.lock) as conn:
            for code in codes:
                count = (await conn.execute(select(func.count()).select_from(rows).where(
                    rows.c.tenant == tenant, rows.c.dataset == code, rows.c.version == 0))).scalar_one()
                if count == 0:
                    # No empty shells: a district whose devices have not reported a public reading yet
                    # gets its dataset when the first reading is harvested.
                    await conn.execute(delete(datasets).where(datasets.c.tenant == tenant, datasets.c.id == code))
                    empty.append(code)
                    continue
                await conn.execute(update(datasets).where(datasets.c.tenant == tenant, datasets.c.id == code)
                                   .values(row_count=count, harvested_at=clock.now()))
        self.changed(tenant)
        return empty

    async def _insert_rows(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        async with write_transaction(self.engine, self.lock) as conn:
            for start in range(0, len(batch), 1000):
                await conn.execute(insert(rows), batch[start:start + 1000])

    # ------------------------------------------------------------------ writing the catalogue

    async def upsert(self, tenant: str, code: str, meta: dict[str, Any]) -> None:
        if not CODE.match(code):
            raise CatalogueError(f"a dataset code is 2-100 lower-case letters, digits, '-' or '_', not {code!r}")
        now = clock.now()
        values = dict(meta)
        values["tag_text"] = "|" + "|".join(values["tags"]) + "|"
        values["search_text"] = " ".join([code, values["title"], values["title_en"], values["description"],
                                          *values["tags"], values["provider"], values["category"],
                                          *(f["id"] for f in values["fields"])]).lower()
        values["modified_at"] = now
        async with write_transaction(self.engine, self.lock) as conn:
            found = (await conn.execute(select(datasets.c.id).where(
                datasets.c.tenant == tenant, datasets.c.id == code))).first()
            if found is None:
                await conn.execute(insert(datasets).values(tenant=tenant, id=code, created_at=now, row_count=0,
                                                           version=0, **values))
            else:
                await conn.execute(update(datasets).where(datasets.c.tenant == tenant, datasets.c.id == code)
                                   .values(**values))
        self.changed(tenant)

    async def store_version(self, tenant: str, code: str, items: list[tuple[str, datetime | None, dict[str, Any]]],
                            run_id: str | None = None) -> int:
        """A new version when the content changed; versions older than SNAPSHOT_DAYS are dropped
        (the newest is always kept)."""
        signature = digest(items)
        now = clock.now()
        async with write_transaction(self.engine, self.lock) as conn:
            latest = (await conn.execute(select(versions.c.version, versions.c.digest).where(
                versions.c.tenant == tenant, versions.c.dataset == code)
                .order_by(versions.c.version.desc()).limit(1))).first()
            if latest is not None and latest.digest == signature:
                return int(latest.version)
            number = (latest.version if latest is not None else 0) + 1
            await conn.execute(insert(versions).values(tenant=tenant, dataset=code, version=number, created_at=now,
                                                       row_count=len(items), digest=signature, run_id=run_id))
            batch = [{"tenant": tenant, "dataset": code, "version": number, "key": key, "ts": ts, "doc": doc}
                     for key, ts, doc in items]
            for start in range(0, len(batch), 1000):
                await conn.execute(insert(rows), batch[start:start + 1000])
            await conn.execute(update(datasets).where(datasets.c.tenant == tenant, datasets.c.id == code)
                               .values(version=number, row_count=len(items), harvested_at=now))
            await self._prune(conn, tenant, code, number, now)
        self.changed(tenant)
        return number

    async def _prune(self, conn: AsyncConnection, tenant: str, code: str, newest: int, now: datetime) -> None:
        old = [r.version for r in await conn.execute(select(versions.c.version).where(
            versions.c.tenant == tenant, versions.c.dataset == code, versions.c.version < newest,
            versions.c.created_at < now - timedelta(days=SNAPSHOT_DAYS + 1)))]
        # Keep the newest version older than the window: it is what "as of 30 days ago" reads.
        if len(old) > 1:
            drop = sorted(old)[:-1]
            await conn.execute(delete(rows).where(rows.c.tenant == tenant, rows.c.dataset == code,
                                                  rows.c.version.in_(drop)))
            await conn.execute(delete(versions).where(versions.c.tenant == tenant, versions.c.dataset == code,
                                                      versions.c.version.in_(drop)))

    async def register(self, tenant: str, provider: str, body: dict[str, Any],
                       records: list[dict[str, Any]], principal: str = "") -> dict[str, Any]:
        """A department registers a dataset of its own (an upload: rows as JSON objects)."""
        code = str(body.get("code", ""))
        if not CODE.match(code) or code.startswith(("hub-", "readings-")):
            raise CatalogueError("code must be 2-100 lower-case letters, digits, '-' or '_' "
                                 "and not start with hub- or readings-")
        cycle = body.get("updateCycle", "irregular")
        if cycle not in UPDATE_CYCLES:
            raise CatalogueError(f"updateCycle must be one of {', '.join(UPDATE_CYCLES)}")
        declared = body.get("fields")
        if not isinstance(declared, list) or not declared or len(declared) > 200:
            raise CatalogueError("fields must be a list of 1-200 {id, class, type?}")
        fields = []
        for f in declared:
            if not isinstance(f, dict) or not isinstance(f.get("id"), str) or f.get("class") not in RANK:
                raise CatalogueError("each field needs an id and a class (public, internal, sensitive, confidential)")
            fields.append({"id": f["id"][:128], "type": str(f.get("type", "text"))[:16], "class": f["class"],
                           "source": {"department": provider, "system": str(f.get("system", "upload"))[:64]}})
        names = {f["id"] for f in fields}
        if len(names) != len(fields):
            raise CatalogueError("field ids must be unique")
        if not isinstance(records, list) or len(records) > 100_000:
            raise CatalogueError("records must be a list of at most 100000 objects")
        key_field = body.get("keyField") or fields[0]["id"]
        items: list[tuple[str, datetime | None, dict[str, Any]]] = []
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not set(record) <= names:
                raise CatalogueError(f"record {i} must be an object with only the declared fields")
            items.append((str(record.get(key_field, i))[:512], None, record))
        title = str(body.get("title", ""))[:512]
        if not title:
            raise CatalogueError("title is required")
        if self.sources is not None:  # 一数一源: fields whose authoritative source is elsewhere
            await self.sources.check_upload(tenant, code, provider, fields, principal or provider)
        open_type, share_type = open_and_share((f["class"] for f in fields), INTERNAL)
        tags = [str(t)[:64] for t in body.get("tags", []) if isinstance(t, str)][:20]
        meta = {"title": title, "title_en": str(body.get("titleEn", title))[:512],
                "description": str(body.get("description", title))[:4000], "provider": provider,
                "category": str(body.get("category", "other"))[:64], "tags": sorted(set(tags)),
                "format": "CSV", "update_cycle": cycle, "share_type": share_type,
                "open_type": body.get("openType") if body.get("openType") in (OPEN_NONE,) else open_type,
                "source_kind": "registered", "source": {"upload": True, "keyField": key_field},
                "fields": fields, "district": None, "geo": 0}
        await self.upsert(tenant, code, meta)
        run_id = None
        if self.lineage is not None:
            run_id = await self.lineage.emit(tenant, "cityos.data.register", [("upload", provider)],
                                             [("catalogue", code)])
        version = await self.store_version(tenant, code, items, run_id)
        return {"code": code, "version": version, "rows": len(items)}

    # ------------------------------------------------------------------ reading the catalogue

    async def get(self, tenant: str, code: str, conn: AsyncConnection | None = None) -> dict[str, Any]:
        """A dataset's catalogue entry (on `conn` when given: one connection for a whole read)."""
        stmt = select(datasets).where(datasets.c.tenant == tenant, datasets.c.id == str(code)[:128])
        if conn is not None:
            row = (await conn.execute(stmt)).mappings().first()
        else:
            async with self.engine.connect() as own:
                row = (await own.execute(stmt)).mappings().first()
        if row is None:
            raise ResourceNotFound(f"no dataset {code!r}")
        return dict(row)

    async def all(self, tenant: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(datasets).where(datasets.c.tenant == tenant).order_by(datasets.c.id))
            return [dict(r) for r in found.mappings()]

    async def source_conflicts(self, tenant: str) -> list[dict[str, Any]]:
        """一数一源: a data item (a field of a theme, e.g. environment/pm25) must have one authoritative source.
        Items whose fields name more than one source department are listed for the data office."""
        claims: dict[tuple[str, str], dict[str, set[str]]] = {}
        for ds in await self.all(tenant):
            for f in ds["fields"]:
                if f["id"] in META_FIELDS or f["id"] in ("location", "district", "name", "department"):
                    continue
                source = f.get("source") or {}
                dept = source.get("department") or ds["provider"]
                claims.setdefault((ds["category"], f["id"]), {}).setdefault(
                    f"{dept}/{source.get('system', '?')}", set()).add(ds["id"])
        out = []
        for (category, item), by_source in sorted(claims.items()):
            departments = {s.split("/")[0] for s in by_source}
            if len(departments) > 1:
                out.append({"item": f"{category}/{item}", "sources": [
                    {"source": s, "datasets": sorted(codes)[:20]} for s, codes in sorted(by_source.items())]})
        return out

    async def version_as_of(self, tenant: str, code: str, day_end: datetime | None,
                            conn: AsyncConnection | None = None) -> int | None:
        stmt = select(versions.c.version).where(versions.c.tenant == tenant, versions.c.dataset == code)
        if day_end is not None:
            stmt = stmt.where(versions.c.created_at < day_end)
        stmt = stmt.order_by(versions.c.version.desc()).limit(1)
        if conn is not None:
            return (await conn.execute(stmt)).scalar()
        async with self.engine.connect() as own:
            return (await own.execute(stmt)).scalar()

    async def list_versions(self, tenant: str, code: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(versions).where(versions.c.tenant == tenant, versions.c.dataset == code)
                                       .order_by(versions.c.version))
            return [{"version": r.version, "createdAt": clock.iso(clock.as_utc(r.created_at)),
                     "rows": r.row_count, "runId": r.run_id} for r in found]


@dataclass
class SearchQuery:
    text: str = ""
    terms: dict[str, list[str]] = field(default_factory=dict)  # facet field → accepted values (AND across)
    open_only: bool = False
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    rows: int = 10
    start: int = 0
    facets: tuple[str, ...] = ()


SEARCH_COLUMNS = {"organization": datasets.c.provider, "provider": datasets.c.provider,
                  "groups": datasets.c.category, "category": datasets.c.category, "res_format": datasets.c.format,
                  "format": datasets.c.format, "share_type": datasets.c.share_type,
                  "open_type": datasets.c.open_type, "name": datasets.c.id, "id": datasets.c.id,
                  "district": datasets.c.district, "update_cycle": datasets.c.update_cycle}
SORT_COLUMNS = {"name": datasets.c.id, "title": datasets.c.title, "title_string": datasets.c.title,
                "metadata_modified": datasets.c.modified_at, "metadata_created": datasets.c.created_at,
                "score": datasets.c.id, "num_rows": datasets.c.row_count}
FACETS = {"organization": datasets.c.provider, "groups": datasets.c.category, "res_format": datasets.c.format,
          "share_type": datasets.c.share_type, "open_type": datasets.c.open_type, "district": datasets.c.district,
          "update_cycle": datasets.c.update_cycle}


async def search(engine: AsyncEngine, tenant: str, query: SearchQuery) -> dict[str, Any]:
    """Keyword, facet-field and tag search over the catalogue, in SQL; facet counts over the matches."""
    conds: list[Any] = [datasets.c.tenant == tenant]
    if query.open_only:
        conds.append(datasets.c.open_type != OPEN_NONE)
    for word in query.text.lower().split()[:10]:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(datasets.c.search_text.like(f"%{escaped}%", escape="\\"))
    for name, values in query.terms.items():
        if name == "tags":
            conds.append(and_(*[datasets.c.tag_text.like(f"%|{v.replace('%', '')}|%") for v in values]))
        else:
            conds.append(or_(*[SEARCH_COLUMNS[name] == v for v in values]))
    where = and_(*conds)
    order = [SORT_COLUMNS[col].desc() if desc else SORT_COLUMNS[col].asc() for col, desc in query.sort]
    order.append(datasets.c.id.asc())
    # Two statements: the page, and the facet columns of every match (a catalogue is hundreds to a few
    # thousand entries: counting them here beats one GROUP BY per facet).
    wanted = [FACETS[name] for name in query.facets if name != "tags"]
    light = [datasets.c.id, *wanted, *([datasets.c.tags] if "tags" in query.facets else [])]
    async with engine.connect() as conn:
        found = [dict(r) for r in (await conn.execute(
            select(datasets).where(where).order_by(*order).limit(query.rows).offset(query.start))).mappings()]
        if query.facets or query.rows == 0 or len(found) == query.rows or query.start:
            matches = (await conn.execute(select(*light).where(where))).mappings().all()
            total = len(matches)
        else:
            matches, total = [], len(found)
    facets: dict[str, dict[str, int]] = {}
    for name in query.facets:
        counter: Counter[str] = Counter()
        if name == "tags":
            for row in matches:
                counter.update(row["tags"] or [])
            facets[name] = dict(counter.most_common(50))
            continue
        column = FACETS[name].name
        counter.update(str(row[column]) for row in matches if row[column] is not None)
        facets[name] = dict(counter.most_common())
    return {"count": int(total), "results": found, "facets": facets}
