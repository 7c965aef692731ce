"""Reading a dataset's rows: CKAN DataStore search semantics (filters, q, fields, sort, limit, offset,
total), snapshots (as of a day), desensitisation by data class, and the download formats.

Parameters are validated into a `RowQuery` first; a bad one raises `DatastoreInvalid` with CKAN's
validation-error shape (field → messages). Values only ever reach SQL as bound parameters, field names
only as members of the dataset's declared field list.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import orjson
from sqlalchemy import String, and_, cast, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.errors import BadRequestData
from cityos.core.messages import city_zone
from cityos.data.models import rows
from cityos.security.masking import mask_value

ROWS_MAX = 32000  # CKAN's ckan.datastore.search.rows_max default
DEFAULT_LIMIT = 100
MAX_OFFSET = 10_000_000
MAX_FILTER_VALUES = 100


class DatastoreInvalid(BadRequestData):
    """A CKAN "Validation Error": `errors` maps a parameter to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class RowQuery:
    filters: dict[str, list[Any]] = field(default_factory=dict)
    q: str | dict[str, str] | None = None
    fields: list[str] | None = None
    sort: list[tuple[str, bool]] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    include_total: bool = True
    # CKAN's total_estimation_threshold: above it, an unfiltered total may come from the planner's estimate.
    estimation_threshold: int | None = None
    total_was_estimated: bool = False  # set by search_rows
    as_of: str | None = None  # YYYY-MM-DD in the city's zone


def _as_int(raw: Any, name: str, low: int, high: int, default: int, errors: dict[str, list[str]]) -> int:
    if raw is None or raw == "":
        return default
    # ASCII digits only ("²" is a digit int() refuses), and short (int() refuses 4,300 digits and more).
    digits = isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdecimal() and len(raw.strip()) <= 18
    if isinstance(raw, bool) or not (isinstance(raw, int) or digits):
        errors[name] = [f"Invalid integer: {str(raw)[:40]!r}"]
        return default
    value = int(raw)
    if not low <= value <= high:
        errors[name] = [f"Must be between {low} and {high}"]
        return default
    return value


def _json_param(raw: Any, name: str, errors: dict[str, list[str]]) -> Any:
    if isinstance(raw, str) and raw.strip().startswith(("{", "[")):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors[name] = ["Cannot parse JSON"]
            return None
    return raw


def parse_row_query(params: dict[str, Any], field_ids: list[str]) -> RowQuery:
    """CKAN datastore_search parameters (from a query string or a JSON body) → RowQuery."""
    errors: dict[str, list[str]] = {}
    known = set(field_ids) | {"_id"}
    query = RowQuery()
    filters = _json_param(params.get("filters"), "filters", errors)
    if filters is not None and "filters" not in errors:
        if not isinstance(filters, dict):
            errors["filters"] = ["Not a JSON object"]
        else:
            for name, value in filters.items():
                values = value if isinstance(value, list) else [value]
                if name not in known:
                    errors.setdefault("filters", []).append(f'field "{str(name)[:64]}" not in resource')
                elif not values or len(values) > MAX_FILTER_VALUES or any(
                        not isinstance(v, str | int | float | bool) or (isinstance(v, str) and len(v) > 512)
                        for v in values):
                    errors.setdefault("filters", []).append(
                        f'field "{name}": 1-{MAX_FILTER_VALUES} scalar values of at most 512 characters')
                else:
                    query.filters[name] = values
    q = _json_param(params.get("q"), "q", errors)
    if isinstance(q, str):
        query.q = q[:200] or None
    elif isinstance(q, dict):
        if not all(k in known and isinstance(v, str) for k, v in q.items()):
            errors["q"] = ["q as an object maps declared fields to strings"]
        else:
            query.q = {k: v[:200] for k, v in q.items()}
    elif q is not None and "q" not in errors:
        errors["q"] = ["q must be a string or an object"]
    fields = _json_param(params.get("fields"), "fields", errors)
    if isinstance(fields, str) and fields:
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    if isinstance(fields, list):
        bad = [str(f)[:64] for f in fields if f not in known]
        if bad:
            errors["fields"] = [f'field "{b}" not in resource' for b in bad[:5]]
        else:
            query.fields = [str(f) for f in fields]
    elif fields not in (None, ""):
        errors["fields"] = ["fields must be a list or a comma-separated string"]
    sort = params.get("sort")
    if isinstance(sort, str) and sort.strip():
        for part in sort.split(",")[:5]:
            words = part.split()
            if not 1 <= len(words) <= 2 or words[0].strip('"') not in known or (
                    len(words) == 2 and words[1].lower() not in ("asc", "desc")):
                errors.setdefault("sort", []).append(f'invalid sort "{part.strip()[:64]}"')
                continue
            query.sort.append((words[0].strip('"'), len(words) == 2 and words[1].lower() == "desc"))
    elif sort not in (None, ""):
        errors["sort"] = ["sort must be a string like 'field asc, other desc'"]
    query.limit = _as_int(params.get("limit"), "limit", 0, ROWS_MAX, DEFAULT_LIMIT, errors)
    query.offset = _as_int(params.get("offset"), "offset", 0, MAX_OFFSET, 0, errors)
    total = params.get("include_total", True)
    query.include_total = total not in (False, "false", "False", "0", 0)
    if params.get("total_estimation_threshold") not in (None, ""):
        query.estimation_threshold = _as_int(params.get("total_estimation_threshold"), "total_estimation_threshold",
                                             0, MAX_OFFSET, 0, errors)
    as_of = params.get("as_of")
    if as_of not in (None, ""):
        try:
            day = datetime.strptime(str(as_of), "%Y-%m-%d").date()
        except ValueError:
            errors["as_of"] = ["as_of is a day, YYYY-MM-DD"]
        else:
            today = clock.now().astimezone(city_zone()).date()
            if not today - timedelta(days=30) <= day <= today:
                errors["as_of"] = ["as_of must be within the last 30 days"]
            else:
                query.as_of = day.isoformat()
    if errors:
        raise DatastoreInvalid(errors)
    return query


