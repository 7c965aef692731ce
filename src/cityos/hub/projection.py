"""Projection of entity members with `pick` and `omit` (ETSI GS CIM 009 v1.8.1 §4.21).

`pick` lists the members to keep, `omit` those to drop; either may name the core members `id`,
`type` and `scope` as well as attributes. They exclude each other and `attrs` (which also filters
a query): a request naming two of them is refused with 400. A member list may carry a
nested projection for linked entities (`locatedAt{id,name}`): it applies to the entities that
relationship links to when `join` is asked for (§4.5.23); `omit=locatedAt{name}` omits `name` of the
linked entity, not `locatedAt` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cityos.core.errors import BadRequestData
from cityos.hub.model import check_name

CORE_MEMBERS = frozenset({"id", "type", "scope"})


def parse_members(raw: str, what: str) -> list[tuple[str, str | None]]:
    """Top-level (name, nested projection or None) of a pick/omit list; braces group a nested projection."""
    members: list[tuple[str, str | None]] = []
    depth, current, nested = 0, list[str](), list[str]()
    saw_nested = False
    for ch in raw:
        if ch == "{":
            depth += 1
            if depth == 1:
                saw_nested = True
                continue
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise BadRequestData(f"{what} has an unbalanced '}}'")
            if depth == 0:
                continue
        elif ch == "," and depth == 0:
            members.append(("".join(current).strip(), "".join(nested) if saw_nested else None))
            current, nested, saw_nested = [], [], False
            continue
        (nested if depth > 0 else current).append(ch)
    if depth != 0:
        raise BadRequestData(f"{what} has an unbalanced '{{'")
    members.append(("".join(current).strip(), "".join(nested) if saw_nested else None))
    if any(not name for name, _ in members):
        raise BadRequestData(f"{what} has an empty member name")
    for _name, inner in members:
        if inner is not None:
            parse_members(inner, what)  # refuse a malformed nested list now, not when it is used
    return members


def _members(raw: str, what: str) -> list[str]:
    return [name for name, _ in parse_members(raw, what)]


def _expanded(names: list[str], expand: Callable[[str], str]) -> frozenset[str]:
    return frozenset(name if name in CORE_MEMBERS else expand(check_name(name)) for name in names)


def projection_of(params: Mapping[str, str], expand: Callable[[str], str]) -> tuple[frozenset[str] | None,
                                                                                    frozenset[str]]:
    """(pick, omit) from the query; pick is None when absent."""
    raw_pick, raw_omit = params.get("pick"), params.get("omit")
    if raw_pick is not None and raw_omit is not None:
        raise BadRequestData("pick and omit cannot be used together")
    if params.get("attrs") is not None and (raw_pick is not None or raw_omit is not None):
        raise BadRequestData("pick and omit cannot be used together with attrs")
    pick = _expanded(_members(raw_pick, "pick"), expand) if raw_pick is not None else None
    # A member of omit with a nested projection is kept: only its linked entities lose members.
    omit = (_expanded([name for name, inner in parse_members(raw_omit, "omit") if inner is None], expand)
            if raw_omit is not None else frozenset())
    return pick, omit


def nested_projections(params: Mapping[str, str], expand: Callable[[str], str]) -> dict[str, tuple[str, str]]:
    """Attribute IRI → ("pick" | "omit", the projection of the entities it links to)."""
    found: dict[str, tuple[str, str]] = {}
    for kind in ("pick", "omit"):
        raw = params.get(kind)
        if raw is None:
            continue
        for name, inner in parse_members(raw, kind):
            if inner is not None and name not in CORE_MEMBERS:
                found[expand(check_name(name))] = (kind, inner)
    return found


def project_core(out: dict[str, Any], pick: frozenset[str] | None, omit: frozenset[str]) -> dict[str, Any]:
    """Drop the core members that pick leaves out or omit names (attributes were filtered before rendering)."""
    for member in CORE_MEMBERS:
        if member in out and ((pick is not None and member not in pick) or member in omit):
            del out[member]
    return out


def project_rendered(out: dict[str, Any], pick: frozenset[str] | None, omit: frozenset[str],
                     expand: Callable[[str], str]) -> dict[str, Any]:
    """The same projection on an already rendered entity (temporal representations), whose
    attribute names are compacted: they are expanded again to compare. System members stay."""
    if pick is None and not omit:
        return out
    for key in list(out):
        if key in ("createdAt", "modifiedAt", "deletedAt", "@context"):
            continue
        member = key if key in CORE_MEMBERS else expand(key)
        if (pick is not None and member not in pick) or member in omit:
            del out[key]
    return out
