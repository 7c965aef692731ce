"""`orderBy` on entity queries (NGSI-LD v1.9.1 §4.23; harmless to v1.8.1 clients, which never send it).

`orderBy=name;desc,type` orders by the listed members in turn: `id`, `type`, `createdAt` and
`modifiedAt` of the entity, or an attribute path (`name`, `name.subProperty`, `name.createdAt`): the
value of the attribute's first instance (its `value`, `object` or `languageMap`), or the named
sub-attribute's value or reserved member (`observedAt`, `createdAt`, ...). Each member is ascending
unless followed by `;desc`. Entities without the member come last in either direction. The id is
always the final tie-break, so pages are stable.

The ordering is done by the database on the stored JSON (json_extract on SQLite, `#>` on PostgreSQL's
jsonb, whose ordering compares numbers as numbers and strings as strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, func, literal
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql import ColumnElement

from cityos.core.errors import BadRequestData
from cityos.hub.model import check_name
from cityos.hub.qlang import RESERVED_SUB_ATTRIBUTES

MAX_ORDER_KEYS = 8
ENTITY_MEMBERS = ("id", "type", "createdAt", "modifiedAt")
VALUE_KEYS = ("value", "object", "languageMap", "objects", "vocab")


@dataclass(frozen=True)
class OrderKey:
    member: str | None  # an entity member (id, type, createdAt, modifiedAt), or None for an attribute path
    prefix: tuple[str | int, ...] = ()  # to the (sub-)attribute instance: (attr IRI, 0, sub IRI, ...)
    reserved: str | None = None  # a reserved member of that instance instead of its value
    descending: bool = False


def parse_order_by(raw: str | None, expand: Callable[[str], str]) -> tuple[OrderKey, ...]:
    """The keys of an `orderBy` parameter; BadRequestData for a malformed one."""
    if raw is None:
        return ()
    items = raw.split(",")
    if len(items) > MAX_ORDER_KEYS:
        raise BadRequestData(f"orderBy names more than {MAX_ORDER_KEYS} members")
    return tuple(_parse_item(item.strip(), expand) for item in items)


def _parse_item(item: str, expand: Callable[[str], str]) -> OrderKey:
    path, separator, direction = item.partition(";")
    if separator and direction not in ("asc", "desc"):
        raise BadRequestData(f"orderBy direction {direction[:20]!r} is neither asc nor desc")
    descending = direction == "desc"
    if not path:
        raise BadRequestData("orderBy has an empty member")
    if path in ENTITY_MEMBERS:
        return OrderKey(member=path, descending=descending)
    names = path.split(".")
    prefix: list[str | int] = [expand(check_name(names[0], "orderBy attribute")), 0]
    reserved = None
    for index, name in enumerate(names[1:], start=1):
        if name in RESERVED_SUB_ATTRIBUTES:
            if index != len(names) - 1:
                raise BadRequestData(f"orderBy {path[:80]!r}: {name} has no sub-attributes")
            reserved = name
            break
        prefix.append(expand(check_name(name, "orderBy sub-attribute")))
    return OrderKey(member=None, prefix=tuple(prefix), reserved=reserved, descending=descending)


def order_clauses(keys: tuple[OrderKey, ...], table: Any, dialect: str) -> list[Any]:
    """ORDER BY clauses for `keys`, then the id."""
    clauses: list[Any] = []
    for key in keys:
        expr = _expression(key, table, dialect)
        clauses.append(expr.is_(None))  # missing members last, in both directions
        clauses.append(expr.desc() if key.descending else expr.asc())
    clauses.append(table.c.id)
    return clauses


def _expression(key: OrderKey, table: Any, dialect: str) -> ColumnElement[Any]:
    if key.member is not None:
        return {"id": table.c.id, "type": table.c.type, "createdAt": table.c.created_at,
                "modifiedAt": table.c.modified_at}[key.member]
    tails: list[tuple[str, ...]] = [(key.reserved,)] if key.reserved else [(k,) for k in VALUE_KEYS]
    paths = [(*key.prefix, *tail) for tail in tails]
    if dialect == "postgresql":
        found = [table.c.attrs.op("#>", return_type=JSONB)(
            literal([str(k) for k in p], ARRAY(String()))) for p in paths]
    else:
        found = [func.json_extract(table.c.attrs, _sqlite_path(p)) for p in paths]
    return found[0] if len(found) == 1 else func.coalesce(*found)


def _sqlite_path(keys: tuple[str | int, ...]) -> str:
    parts = ["$"]
    for key in keys:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append('."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "".join(parts)