def day_end(day: str) -> datetime:
    """The first instant after `day` (a city-zone calendar day), in UTC."""
    start = datetime.combine(datetime.strptime(day, "%Y-%m-%d").date(), time(0), tzinfo=city_zone())
    return (start + timedelta(days=1)).astimezone(UTC)


@dataclass
class Source:
    """Where a dataset's rows live and which fields map to indexed columns."""

    tenant: str
    dataset: str
    version: int
    fields: dict[str, str]  # field id → CKAN type
    key_field: str
    time_field: str | None
    until: datetime | None = None  # history datasets read as of a day
    dialect: str = "sqlite"  # set by search_rows from the engine
    subkey_field: str | None = None  # the field kept in the `subkey` column (history: "attribute")


def _pg_text(name: str) -> Any:
    """`doc ->> 'name'` with the name inline (quoted), not a bound parameter: PostgreSQL matches an expression
    index only against the same literal expression, and estimates it better."""
    return rows.c.doc.op("->>")(literal_column("'" + name.replace("'", "''") + "'", String))


def _column(src: Source, name: str) -> Any:
    if name == src.key_field:
        return rows.c.key
    if name == "_id":
        return rows.c.id
    if src.time_field and name == src.time_field:
        return rows.c.ts
    if src.subkey_field and name == src.subkey_field:
        return rows.c.subkey
    kind = src.fields.get(name, "text")
    if src.dialect == "postgresql" and kind not in ("numeric", "bool"):
        return _pg_text(name)
    element = rows.c.doc[name]
    if kind == "numeric":
        return element.as_float()
    if kind == "bool":
        return element.as_boolean()
    return element.as_string()


def _filter_value(src: Source, name: str, value: Any) -> Any:
    if src.time_field and name == src.time_field:
        try:
            return clock.parse_iso(str(value))
        except ValueError as exc:
            raise DatastoreInvalid({"filters": [f'field "{name}": not an ISO 8601 date-time']}) from exc
    kind = src.fields.get(name, "text")
    if name == "_id":
        if not (str(value).isascii() and str(value).isdecimal()):
            raise DatastoreInvalid({"filters": ['field "_id": not an integer']})
        return int(value)
    if kind == "numeric":
        if isinstance(value, bool):
            raise DatastoreInvalid({"filters": [f'field "{name}": not a number']})
        try:
            return float(value)
        except ValueError as exc:
            raise DatastoreInvalid({"filters": [f'field "{name}": not a number']}) from exc
    if kind == "json":
        raise DatastoreInvalid({"filters": [f'field "{name}" holds JSON and cannot be filtered']})
    if kind == "bool":
        return value in (True, "true", "True", 1)
    return str(value)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def conditions(src: Source, query: RowQuery) -> list[Any]:
    conds: list[Any] = [rows.c.tenant == src.tenant, rows.c.dataset == src.dataset, rows.c.version == src.version]
    if src.until is not None:
        conds.append(rows.c.ts < src.until)
    for name, values in query.filters.items():
        column = _column(src, name)
        parsed = [_filter_value(src, name, v) for v in values]
        conds.append(column == parsed[0] if len(parsed) == 1 else column.in_(parsed))
    if isinstance(query.q, str):
        conds.append(cast(rows.c.doc, String).like(_like(query.q), escape="\\"))
    elif isinstance(query.q, dict):
        for name, text in query.q.items():
            conds.append(cast(_column(src, name), String).like(_like(text), escape="\\"))
    return conds


