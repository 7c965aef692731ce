"""Projection of entity members with `pick` and `omit` (ETSI GS CIM 009 v1.8.1 §4.21).

`pick` lists the members to keep, `omit` those to drop; either may name the core members `id`,
`type` and `scope` as well as attributes. They exclude each other and `attrs` (which also filters
a query): a request naming two of them is refused with 400. A member list may carry a
nested projection for linked entities (`locatedAt{id,name}`); the part in braces is only accepted
here, since linked-entity retrieval (`join`) is not offered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cityos.core.errors import BadRequestData
from cityos.hub.model import check_name

CORE_MEMBERS = frozenset({"id", "type", "scope"})


def _members(raw: str, what: str) -> list[str]:
    """Top-level names of a pick/omit list; braces group a nested projection."""
    names: list[str] = []
    depth, current = 0, list[str]()
    for ch in raw:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise BadRequestData(f"{what} has an unbalanced '}}'")
        elif ch == "," and depth == 0:
            names.append("".join(current).strip())
            current = []
            continue
        if depth == 0 and ch not in "{}":
            current.append(ch)
    if depth != 0:
        raise BadRequestData(f"{what} has an unbalanced '{{'")
    names.append("".join(current).strip())
    if any(not name for name in names):
        raise BadRequestData(f"{what} has an empty member name")
    return names


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
    omit = _expanded(_members(raw_omit, "omit"), expand) if raw_omit is not None else frozenset()
    return pick, omit


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
