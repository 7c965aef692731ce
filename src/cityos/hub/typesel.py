"""The entity type selection language (ETSI GS CIM 009 v1.8.1 §4.17).

`type=Building,Parking` or `Building|Parking`: either type; `Building;Tower`: both types (an entity can
have several); parentheses group: `(Building;Parking),Tower`. A selection is reduced to a disjunction of
conjunctions (each a set of type names); a plain list of types is a disjunction of single types.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import and_, exists, or_
from sqlalchemy.sql import ColumnElement

from cityos.core.errors import BadRequestData
from cityos.hub.model import check_name
from cityos.hub.models import entities, entity_extra_types

MAX_ALTERNATIVES = 64
_TOKEN = re.compile(r"\s*([(),|;]|[^(),|;\s]+)")

Selection = list[frozenset[str]]  # any of these sets, an entity having every type of the set


def parse_type_selection(raw: str, expand: Callable[[str], str]) -> Selection:
    tokens = _tokens(raw)
    selection, end = _disjunction(tokens, 0, expand, 0)
    if end != len(tokens):
        raise BadRequestData(f"type selection {raw[:80]!r}: unexpected {tokens[end]!r}")
    return list(dict.fromkeys(selection))


def is_conjunctive(selection: Selection) -> bool:
    """Does the selection need more than "one of these types"?"""
    return any(len(group) > 1 for group in selection)


def all_types(selection: Selection) -> list[str]:
    return sorted({t for group in selection for t in group})


def selection_sql(selection: Selection) -> ColumnElement[bool]:
    """An entity (hub_entities row) has every type of one of the groups."""
    return or_(*(and_(*(_has_type(t) for t in sorted(group))) for group in selection))


def _has_type(iri: str) -> ColumnElement[bool]:
    return or_(entities.c.type == iri, exists().where(
        entity_extra_types.c.tenant == entities.c.tenant, entity_extra_types.c.entity_id == entities.c.id,
        entity_extra_types.c.type == iri))


def _tokens(raw: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    raw = raw.rstrip()
    while position < len(raw):
        found = _TOKEN.match(raw, position)
        if found is None:
            raise BadRequestData(f"type selection {raw[:80]!r} is not valid")
        tokens.append(found.group(1))
        position = found.end()
    if not tokens:
        raise BadRequestData("the type selection is empty")
    return tokens


def _disjunction(tokens: list[str], i: int, expand: Callable[[str], str], depth: int) -> tuple[Selection, int]:
    selection, i = _conjunction(tokens, i, expand, depth)
    while i < len(tokens) and tokens[i] in (",", "|"):
        more, i = _conjunction(tokens, i + 1, expand, depth)
        selection = selection + more
        if len(selection) > MAX_ALTERNATIVES:
            raise BadRequestData("the type selection is too large")
    return selection, i


def _conjunction(tokens: list[str], i: int, expand: Callable[[str], str], depth: int) -> tuple[Selection, int]:
    selection, i = _factor(tokens, i, expand, depth)
    while i < len(tokens) and tokens[i] == ";":
        more, i = _factor(tokens, i + 1, expand, depth)
        selection = [a | b for a in selection for b in more]
        if len(selection) > MAX_ALTERNATIVES:
            raise BadRequestData("the type selection is too large")
    return selection, i


def _factor(tokens: list[str], i: int, expand: Callable[[str], str], depth: int) -> tuple[Selection, int]:
    if i >= len(tokens):
        raise BadRequestData("the type selection ends too early")
    item = tokens[i]
    if item == "(":
        if depth >= 8:
            raise BadRequestData("the type selection is nested too deeply")
        inner, i = _disjunction(tokens, i + 1, expand, depth + 1)
        if i >= len(tokens) or tokens[i] != ")":
            raise BadRequestData("the type selection has an unclosed parenthesis")
        return inner, i + 1
    if item in (")", ",", "|", ";"):
        raise BadRequestData(f"the type selection has {item!r} where a type is expected")
    return [frozenset({expand(check_name(item, "entity type"))})], i + 1


def is_selection(raw: str) -> bool:
    """Is `raw` an expression (operators or parentheses) rather than one type name?"""
    return any(ch in raw for ch in "(),|;")


def map_names(raw: str, rename: Callable[[str], str]) -> str:
    """The expression with each type name replaced (expanded to IRIs, or compacted back); operators kept.

    Subscriptions store a selection with its names expanded so that a later @context cannot change
    what it selects, and show it compacted with the caller's @context."""
    tokens = _tokens(raw)
    return "".join(tok if tok in ("(", ")", ",", "|", ";") else rename(tok) for tok in tokens)


def matches(selection: Selection, types: list[str] | set[str]) -> bool:
    """Does an entity with these types satisfy the selection (every type of one of its groups)?"""
    have = set(types)
    return any(group <= have for group in selection)