async def search_rows(engine: AsyncEngine, src: Source, query: RowQuery,
                      conn: AsyncConnection | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """The page and its total, on `conn` when given (a caller that already read the catalogue entry saves
    the round trips of a second connection's BEGIN and ROLLBACK)."""
    if conn is None:
        async with engine.connect() as own:
            return await search_rows(engine, src, query, own)
    src.dialect = engine.dialect.name
    conds = conditions(src, query)
    order = [(_column(src, name).desc() if desc else _column(src, name).asc()) for name, desc in query.sort]
    # The tie-breaker follows the last sort's direction so PostgreSQL can walk one index backwards.
    last_desc = bool(query.sort) and query.sort[-1][1]
    order.append(rows.c.id.desc() if last_desc else rows.c.id.asc())
    stmt = select(rows.c.id, rows.c.doc).where(and_(*conds)).order_by(*order).limit(query.limit).offset(query.offset)
    found = [{"_id": int(r.id), **(r.doc or {})} for r in await conn.execute(stmt)]
    total = None
    if query.include_total:
        if query.offset == 0 and len(found) < query.limit:
            total = len(found)  # the page holds every match: no count needed
        else:
            total = await _estimated_total(conn, src, query, conds)
            if total is None:
                count = select(func.count()).select_from(rows).where(and_(*conds))
                total = int((await conn.execute(count)).scalar_one())
    return found, total


async def _estimated_total(conn: AsyncConnection, src: Source, query: RowQuery, conds: list[Any]) -> int | None:
    """CKAN's `total_estimation_threshold`: without filters or q, when the planner estimates more matching
    rows than the threshold, that estimate is the total (`total_was_estimated`). PostgreSQL only."""
    if (query.estimation_threshold is None or query.filters or query.q or src.until is not None
            or src.dialect != "postgresql"):
        return None
    compiled = select(rows.c.id).where(and_(*conds)).compile(conn.engine, compile_kwargs={"literal_binds": True})
    plan = (await conn.execute(text(f"EXPLAIN (FORMAT JSON) {compiled}"))).scalar_one()
    plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    if estimate > query.estimation_threshold:
        query.total_was_estimated = True
        return estimate
    return None


def desensitise(records: list[dict[str, Any]], classes: dict[str, str], clear: frozenset[str],
                allowed: set[str] | None = None) -> list[dict[str, Any]]:
    """Keep public fields and the fields in `clear`; mask sensitive ones; drop confidential ones and, when
    `allowed` is given, anything outside it."""
    out = []
    for record in records:
        shown: dict[str, Any] = {}
        for name, value in record.items():
            cls = "public" if name == "_id" else classes.get(name, "confidential")
            if allowed is not None and name != "_id" and name not in allowed:
                continue
            if cls == "public" or name in clear:
                shown[name] = value
            elif cls == "sensitive":
                shown[name] = None if value is None else mask_value(value)
            elif cls == "internal" and "internal" in clear:
                shown[name] = value
        out.append(shown)
    return out


# ------------------------------------------------------------------ downloads


def to_csv(field_ids: list[str], records: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(field_ids)
    for record in records:
        writer.writerow([_cell(record.get(f)) for f in field_ids])
    return ("\ufeff" + buffer.getvalue()).encode()  # BOM: Excel opens Chinese text correctly


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") and not _numeric(value):
        return "'" + value  # no formula injection into a spreadsheet
    return value


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def to_geojson(records: list[dict[str, Any]], geometry_field: str = "location") -> bytes:
    features = []
    for record in records:
        geometry = record.get(geometry_field)
        if not (isinstance(geometry, dict) and "type" in geometry and "coordinates" in geometry):
            geometry = None
        props = {k: v for k, v in record.items() if k != geometry_field}
        features.append({"type": "Feature", "id": record.get("id", record.get("_id")), "geometry": geometry,
                         "properties": props})
    return orjson.dumps({"type": "FeatureCollection", "features": features})


def to_parquet(field_ids: list[str], types: dict[str, str], records: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {f: [] for f in field_ids}
    for record in records:
        for f in field_ids:
            value = record.get(f)
            if types.get(f) == "numeric" and isinstance(value, int | float) and not isinstance(value, bool):
                columns[f].append(float(value))
            elif types.get(f) == "numeric":
                columns[f].append(None)
            else:
                columns[f].append(None if value is None else
                                  (orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)))
    arrays = {f: pa.array(v, type=pa.float64() if types.get(f) == "numeric" else pa.string())
              for f, v in columns.items()}
    sink = io.BytesIO()
    pq.write_table(pa.table(arrays), sink)
    return sink.getvalue()
