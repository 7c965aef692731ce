"""Shared semantics of the evaluator and the SQL translation: where a path points, what is compared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cityos.hub.qlang.parse import _BAD_CHARS
from cityos.hub.qlang.tree import (
    RESERVED_SUB_ATTRIBUTES,
    And,
    AttrPath,
    Comparison,
    Exists,
    Or,
    Pattern,
    QExpr,
    Range,
    Scalar,
    ValueList,
)


def q_paths(expr: QExpr) -> list[AttrPath]:
    """The attribute paths a q expression refers to, one per comparison or existence test."""
    paths: list[AttrPath] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, And | Or):
            stack.extend(node.children)
        elif isinstance(node, Comparison | Exists):
            paths.append(node.path)
    return paths


def q_attribute_names(expr: QExpr) -> set[str]:
    """The attribute (short) names a q expression refers to."""
    return {path.attr for path in q_paths(expr)}


_VALUE_KEYS: dict[str, str] = {
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "VocabProperty": "vocab",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
    "JsonProperty": "json",
}
_DEFAULT_VALUE_KEY = "value"
_LANGUAGE = "LanguageProperty"


def _usable_key(key: str) -> bool:
    """SQLite JSON paths cannot address a key containing '"' (nor can anything bind NUL/surrogates)."""
    return isinstance(key, str) and _BAD_CHARS.search(key) is None and '"' not in key


@dataclass(frozen=True)
class _Target:
    prefix: tuple[str | int, ...]  # to the (sub-)attribute instance: (attr IRI, 0, sub IRI, ...)
    reserved: str | None  # a reserved member (observedAt, ...) instead of the instance's value
    json_path: tuple[str, ...]


def _resolve(path: AttrPath, expand: Callable[[str], str]) -> _Target | None:
    """Where a path points in the internal form, or None if it can never match."""
    iri = expand(path.attr)
    if not _usable_key(iri):
        return None
    prefix: list[str | int] = [iri, 0]
    reserved: str | None = None
    for index, name in enumerate(path.sub_path):
        if name in RESERVED_SUB_ATTRIBUTES:
            if index != len(path.sub_path) - 1:
                return None  # a reserved member has no sub-attributes
            reserved = name
            break
        sub = expand(name)
        if not _usable_key(sub):
            return None
        prefix.append(sub)
    if not all(_usable_key(k) for k in path.json_path):
        return None
    return _Target(tuple(prefix), reserved, path.json_path)


@dataclass(frozen=True)
class _PCompare:
    op: str  # == > >= < <=
    value: Scalar


@dataclass(frozen=True)
class _PBetween:
    low: Scalar
    high: Scalar


@dataclass(frozen=True)
class _PAny:
    preds: tuple[_PCompare, ...]


@dataclass(frozen=True)
class _PRegex:
    source: str


@dataclass(frozen=True)
class _PKind:
    kinds: tuple[str, ...]  # number | string | boolean | regex (a string short enough to match)


_Pred = _PCompare | _PBetween | _PAny | _PRegex | _PKind


def _plan(cmp: Comparison) -> tuple[_Pred, _PKind | None]:
    """The per-value predicate, and (for negated operators) the "is comparable" predicate."""
    value = cmp.value
    negated = cmp.op in ("!=", "!~=")
    positive: _Pred
    if isinstance(value, Pattern):
        positive, comparable = _PRegex(value.source), _PKind(("regex",))
    elif isinstance(value, Range):
        positive, comparable = _PBetween(value.low, value.high), _PKind((value.low.cls,))
    elif isinstance(value, ValueList):
        positive = _PAny(tuple(_PCompare("==", item) for item in value.items))
        comparable = _PKind(tuple(sorted({item.cls for item in value.items})))
    else:
        positive = _PCompare("==" if negated else cmp.op, value)
        comparable = _PKind((value.cls,))
    return positive, (comparable if negated else None)
