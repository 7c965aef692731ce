"""The Scope Query Language (ETSI GS CIM 009 v1.8.1 §4.19): `scopeQ` of Query Entities (§5.7.2).

A scope (§4.18) is a path such as ``/Madrid/Gardens/ParqueNorte``; an entity has one or several.
A scope query is made of terms joined by ``;`` (and) and ``,`` (or), ``;`` binding tighter, with
parentheses for grouping. A term is a path whose levels are names or ``+`` (exactly one level of
any name), and which may end with ``/#`` (that path and every path below it); ``/#`` alone
matches any scope. An entity matches a term when one of its scopes does; an entity without a
scope matches none.

Evaluated in SQL: on PostgreSQL each term is an anchored regular expression over the scope's
elements (``~``), on SQLite the registered function ``cityos_scope_match`` runs `matches` on the
row's scope. The two agree by construction (both compare level by level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import String, and_, bindparam, case, exists, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from cityos.core.db import register_sqlite_function
from cityos.core.errors import BadRequestData

MAX_LENGTH = 2048
MAX_TERMS = 64
MAX_DEPTH = 16
_SEPARATORS = frozenset(";,()")
SQLITE_SCOPE_FUNCTION = "cityos_scope_match"


@dataclass(frozen=True)
class Term:
    levels: tuple[str, ...]  # names, or "+" for any one level
    subtree: bool  # ends with "/#": this path or anything below it


@dataclass(frozen=True)
class Op:
    kind: str  # "and" | "or"
    parts: tuple[Node, ...]


Node = Term | Op


def _bad(detail: str) -> BadRequestData:
    return BadRequestData(f"scopeQ: {detail}")


def _term(text: str) -> Term:
    if not text.startswith("/"):
        raise _bad(f"{text[:80]!r} is not a scope path (it must start with '/')")
    if text == "/#":
        return Term((), True)
    levels = text[1:].split("/")
    subtree = levels[-1] == "#"
    if subtree:
        levels.pop()
    for level in levels:
        if not level or level == "#" or "#" in level or ("+" in level and level != "+") or level != level.strip():
            raise _bad(f"{text[:80]!r} has an invalid level {level[:40]!r}")
        if any(ord(ch) < 0x20 for ch in level):
            raise _bad("a scope level holds a control character")
    return Term(tuple(levels), subtree)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.terms = 0

    def parse(self) -> Node:
        node = self._or(0)
        if self.pos != len(self.text):
            raise _bad(f"unexpected {self.text[self.pos]!r} at position {self.pos}")
        return node

    def _or(self, depth: int) -> Node:
        parts = [self._and(depth)]
        while self._peek() == ",":
            self.pos += 1
            parts.append(self._and(depth))
        return parts[0] if len(parts) == 1 else Op("or", tuple(parts))

    def _and(self, depth: int) -> Node:
        parts = [self._atom(depth)]
        while self._peek() == ";":
            self.pos += 1
            parts.append(self._atom(depth))
        return parts[0] if len(parts) == 1 else Op("and", tuple(parts))

    def _atom(self, depth: int) -> Node:
        if self._peek() == "(":
            if depth >= MAX_DEPTH:
                raise _bad("too deeply nested")
            self.pos += 1
            node = self._or(depth + 1)
            if self._peek() != ")":
                raise _bad("a '(' is not closed")
            self.pos += 1
            return node
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SEPARATORS:
            self.pos += 1
        if start == self.pos:
            raise _bad(f"a scope path is missing at position {start}")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _bad(f"at most {MAX_TERMS} scope paths")
        return _term(self.text[start:self.pos])

    def _peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None


def parse_scopeq(text: Any) -> Node:
    """Parse a (URL-decoded) scopeQ; BadRequestData when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise _bad("it is empty")
    if len(text) > MAX_LENGTH:
        raise _bad(f"longer than {MAX_LENGTH} characters")
    return _Parser(text.strip()).parse()


def _scopes(scope: Any) -> list[str]:
    if isinstance(scope, str):
        return [scope]
    if isinstance(scope, list):
        return [s for s in scope if isinstance(s, str)]
    return []


def _term_matches(term: Term, scope: str) -> bool:
    if not scope.startswith("/"):
        return False
    levels = scope[1:].split("/") if scope != "/" else []
    n = len(term.levels)
    if len(levels) < n or (not term.subtree and len(levels) != n):
        return False
    pairs = zip(term.levels, levels, strict=False)
    return all(got != "" if want == "+" else want == got for want, got in pairs)


def matches(node: Node, scope: Any) -> bool:
    """Does an entity with this scope (a string, a list of strings, or None) match the scope query?"""
    if isinstance(node, Term):
        return any(_term_matches(node, s) for s in _scopes(scope))
    results = (matches(part, scope) for part in node.parts)
    return all(results) if node.kind == "and" else any(results)


def _escape(level: str) -> str:
    # Every ASCII punctuation is escaped (`\k` is k itself in PostgreSQL's AREs); letters, digits and
    # non-ASCII characters stand for themselves.
    return "".join(f"\\{ch}" if ch.isascii() and not ch.isalnum() else ch for ch in level)


def term_pattern(term: Term) -> str:
    """An anchored POSIX regular expression matching the scopes the term matches."""
    body = "".join("/[^/]+" if level == "+" else "/" + _escape(level) for level in term.levels)
    return f"^{body}(/.*)?$" if term.subtree else f"^{body}$"


def _pg_sql(node: Node, scope: Any) -> ColumnElement[bool]:
    if isinstance(node, Op):
        parts = [_pg_sql(part, scope) for part in node.parts]
        return and_(*parts) if node.kind == "and" else or_(*parts)
    elements = func.jsonb_array_elements_text(
        case((func.jsonb_typeof(scope) == "array", scope), else_=func.jsonb_build_array(scope))
    ).table_valued("value").alias("scope_v")
    pattern = bindparam(None, term_pattern(node), type_=String, unique=True)
    return exists(select(literal(1)).select_from(elements).where(elements.c.value.op("~")(pattern)))


def _to_text(node: Node) -> str:
    if isinstance(node, Term):
        path = "/" + "/".join(node.levels) if node.levels else ""
        return f"{path}/#" if node.subtree else path
    joiner = ";" if node.kind == "and" else ","
    return "(" + joiner.join(_to_text(part) for part in node.parts) + ")"


def scopeq_sql(node: Node, scope: Any, dialect: str) -> ColumnElement[bool]:
    """The SQL condition on a scope column (JSON: a string, a list of strings or null)."""
    if dialect == "postgresql":
        return _pg_sql(node, scope)
    text = bindparam(None, _to_text(node), type_=String, unique=True)
    cond: ColumnElement[bool] = func.cityos_scope_match(scope, text) == 1
    return cond


def _sqlite_scope_match(scope_json: Any, query_text: Any) -> int:
    """SQLite scalar function: 1 when the row's scope (JSON text) matches the scopeQ text, else 0."""
    if scope_json is None or not isinstance(query_text, str):
        return 0
    try:
        return 1 if matches(_cached(query_text), orjson.loads(scope_json)) else 0
    except (BadRequestData, orjson.JSONDecodeError, TypeError):
        return 0


_CACHE: dict[str, Node] = {}


def _cached(text: str) -> Node:
    node = _CACHE.get(text)
    if node is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        node = _CACHE[text] = parse_scopeq(text)
    return node


register_sqlite_function(SQLITE_SCOPE_FUNCTION, 2, _sqlite_scope_match)
