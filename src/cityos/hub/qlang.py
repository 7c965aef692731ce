"""The NGSI-LD query language (`q`, ETSI GS CIM 009 v1.8.1 §4.9): parser, evaluator and SQL translation.

    q=temperature>20;(status=="ok"|status=="degraded");address[city]=="Berlin"

Terms are joined with `;` (AND) and `|` (OR); AND binds tighter than OR; parentheses group. A term
is an attribute path alone (the attribute exists) or `path op value`:

- path: `attr`, `attr.sub.sub` (sub-attributes; `observedAt`, `modifiedAt`, `createdAt`, `unitCode`
  and `datasetId` address the reserved members), then optionally `[key][key]` into a structured
  value. Names are written as short names; the caller's `expand` maps them to IRIs.
- ops: `==` `!=` `>` `>=` `<` `<=` `~=` (regular expression) `!~=`.
- values: numbers, "quoted strings" (`\\"` and `\\\\` escape), `true`/`false`, unquoted DateTime,
  Date and Time literals, unquoted URIs, ranges `low..high` and lists `a,b,c` (ranges and lists only
  with `==` / `!=`).

What is compared (in the internal form of `cityos.hub.model`, first instance of the attribute):
Property/GeoProperty "value", Relationship "object", VocabProperty "vocab", ListProperty "valueList",
ListRelationship "objectList", JsonProperty "json", LanguageProperty the values of "languageMap"
(with a `[key]` path, the languageMap member instead). When the compared value is an array, the term
matches when any element matches. Comparisons are typed: a number only compares with JSON numbers,
a string (and DateTime/Date/Time/URI literals) only with strings, a boolean only with booleans; a type
mismatch is false. `!=`, `!~=` and "outside a range"/"not in a list" need at least one comparable
value and match when none of the comparable values equals/matches. DateTime literals are normalised
to the stored `YYYY-MM-DDTHH:MM:SS.mmmZ` form so that string order is time order.

Regular expressions are a portable subset of POSIX ARE and Python syntax, validated at parse time:
literals, `.`, `[...]` classes, `\\d \\s \\w` (ASCII classes) and their negations, `^`, `$`, groups,
`|`, greedy and lazy quantifiers, a leading `(?i)`. `.` also matches a newline and `$` only matches at
the very end, as with PostgreSQL's `~`. The evaluator and SQLite use a built-in linear-time matcher
(no backtracking, so no catastrophic patterns; Python's `re` needs seconds for `.*a.*b` on 4 KB);
PostgreSQL uses `~`, with the class escapes spelled out so that no locale changes their meaning.
Strings longer than REGEX_MAX_SUBJECT characters take no part in `~=` / `!~=`, on every backend.

`q_to_sql` turns the same tree into a SQLAlchemy Core condition over the JSON `attrs` column, with
every user value and every JSON key in a bound parameter. `evaluate_q` and the SQL agree exactly
(the tests check this on SQLite and PostgreSQL with generated expressions and entities). One limit:
an expanded name containing `"` (never a legal IRI) matches nothing, as SQLite's JSON paths cannot
address such a key.
"""

from __future__ import annotations

import math
import operator
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any, NoReturn

import orjson
from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.types import TypeEngine

from cityos.core.clock import iso, parse_iso
from cityos.core.db import register_sqlite_function
from cityos.core.errors import BadRequestData

__all__ = [
    "And",
    "AttrPath",
    "Comparison",
    "Exists",
    "Or",
    "Pattern",
    "QExpr",
    "Range",
    "Scalar",
    "ValueList",
    "evaluate_q",
    "parse_q",
    "q_attribute_names",
    "q_to_sql",
]

# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------

RESERVED_SUB_ATTRIBUTES = frozenset({"observedAt", "modifiedAt", "createdAt", "unitCode", "datasetId"})


class QExpr:
    """Base class of the q expression tree."""

    __slots__ = ()


@dataclass(frozen=True)
class AttrPath:
    attr: str
    sub_path: tuple[str, ...] = ()
    json_path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ".".join((self.attr, *self.sub_path)) + "".join(f"[{k}]" for k in self.json_path)


@dataclass(frozen=True)
class Scalar:
    """A literal. `kind` records how it was written: number, string, boolean, datetime, date, time, uri."""

    value: int | float | str | bool
    kind: str

    @property
    def cls(self) -> str:
        """The JSON type it compares with: "number", "string" or "boolean"."""
        if self.kind in ("number", "boolean"):
            return self.kind
        return "string"


@dataclass(frozen=True)
class Range:
    low: Scalar
    high: Scalar


@dataclass(frozen=True)
class ValueList:
    items: tuple[Scalar, ...]


@dataclass(frozen=True)
class Pattern:
    """A regular expression in the portable subset (see the module docstring), as written."""

    source: str


QValue = Scalar | Range | ValueList | Pattern


@dataclass(frozen=True)
class And(QExpr):
    children: tuple[QExpr, ...]


@dataclass(frozen=True)
class Or(QExpr):
    children: tuple[QExpr, ...]


@dataclass(frozen=True)
class Comparison(QExpr):
    path: AttrPath
    op: str
    value: QValue


@dataclass(frozen=True)
class Exists(QExpr):
    path: AttrPath


# ---------------------------------------------------------------------------------------------
# Regular expressions: a portable subset, matched in linear time
# ---------------------------------------------------------------------------------------------

REGEX_MAX_LENGTH = 256
# Strings longer than this are never considered by ~= / !~= (on every backend alike).
REGEX_MAX_SUBJECT = 16384
_REGEX_MAX_STATES = 2048
_REGEX_MAX_REPEAT = 255  # PostgreSQL's RE_DUP_MAX
_REGEX_MAX_GROUP_DEPTH = 16
_REGEX_DFA_CACHE = 1024
_PUNCTUATION = frozenset(string.punctuation + " ")
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


class _RegexSyntaxError(ValueError):
    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# \d \s \w are ASCII classes (what PostgreSQL's are in the C locale; in others they vary, so the
# pattern sent to PostgreSQL spells them out, see pg_pattern).
_DIGITS = "0123456789"
_SPACES = " \t\n\r\f\v"
_WORD = frozenset(string.ascii_letters + _DIGITS + "_")
_CLASS_TEXT = {"d": "0-9", "s": _SPACES, "w": "0-9A-Za-z_"}


def _cat_d(ch: str) -> bool:
    return ch in _DIGITS


def _cat_s(ch: str) -> bool:
    return ch in _SPACES


def _cat_w(ch: str) -> bool:
    return ch in _WORD


_CATEGORIES: dict[str, Callable[[str], bool]] = {
    "d": _cat_d, "s": _cat_s, "w": _cat_w,
    "D": lambda ch: not _cat_d(ch), "S": lambda ch: not _cat_s(ch), "W": lambda ch: not _cat_w(ch),
}


@dataclass(frozen=True)
class _CharSet:
    ranges: tuple[tuple[str, str], ...] = ()
    categories: tuple[str, ...] = ()
    negated: bool = False
    any_char: bool = False

    def _raw(self, ch: str) -> bool:
        for lo, hi in self.ranges:
            if lo <= ch <= hi:
                return True
        return any(_CATEGORIES[cat](ch) for cat in self.categories)

    def matches(self, ch: str, icase: bool) -> bool:
        if self.any_char:
            return True
        hit = self._raw(ch)
        if not hit and icase:
            # Case-insensitive like PostgreSQL: the pattern's characters stand for their simple
            # upper- and lower-case forms, so `ch` matches if it is such a form of a member.
            for variant in (ch.lower(), ch.upper()):
                if (len(variant) == 1 and variant != ch and (variant.upper() == ch or variant.lower() == ch)
                        and self._raw(variant)):
                    hit = True
                    break
        return hit != self.negated


@dataclass(frozen=True)
class _RSet:
    chars: _CharSet


@dataclass(frozen=True)
class _RSeq:
    items: tuple[_RNode, ...]


@dataclass(frozen=True)
class _RAlt:
    branches: tuple[_RNode, ...]


@dataclass(frozen=True)
class _RRepeat:
    node: _RNode
    low: int
    high: int | None


@dataclass(frozen=True)
class _RAssert:
    at_end: bool  # False: start of the string


_RNode = _RSet | _RSeq | _RAlt | _RRepeat | _RAssert


def _consumes(node: _RNode) -> bool:
    if isinstance(node, _RSet):
        return True
    if isinstance(node, _RSeq):
        return any(_consumes(n) for n in node.items)
    if isinstance(node, _RAlt):
        return any(_consumes(n) for n in node.branches)
    if isinstance(node, _RRepeat):
        return _consumes(node.node)
    return False


class _RegexParser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.pos = 0
        self.eol_positions: list[int] = []
        self.class_escapes: list[tuple[int, str, bool]] = []  # (position, d|s|w|D|S|W, inside [...])

    def fail(self, message: str, position: int | None = None) -> NoReturn:
        raise _RegexSyntaxError(message, self.pos if position is None else position)

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def parse(self) -> tuple[_RNode, bool]:
        icase = False
        if self.src.startswith("(?i)"):
            icase = True
            self.pos = 4
        node = self.alternation(0)
        if self.pos < len(self.src):
            self.fail("unbalanced ')'")
        return node, icase

    def alternation(self, depth: int) -> _RNode:
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return branches[0] if len(branches) == 1 else _RAlt(tuple(branches))

    def sequence(self, depth: int) -> _RNode:
        items: list[_RNode] = []
        while self.pos < len(self.src) and self.peek() not in "|)":
            items.append(self.quantified(depth))
        return items[0] if len(items) == 1 else _RSeq(tuple(items))

    def quantified(self, depth: int) -> _RNode:
        atom, repeatable = self.atom(depth)
        c = self.peek()
        if c not in ("*", "+", "?", "{"):
            return atom
        if not repeatable:
            self.fail("nothing to repeat", self.pos)
        if c == "*":
            low, high = 0, None
            self.pos += 1
        elif c == "+":
            low, high = 1, None
            self.pos += 1
        elif c == "?":
            low, high = 0, 1
            self.pos += 1
        else:
            low, high = self.bounds()
        if self.peek() == "?":  # lazy: same set of matches, so the same answer to "is there a match"
            self.pos += 1
        if self.peek() in ("*", "+", "?", "{") and self.peek():
            self.fail("multiple repeat")
        return _RRepeat(atom, low, high)

    def bounds(self) -> tuple[int, int | None]:
        open_at = self.pos
        match = re.compile(r"\{(\d{1,3})(,(\d{0,3}))?\}").match(self.src, self.pos)
        if not match:
            self.fail("'{' must start a bound like {2}, {2,} or {2,5} (write \\{ for a literal brace)", open_at)
        low = int(match.group(1))
        high: int | None = low
        if match.group(2):
            high = int(match.group(3)) if match.group(3) else None
        if low > _REGEX_MAX_REPEAT or (high is not None and high > _REGEX_MAX_REPEAT):
            self.fail(f"repetition bounds may not exceed {_REGEX_MAX_REPEAT}", open_at)
        if high is not None and high < low:
            self.fail("the upper repetition bound is smaller than the lower one", open_at)
        self.pos = match.end()
        return low, high

    def atom(self, depth: int) -> tuple[_RNode, bool]:
        c = self.peek()
        if c == "(":
            if depth >= _REGEX_MAX_GROUP_DEPTH:
                self.fail(f"groups are nested more than {_REGEX_MAX_GROUP_DEPTH} deep")
            open_at = self.pos
            if self.src.startswith("(?:", self.pos):
                self.pos += 3
            elif self.src.startswith("(?", self.pos):
                self.fail("unsupported group: only (...), (?:...) and a leading (?i) are allowed")
            else:
                self.pos += 1
            inner = self.alternation(depth + 1)
            if self.peek() != ")":
                self.fail("missing ')'", open_at)
            self.pos += 1
            return inner, _consumes(inner)
        if c == "[":
            return _RSet(self.char_class()), True
        if c == ".":
            self.pos += 1
            return _RSet(_CharSet(any_char=True)), True
        if c == "^":
            self.pos += 1
            return _RAssert(at_end=False), False
        if c == "$":
            self.eol_positions.append(self.pos)
            self.pos += 1
            return _RAssert(at_end=True), False
        if c == "\\":
            return _RSet(self.escape(in_class=False)), True
        if c in ("*", "+", "?"):
            self.fail("nothing to repeat")
        if c in ("{", "}", "]"):
            self.fail(f"'{c}' must be escaped as \\{c}")
        self.pos += 1
        return _RSet(_CharSet(ranges=((c, c),))), True

    def escape(self, *, in_class: bool) -> _CharSet:
        at = self.pos
        if self.pos + 1 >= len(self.src):
            self.fail("the pattern ends with a backslash", at)
        d = self.src[self.pos + 1]
        self.pos += 2
        if d in "dsw" or (d in "DSW" and not in_class):
            self.class_escapes.append((at, d, in_class))
            return _CharSet(categories=(d,))
        if d in _CONTROL_ESCAPES:
            ch = _CONTROL_ESCAPES[d]
            return _CharSet(ranges=((ch, ch),))
        if d in _PUNCTUATION:
            return _CharSet(ranges=((d, d),))
        where = " inside a character class" if in_class else ""
        self.fail(f"unsupported escape \\{d}{where}", at)

    def class_char(self) -> tuple[str | None, _CharSet | None]:
        """One class member: a literal character, or a category escape."""
        c = self.peek()
        if c == "\\":
            cs = self.escape(in_class=True)
            if cs.categories:
                return None, cs
            return cs.ranges[0][0], None
        if c == "[":
            self.fail("'[' inside a character class must be escaped as \\[")
        if c == "-":
            self.fail("a literal '-' inside a character class must be escaped as \\-")
        self.pos += 1
        return c, None

    def char_class(self) -> _CharSet:
        open_at = self.pos
        self.pos += 1
        negated = False
        if self.peek() == "^":
            negated = True
            self.pos += 1
        ranges: list[tuple[str, str]] = []
        categories: list[str] = []
        while True:
            if self.pos >= len(self.src):
                self.fail("unterminated character class", open_at)
            if self.peek() == "]":
                if not ranges and not categories:
                    self.fail("empty character class (write \\] for a literal ']')", open_at)
                self.pos += 1
                break
            lo, cat = self.class_char()
            if cat is not None:
                categories.extend(cat.categories)
                continue
            assert lo is not None
            if self.peek() == "-" and self.src[self.pos + 1: self.pos + 2] not in ("", "]"):
                dash = self.pos
                self.pos += 1
                hi, hi_cat = self.class_char()
                if hi is None or hi_cat is not None:
                    self.fail("a class range must end with a character", dash)
                if hi < lo:
                    self.fail(f"bad character range {lo}-{hi}", dash)
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        return _CharSet(ranges=tuple(ranges), categories=tuple(categories), negated=negated)


_CHAR, _SPLIT, _BOL, _EOL, _MATCH = range(5)


class _Regex:
    """A compiled pattern: Thompson NFA, simulated with a bounded lazily-built DFA cache."""

    def __init__(self, node: _RNode, icase: bool) -> None:
        self.icase = icase
        self.kinds: list[int] = []
        self.out1: list[int] = []
        self.out2: list[int] = []
        self.sets: list[_CharSet | None] = []
        self.match_state = self._state(_MATCH)
        self.start = self._emit(node, self.match_state)
        self._cache: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._initial = {n: self._closure((self.start,), True, n) for n in (False, True)}

    def _state(self, kind: int, out1: int = -1, out2: int = -1, chars: _CharSet | None = None) -> int:
        if len(self.kinds) >= _REGEX_MAX_STATES:
            raise _RegexSyntaxError("the pattern is too complex", 0)
        self.kinds.append(kind)
        self.out1.append(out1)
        self.out2.append(out2)
        self.sets.append(chars)
        return len(self.kinds) - 1

    def _emit(self, node: _RNode, nxt: int) -> int:
        if isinstance(node, _RSet):
            return self._state(_CHAR, nxt, chars=node.chars)
        if isinstance(node, _RAssert):
            return self._state(_EOL if node.at_end else _BOL, nxt)
        if isinstance(node, _RSeq):
            for item in reversed(node.items):
                nxt = self._emit(item, nxt)
            return nxt
        if isinstance(node, _RAlt):
            starts = [self._emit(branch, nxt) for branch in node.branches]
            head = starts[-1]
            for st in reversed(starts[:-1]):
                head = self._state(_SPLIT, st, head)
            return head
        # repetition: low mandatory copies, then optional copies or a loop
        if node.high is None:
            loop = self._state(_SPLIT, -1, nxt)
            self.out1[loop] = self._emit(node.node, loop)
            tail = loop
        else:
            tail = nxt
            for _ in range(node.high - node.low):
                tail = self._state(_SPLIT, self._emit(node.node, tail), nxt)
        for _ in range(node.low):
            tail = self._emit(node.node, tail)
        return tail

    def _closure(self, seeds: Iterable[int], at_start: bool, at_end: bool) -> frozenset[int]:
        seen: set[int] = set()
        keep: set[int] = set()
        stack = list(seeds)
        kinds, out1, out2 = self.kinds, self.out1, self.out2
        while stack:
            st = stack.pop()
            if st in seen:
                continue
            seen.add(st)
            kind = kinds[st]
            if kind == _SPLIT:
                stack.append(out2[st])
                stack.append(out1[st])
            elif kind == _BOL:
                if at_start:
                    stack.append(out1[st])
            elif kind == _EOL:
                keep.add(st)  # re-examined once the end of the subject is reached
                if at_end:
                    stack.append(out1[st])
            else:
                keep.add(st)
        return frozenset(keep)

    def search(self, subject: str) -> bool:
        """True when the pattern matches anywhere in `subject` (Python `re.search` semantics)."""
        match_state = self.match_state
        current = self._initial[not subject]
        if match_state in current:
            return True
        kinds, out1, sets, icase = self.kinds, self.out1, self.sets, self.icase
        cache = self._cache
        for ch in subject:
            key = (current, ch)
            following = cache.get(key)
            if following is None:
                moved = [out1[st] for st in current
                         if kinds[st] == _CHAR and sets[st].matches(ch, icase)]  # type: ignore[union-attr]
                moved.append(self.start)
                following = self._closure(moved, False, False)
                if len(cache) >= _REGEX_DFA_CACHE:
                    cache.clear()
                cache[key] = following
            current = following
            if match_state in current:
                return True
        if not subject:
            return False
        return match_state in self._closure(current, False, True)


@lru_cache(maxsize=128)
def _compile_regex(source: str) -> _Regex:
    if len(source) > REGEX_MAX_LENGTH:
        raise _RegexSyntaxError(f"the pattern is longer than {REGEX_MAX_LENGTH} characters", 0)
    parser = _RegexParser(source)
    node, icase = parser.parse()
    return _Regex(node, icase)


def python_pattern(source: str) -> str:
    """The equivalent Python `re` pattern, for re.ASCII | re.DOTALL: `$` becomes `\\Z`."""
    parser = _RegexParser(source)
    parser.parse()
    out = list(source)
    for position in parser.eol_positions:
        out[position] = "\\Z"
    return "".join(out)


def pg_pattern(source: str) -> str:
    """The pattern for PostgreSQL's `~`: class escapes spelled out, so no locale can change them."""
    parser = _RegexParser(source)
    parser.parse()
    out = list(source)
    for position, letter, in_class in parser.class_escapes:
        members = _CLASS_TEXT[letter.lower()]
        out[position] = members if in_class else ("[^" if letter.isupper() else "[") + members + "]"
        out[position + 1] = ""
    return "".join(out)


def regex_search(source: str, subject: str) -> bool:
    """The `~=` test used by the evaluator and by SQLite."""
    if len(subject) > REGEX_MAX_SUBJECT:
        return False
    return _compile_regex(source).search(subject)


SQLITE_REGEXP_FUNCTION = "cityos_q_regexp"


def _sqlite_regexp(pattern: Any, subject: Any) -> int:
    """SQLite scalar function (pattern, subject) -> 1/0. Never raises, never backtracks."""
    if not isinstance(pattern, str) or not isinstance(subject, str):
        return 0
    if len(pattern) > REGEX_MAX_LENGTH:
        return 0
    try:
        return 1 if regex_search(pattern, subject) else 0
    except (_RegexSyntaxError, ValueError, re.error, RecursionError):
        return 0


register_sqlite_function(SQLITE_REGEXP_FUNCTION, 2, _sqlite_regexp)

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

_HARD_MAX_DEPTH = 100
_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_:-")
_VALUE_STOP = frozenset(";|(),\"")
_WHITESPACE = frozenset(" \t\r\n")
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", re.ASCII)
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:[Zz]|[+-]\d{2}:?\d{2})?", re.ASCII)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_TIME = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?Z?", re.ASCII)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s\"<>\\^`{}|]+")
_INT64 = 2**63


def parse_q(text: str, *, max_length: int = 4096, max_depth: int = 32, max_terms: int = 256) -> QExpr:
    """Parse a (URL-decoded) q expression; BadRequestData on any syntax error or limit breach."""
    if not isinstance(text, str):
        raise BadRequestData("q must be a string")
    if len(text) > max_length:
        raise BadRequestData(f"q is too long: {len(text)} characters (the maximum is {max_length})")
    bad = _BAD_CHARS.search(text)
    if bad:
        raise BadRequestData(f"Invalid q: character {bad.start() + 1} is not allowed (NUL or a lone surrogate)")
    if not text.strip():
        raise BadRequestData("Invalid q: the expression is empty")
    return _Parser(text, min(max_depth, _HARD_MAX_DEPTH), max_terms).parse()


class _Parser:
    def __init__(self, text: str, max_depth: int, max_terms: int) -> None:
        self.text = text
        self.n = len(text)
        self.max_depth = max_depth
        self.max_terms = max_terms
        self.terms = 0

    def fail(self, message: str, position: int) -> NoReturn:
        near = self.text[position: position + 20]
        where = f"at character {position + 1} (near {near!r})" if near else "at the end"
        raise BadRequestData(f"Invalid q {where}: {message}")

    def skip_ws(self, i: int) -> int:
        while i < self.n and self.text[i] in _WHITESPACE:
            i += 1
        return i

    # -- structure: an operator-precedence parser with explicit stacks (no recursion) ------------

    def parse(self) -> QExpr:
        operands: list[QExpr] = []
        ops: list[tuple[str, int]] = []  # ("(" | ";" | "|", position)
        depth = 0
        expect_term = True
        i = 0
        while True:
            i = self.skip_ws(i)
            if expect_term:
                if i >= self.n:
                    self.fail("expected a term (an attribute, optionally compared with a value)", i)
                c = self.text[i]
                if c == "(":
                    depth += 1
                    if depth > self.max_depth:
                        self.fail(f"parentheses are nested more than {self.max_depth} deep", i)
                    ops.append(("(", i))
                    i += 1
                    continue
                if c in ";|)":
                    self.fail(f"expected a term but found {c!r}", i)
                self.terms += 1
                if self.terms > self.max_terms:
                    self.fail(f"too many terms (the maximum is {self.max_terms})", i)
                term, i = self.term(i)
                operands.append(term)
                expect_term = False
                continue
            if i >= self.n:
                break
            c = self.text[i]
            if c in ";|":
                while ops and ops[-1][0] != "(" and (ops[-1][0] == ";" or c == "|"):
                    self.reduce(operands, ops.pop()[0])
                ops.append((c, i))
                expect_term = True
                i += 1
            elif c == ")":
                while ops and ops[-1][0] != "(":
                    self.reduce(operands, ops.pop()[0])
                if not ops:
                    self.fail("unbalanced ')'", i)
                ops.pop()
                depth -= 1
                i += 1
            else:
                self.fail(f"expected ';', '|', ')' or the end of the expression, found {c!r}", i)
        while ops:
            op, position = ops.pop()
            if op == "(":
                self.fail("this '(' is never closed", position)
            self.reduce(operands, op)
        assert len(operands) == 1
        return operands[0]

    @staticmethod
    def reduce(operands: list[QExpr], op: str) -> None:
        right = operands.pop()
        left = operands.pop()
        kind: type[And] | type[Or] = And if op == ";" else Or
        children: list[QExpr] = []
        for child in (left, right):
            if isinstance(child, kind):
                children.extend(child.children)
            else:
                children.append(child)
        operands.append(kind(tuple(children)))

    # -- terms ---------------------------------------------------------------------------------

    def name(self, i: int, what: str) -> tuple[str, int]:
        if i >= self.n or self.text[i] not in _NAME_START:
            self.fail(f"expected {what} (a name starting with a letter or '_')", i)
        j = i + 1
        while j < self.n and self.text[j] in _NAME_CHARS:
            j += 1
        return self.text[i:j], j

    def attr_path(self, i: int) -> tuple[AttrPath, int]:
        attr, i = self.name(i, "an attribute name")
        subs: list[str] = []
        keys: list[str] = []
        while i < self.n and self.text[i] == ".":
            sub, i = self.name(i + 1, "a sub-attribute name after '.'")
            subs.append(sub)
        while i < self.n and self.text[i] == "[":
            j = i + 1
            while j < self.n and self.text[j] != "]":
                ch = self.text[j]
                if ch in '["\\' or ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
                    self.fail(f"{ch!r} is not allowed in a [key] of an attribute path", j)
                j += 1
            if j >= self.n:
                self.fail("this '[' is never closed", i)
            if j == i + 1:
                self.fail("empty [] in an attribute path", i)
            keys.append(self.text[i + 1: j])
            i = j + 1
        if i < self.n and self.text[i] == ".":
            self.fail("sub-attributes (.name) must come before [key] paths", i)
        return AttrPath(attr, tuple(subs), tuple(keys)), i

    def operator(self, i: int) -> tuple[str | None, int]:
        for op in ("!~=", "==", "!=", ">=", "<=", "~=", ">", "<"):
            if self.text.startswith(op, i):
                return op, i + len(op)
        return None, i

    def term(self, i: int) -> tuple[QExpr, int]:
        path, i = self.attr_path(i)
        j = self.skip_ws(i)
        op, k = self.operator(j)
        if op is None:
            if j < self.n and self.text[j] not in ";|)":
                hint = " (use == for equality)" if self.text[j] == "=" else ""
                self.fail(f"expected an operator (==, !=, >, >=, <, <=, ~=, !~=) after {str(path)!r}{hint}", j)
            return Exists(path), i
        k = self.skip_ws(k)
        if op in ("~=", "!~="):
            pattern, k = self.pattern(k)
            return Comparison(path, op, pattern), k
        value, k = self.value(k, op)
        return Comparison(path, op, value), k

    # -- values --------------------------------------------------------------------------------

    def quoted(self, i: int) -> tuple[str, int]:
        """A "string": \\" and \\\\ are escapes, any other backslash is kept as is."""
        out: list[str] = []
        j = i + 1
        while j < self.n:
            ch = self.text[j]
            if ch == '"':
                return "".join(out), j + 1
            if ch == "\\" and j + 1 < self.n and self.text[j + 1] in '"\\':
                out.append(self.text[j + 1])
                j += 2
                continue
            out.append(ch)
            j += 1
        self.fail("unterminated string (missing closing '\"')", i)

    def scalar(self, i: int) -> tuple[Scalar, int]:
        if i >= self.n:
            self.fail("expected a value", i)
        if self.text[i] == '"':
            text, j = self.quoted(i)
            return Scalar(text, "string"), j
        j = i
        while j < self.n:
            ch = self.text[j]
            if ch in _VALUE_STOP or ch in _WHITESPACE or self.text.startswith("..", j):
                break
            j += 1
        token = self.text[i:j]
        if not token:
            self.fail("expected a value", i)
        return self.classify(token, i), j

    def classify(self, token: str, i: int) -> Scalar:
        if token in ("true", "false"):
            return Scalar(token.startswith("t"), "boolean")
        if _NUMBER.fullmatch(token):
            return Scalar(self.number(token, i), "number")
        if _DATETIME.fullmatch(token):
            try:
                return Scalar(iso(parse_iso(token)), "datetime")
            except (ValueError, OverflowError):
                self.fail(f"{token!r} is not a valid DateTime", i)
        m = _DATE.fullmatch(token)
        if m:
            try:
                date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                self.fail(f"{token!r} is not a valid Date", i)
            return Scalar(token, "date")
        m = _TIME.fullmatch(token)
        if m:
            if int(m.group(1)) > 23 or int(m.group(2)) > 59 or int(m.group(3) or 0) > 59:
                self.fail(f"{token!r} is not a valid Time", i)
            return Scalar(token, "time")
        if _URI.fullmatch(token):
            return Scalar(token, "uri")
        self.fail(f"cannot read the value {token!r}: strings must be in double quotes; numbers, "
                  "true/false, DateTime/Date/Time literals and URIs may be unquoted", i)

    def number(self, token: str, i: int) -> int | float:
        try:
            if any(c in token for c in ".eE"):
                value: int | float = float(token)
            else:
                value = int(token)
                if not -_INT64 <= value < _INT64:
                    value = float(value)
        except (ValueError, OverflowError):
            self.fail(f"the number {token[:40]!r} is out of range", i)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"the number {token[:40]!r} is out of range", i)
        return value

    def value(self, i: int, op: str) -> tuple[QValue, int]:
        first, j = self.scalar(i)
        k = self.skip_ws(j)
        if self.text.startswith("..", k):
            if op not in ("==", "!="):
                self.fail(f"a range can only be used with == or != (not {op})", k)
            high, j = self.scalar(self.skip_ws(k + 2))
            for bound in (first, high):
                if bound.kind in ("boolean", "uri"):
                    self.fail(f"a range bound must be a number, string or date/time, not a {bound.kind}", i)
            if first.cls != high.cls:
                self.fail("both bounds of a range must be of the same type", i)
            return Range(first, high), j
        if k < self.n and self.text[k] == ",":
            if op not in ("==", "!="):
                self.fail(f"a list of values can only be used with == or != (not {op})", k)
            items = [first]
            while k < self.n and self.text[k] == ",":
                item, j = self.scalar(self.skip_ws(k + 1))
                items.append(item)
                k = self.skip_ws(j)
            return ValueList(tuple(items)), j
        if op not in ("==", "!=") and first.kind in ("boolean", "uri"):
            self.fail(f"a {first.kind} can only be compared with == or != (not {op})", i)
        return first, j

    def pattern(self, i: int) -> tuple[Pattern, int]:
        if i < self.n and self.text[i] == '"':
            source, j = self.quoted(i)
        else:
            # Unquoted: up to ';', '|' or whitespace outside groups and classes, or an unmatched ')'.
            j = i
            depth = 0
            in_class = False
            while j < self.n:
                ch = self.text[j]
                if ch == "\\":
                    j += 2
                    continue
                if in_class:
                    in_class = ch != "]"
                elif ch == "[":
                    in_class = True
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif depth == 0 and (ch in ";|" or ch in _WHITESPACE):
                    break
                j += 1
            j = min(j, self.n)
            source = self.text[i:j]
            if not source:
                self.fail("expected a regular expression (quote it if it contains ';', '|' or spaces)", i)
        try:
            _compile_regex(source)
            re.compile(python_pattern(source), re.ASCII | re.DOTALL)
        except _RegexSyntaxError as exc:
            self.fail(f"invalid regular expression {source[:60]!r}: {exc.message} "
                      f"(at pattern character {exc.position + 1})", i)
        except (re.error, RecursionError) as exc:
            self.fail(f"invalid regular expression {source[:60]!r}: {exc}", i)
        return Pattern(source), j


# ---------------------------------------------------------------------------------------------
# Shared semantics
# ---------------------------------------------------------------------------------------------


def q_attribute_names(expr: QExpr) -> set[str]:
    """The attribute (short) names a q expression refers to."""
    names: set[str] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, And | Or):
            stack.extend(node.children)
        elif isinstance(node, Comparison | Exists):
            names.add(node.path.attr)
    return names


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


# ---------------------------------------------------------------------------------------------
# Evaluation against one entity
# ---------------------------------------------------------------------------------------------

_MISSING = object()
_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


def _walk(node: Any, keys: Iterable[str | int]) -> Any:
    for key in keys:
        if isinstance(key, int):
            if not isinstance(node, list) or len(node) <= key:
                return _MISSING
        elif not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _value_key(instance: Any) -> str:
    kind = instance.get("type") if isinstance(instance, dict) else None
    return _VALUE_KEYS.get(kind, _DEFAULT_VALUE_KEY) if isinstance(kind, str) else _DEFAULT_VALUE_KEY


def _py_base(attrs: dict[str, Any], target: _Target) -> tuple[Any, bool]:
    """The compared value (or _MISSING), and whether its members (languageMap values) are compared."""
    instance = _walk(attrs, target.prefix)
    if instance is _MISSING:
        return _MISSING, False
    if target.reserved is not None:
        return _walk(instance, (target.reserved, *target.json_path)), False
    key = _value_key(instance)
    members = key == "languageMap" and not target.json_path
    return _walk(instance, (key, *target.json_path)), members


def _py_candidates(attrs: dict[str, Any], target: _Target) -> list[Any]:
    base, members = _py_base(attrs, target)
    if base is _MISSING:
        return []
    if members:
        return list(base.values()) if isinstance(base, dict) else []
    return list(base) if isinstance(base, list) else [base]


def _py_is(value: Any, cls: str) -> bool:
    if cls == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if cls == "boolean":
        return isinstance(value, bool)
    if cls == "regex":
        return isinstance(value, str) and len(value) <= REGEX_MAX_SUBJECT
    return isinstance(value, str)


def _py_pred(pred: _Pred, value: Any) -> bool:
    if isinstance(pred, _PCompare):
        return _py_is(value, pred.value.cls) and _PY_OPS[pred.op](value, pred.value.value)
    if isinstance(pred, _PBetween):
        return _py_is(value, pred.low.cls) and bool(pred.low.value <= value <= pred.high.value)
    if isinstance(pred, _PAny):
        return any(_py_pred(p, value) for p in pred.preds)
    if isinstance(pred, _PRegex):
        return _py_is(value, "regex") and regex_search(pred.source, value)
    return any(_py_is(value, kind) for kind in pred.kinds)


def evaluate_q(expr: QExpr, attrs: dict[str, Any], expand: Callable[[str], str]) -> bool:
    """Does an entity (its attributes in the internal form) satisfy the expression?"""
    if isinstance(expr, And):
        return all(evaluate_q(child, attrs, expand) for child in expr.children)
    if isinstance(expr, Or):
        return any(evaluate_q(child, attrs, expand) for child in expr.children)
    if isinstance(expr, Exists):
        target = _resolve(expr.path, expand)
        if target is None:
            return False
        if target.json_path and target.reserved is None:
            return _py_base(attrs, target)[0] is not _MISSING
        tail = (target.reserved,) if target.reserved is not None else ()
        return _walk(attrs, (*target.prefix, *tail, *target.json_path)) is not _MISSING
    if isinstance(expr, Comparison):
        target = _resolve(expr.path, expand)
        if target is None:
            return False
        positive, comparable = _plan(expr)
        candidates = _py_candidates(attrs, target)
        if comparable is None:
            return any(_py_pred(positive, c) for c in candidates)
        return (any(_py_pred(comparable, c) for c in candidates)
                and not any(_py_pred(positive, c) for c in candidates))
    raise TypeError(f"not a q expression: {expr!r}")


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------

_SQL_OPS = {"==": "=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


_ARROW = operators.custom_op("->", return_type=JSONB)
_ARROW_TEXT = operators.custom_op("->>", return_type=Text)


def _sqlite_path(keys: Sequence[str | int]) -> str:
    """A SQLite JSON path with every key quoted; keys are JSON-escaped as orjson stores them."""
    parts = ["$"]
    for key in keys:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append(".")
            parts.append(_json_text(key))  # '"' + escaped key + '"' (keys never contain '"')
    return "".join(parts)


def _cmp(left: ColumnElement[Any], op: str, right: ColumnElement[Any]) -> ColumnElement[bool]:
    return left.op(_SQL_OPS[op], is_comparison=True)(right)


class _SqlBuilder:
    def __init__(self, column: ColumnElement[Any], expand: Callable[[str], str]) -> None:
        self.column = column
        self.expand = expand
        self._binds: dict[tuple[str, str, Any], BindParameter[Any]] = {}

    def bind(self, value: Any, type_: TypeEngine[Any]) -> BindParameter[Any]:
        """One bound parameter per distinct value (reused where the value recurs)."""
        key = (type(type_).__name__, type(value).__name__, value)
        found = self._binds.get(key)
        if found is None:
            found = literal(value, type_)
            self._binds[key] = found
        return found

    def s(self, value: str) -> BindParameter[Any]:
        return self.bind(value, String())

    def build(self, expr: QExpr) -> ColumnElement[bool]:
        if isinstance(expr, And):
            return and_(*(self.build(child) for child in expr.children))
        if isinstance(expr, Or):
            return or_(*(self.build(child) for child in expr.children))
        if isinstance(expr, Exists):
            target = _resolve(expr.path, self.expand)
            return false() if target is None else self.exists(target)
        if isinstance(expr, Comparison):
            target = _resolve(expr.path, self.expand)
            if target is None:
                return false()
            positive, comparable = _plan(expr)
            if comparable is None:
                return self.any(target, positive)
            return self.none(target, positive, comparable)
        raise TypeError(f"not a q expression: {expr!r}")

    def none(self, target: _Target, positive: _Pred, comparable: _PKind) -> ColumnElement[bool]:
        """Some value is comparable, and none satisfies `positive` (which implies comparable)."""
        return and_(self.any(target, comparable), not_(self.any(target, positive)))

    def exists(self, target: _Target) -> ColumnElement[bool]:
        raise NotImplementedError

    def any(self, target: _Target, pred: _Pred) -> ColumnElement[bool]:
        raise NotImplementedError


class _SqliteBuilder(_SqlBuilder):
    """json_extract / json_type / json_each over the JSON text, with paths as bound parameters."""

    def __init__(self, column: ColumnElement[Any], expand: Callable[[str], str]) -> None:
        super().__init__(column, expand)
        self._types: dict[tuple[str | int, ...], ColumnElement[Any]] = {}
        self._paths: dict[_Target, ColumnElement[Any]] = {}

    def path(self, keys: Sequence[str | int]) -> BindParameter[Any]:
        return self.s(_sqlite_path(keys))

    def type_of_instance(self, target: _Target) -> ColumnElement[Any]:
        found = self._types.get(target.prefix)
        if found is None:
            found = func.coalesce(func.json_extract(self.column, self.path((*target.prefix, "type"))), self.s(""))
            self._types[target.prefix] = found
        return found

    def value_path(self, target: _Target) -> ColumnElement[Any]:
        """The path of the compared value: fixed for a reserved member, else chosen by the instance type."""
        found = self._paths.get(target)
        if found is None:
            if target.reserved is not None:
                found = self.path((*target.prefix, target.reserved, *target.json_path))
            else:
                whens = [(self.s(kind), self.path((*target.prefix, key, *target.json_path)))
                         for kind, key in _VALUE_KEYS.items()]
                found = case(*whens, value=self.type_of_instance(target),
                             else_=self.path((*target.prefix, _DEFAULT_VALUE_KEY, *target.json_path)))
            self._paths[target] = found
        return found

    def exists(self, target: _Target) -> ColumnElement[bool]:
        if target.json_path and target.reserved is None:
            path: ColumnElement[Any] = self.value_path(target)
        else:
            tail = (target.reserved,) if target.reserved is not None else ()
            path = self.path((*target.prefix, *tail, *target.json_path))
        return func.json_type(self.column, path).is_not(None)

    def values(self, target: _Target) -> tuple[Any, ColumnElement[bool]]:
        """json_each over the compared value, and which of its rows are values to compare."""
        each = func.json_each(self.column, self.value_path(target)).table_valued("key", "value", "type")
        key_type = func.typeof(each.c.key)
        # json_each over a scalar yields the scalar (key NULL); over an array, its elements (integer
        # keys); over an object, its members (text keys) -- wanted only for a languageMap.
        element = or_(each.c.key.is_(None), key_type == self.s("integer"))
        if target.reserved is None and not target.json_path:
            is_language = self.type_of_instance(target) == self.s(_LANGUAGE)
            return each, or_(and_(is_language, key_type == self.s("text")), and_(not_(is_language), element))
        return each, element

    def any(self, target: _Target, pred: _Pred) -> ColumnElement[bool]:
        each, row_ok = self.values(target)
        return exists().select_from(each).where(row_ok, self.pred(pred, each.c.value, each.c.type))

    def none(self, target: _Target, positive: _Pred, comparable: _PKind) -> ColumnElement[bool]:
        # One pass: the best row scores 2 if it satisfies `positive`, 1 if merely comparable.
        each, row_ok = self.values(target)
        score = case((self.pred(positive, each.c.value, each.c.type), self.bind(2, Integer())),
                     (self.pred(comparable, each.c.value, each.c.type), self.bind(1, Integer())),
                     else_=self.bind(0, Integer()))
        best = select(func.max(score)).select_from(each).where(row_ok).scalar_subquery()
        return func.coalesce(best, self.bind(0, Integer())) == self.bind(1, Integer())

    def kind(self, kind: str, value: ColumnElement[Any], json_type: ColumnElement[Any]) -> ColumnElement[bool]:
        if kind == "number":
            return or_(json_type == self.s("integer"), json_type == self.s("real"))
        if kind == "boolean":
            return or_(json_type == self.s("true"), json_type == self.s("false"))
        if kind == "regex":
            return and_(json_type == self.s("text"),
                        func.length(value) <= self.bind(REGEX_MAX_SUBJECT, Integer()))
        return json_type == self.s("text")

    def literal_value(self, scalar: Scalar) -> BindParameter[Any]:
        if isinstance(scalar.value, float):
            return self.bind(scalar.value, Float())
        if isinstance(scalar.value, int):
            return self.bind(scalar.value, Integer())
        return self.s(str(scalar.value))

    def pred(self, pred: _Pred, value: ColumnElement[Any], json_type: ColumnElement[Any]) -> ColumnElement[bool]:
        if isinstance(pred, _PCompare):
            if pred.value.cls == "boolean":
                return json_type == self.s("true" if pred.value.value else "false")
            return and_(self.kind(pred.value.cls, value, json_type),
                        _cmp(value, pred.op, self.literal_value(pred.value)))
        if isinstance(pred, _PBetween):
            return and_(self.kind(pred.low.cls, value, json_type),
                        _cmp(value, ">=", self.literal_value(pred.low)),
                        _cmp(value, "<=", self.literal_value(pred.high)))
        if isinstance(pred, _PAny):
            return or_(*(self.pred(p, value, json_type) for p in pred.preds))
        if isinstance(pred, _PRegex):
            matched = getattr(func, SQLITE_REGEXP_FUNCTION)(self.s(pred.source), value)
            return and_(self.kind("regex", value, json_type), matched == self.bind(1, Integer()))
        return or_(*(self.kind(kind, value, json_type) for kind in pred.kinds))


def _jp_any(condition: str, members: bool) -> str:
    """jsonpath: does the value (or one of its array elements, or of its members) satisfy `condition`?

    Strict mode, so no automatic unwrapping; filters on the JSON type keep every step error-free,
    which keeps the result two-valued (safe under `!`). `condition` must be two-valued too: its
    type test comes first, and `false && x` is false.
    """
    if members:
        return f'exists($ ? (@.type() == "object").* ? ({condition}))'
    return f'exists($ ? ({condition})) || exists($ ? (@.type() == "array")[*] ? ({condition}))'


_JSONPATH_OPS = {"==": "==", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
_JSONB_TYPES = {"number": "number", "string": "string", "boolean": "boolean"}


class _PostgresBuilder(_SqlBuilder):
    """JSONB `->` steps with bound keys pick the compared value (by instance type); a jsonpath
    predicate made of constants only, with the user's values in its bound `vars`, then tests the
    value and its elements in one C call. Regular expressions, which need a per-value length
    guard, iterate the elements in SQL and use `~`."""

    def __init__(self, column: ColumnElement[Any], expand: Callable[[str], str]) -> None:
        super().__init__(column, expand)
        self._instances: dict[tuple[str | int, ...], ColumnElement[Any]] = {}
        self._values: dict[_Target, ColumnElement[Any]] = {}

    def step(self, node: ColumnElement[Any], keys: Iterable[str | int]) -> ColumnElement[Any]:
        for key in keys:
            param = self.bind(key, Integer()) if isinstance(key, int) else self.s(key)
            node = node.operate(_ARROW, param)
        return node

    def instance(self, target: _Target) -> ColumnElement[Any]:
        found = self._instances.get(target.prefix)
        if found is None:
            found = self._instances[target.prefix] = self.step(self.column, target.prefix)
        return found

    def instance_type(self, target: _Target) -> ColumnElement[Any]:
        return self.instance(target).operate(_ARROW_TEXT, self.s("type"))

    def value_node(self, target: _Target) -> ColumnElement[Any]:
        """The compared value: the reserved member, or the member named after the instance type."""
        found = self._values.get(target)
        if found is None:
            instance = self.instance(target)
            if target.reserved is not None:
                found = self.step(instance, (target.reserved, *target.json_path))
            else:
                key = case(*((self.s(kind), self.s(name)) for kind, name in _VALUE_KEYS.items()),
                           value=self.instance_type(target), else_=self.s(_DEFAULT_VALUE_KEY))
                found = self.step(instance.operate(_ARROW, key), target.json_path)
            self._values[target] = found
        return found

    def members(self, target: _Target) -> ColumnElement[bool] | None:
        """Whether the values of an object (a languageMap) are compared, rather than the value itself."""
        if target.reserved is not None or target.json_path:
            return None
        return func.coalesce(self.instance_type(target) == self.s(_LANGUAGE), false(), type_=Boolean())

    def exists(self, target: _Target) -> ColumnElement[bool]:
        if target.json_path and target.reserved is None:
            return self.value_node(target).is_not(None)
        tail = (target.reserved,) if target.reserved is not None else ()
        return self.step(self.column, (*target.prefix, *tail, *target.json_path)).is_not(None)

    def jsonpath(self, text: str) -> ColumnElement[Any]:
        return cast(self.s(text), JSONPATH)

    @staticmethod
    def _is_regex(pred: _Pred) -> bool:
        return isinstance(pred, _PRegex) or (isinstance(pred, _PKind) and "regex" in pred.kinds)

    def any(self, target: _Target, pred: _Pred) -> ColumnElement[bool]:
        if self._is_regex(pred):
            return self.any_regex(target, pred)
        variables: dict[str, Any] = {}
        condition = self.jsonpath_pred(pred, variables)
        return self.path_match(target, lambda members: _jp_any(condition, members), variables)

    def none(self, target: _Target, positive: _Pred, comparable: _PKind) -> ColumnElement[bool]:
        if self._is_regex(positive):
            return super().none(target, positive, comparable)
        variables: dict[str, Any] = {}
        good = self.jsonpath_pred(positive, variables)
        some = self.jsonpath_pred(comparable, variables)
        return self.path_match(
            target, lambda members: f"({_jp_any(some, members)}) && !({_jp_any(good, members)})", variables)

    def path_match(self, target: _Target, program: Callable[[bool], str],
                   variables: dict[str, Any]) -> ColumnElement[bool]:
        """jsonb_path_match over the compared value, with the program for its kind of values."""
        chosen: ColumnElement[Any] = self.jsonpath("strict " + program(False))
        members = self.members(target)
        if members is not None:
            chosen = case((members, self.jsonpath("strict " + program(True))), else_=chosen)
        matched = func.jsonb_path_match(self.value_node(target), chosen,
                                        cast(self.s(_json_text(variables)), JSONB), self.bind(True, Boolean()))
        return func.coalesce(matched, false(), type_=Boolean())

    def jsonpath_pred(self, pred: _Pred, variables: dict[str, Any]) -> str:
        """A jsonpath predicate on `@` built from constants only; values go to `variables`."""
        def var(value: Any) -> str:
            name = f"v{len(variables)}"
            variables[name] = value
            return "$" + name

        def kind(name: str) -> str:
            return f'@.type() == "{_JSONB_TYPES[name]}"'

        if isinstance(pred, _PCompare):
            return f"{kind(pred.value.cls)} && @ {_JSONPATH_OPS[pred.op]} {var(pred.value.value)}"
        if isinstance(pred, _PBetween):
            return f"{kind(pred.low.cls)} && @ >= {var(pred.low.value)} && @ <= {var(pred.high.value)}"
        if isinstance(pred, _PAny):
            return " || ".join(f"({self.jsonpath_pred(p, variables)})" for p in pred.preds)
        assert isinstance(pred, _PKind)
        return " || ".join(kind(k) for k in pred.kinds)

    def text_of(self, value: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.jsonb_build_array(value).operate(_ARROW_TEXT, self.bind(0, Integer()))

    def regex_ok(self, value: ColumnElement[Any], pred: _Pred) -> ColumnElement[bool]:
        text = self.text_of(value)
        checks = [func.jsonb_typeof(value) == self.s("string"),
                  func.length(text) <= self.bind(REGEX_MAX_SUBJECT, Integer())]
        if isinstance(pred, _PRegex):
            checks.append(text.op("~", is_comparison=True)(self.s(pg_pattern(pred.source))))
        return and_(*checks)

    def any_regex(self, target: _Target, pred: _Pred) -> ColumnElement[bool]:
        node = self.value_node(target)
        members = self.members(target)
        program: ColumnElement[Any] = self.jsonpath("strict $[*]")
        if members is not None:
            program = case((members, self.jsonpath("strict $.*")), else_=program)
        rows = func.jsonb_path_query(node, program, cast(self.s("{}"), JSONB),
                                     self.bind(True, Boolean())).column_valued("v")
        inner = exists().where(self.regex_ok(rows, pred))
        direct = self.regex_ok(node, pred)
        if members is not None:
            direct = and_(not_(members), direct)
        return func.coalesce(or_(direct, inner), false(), type_=Boolean())


def q_to_sql(expr: QExpr, attrs_column: ColumnElement[Any], dialect: str,
             expand: Callable[[str], str]) -> ColumnElement[bool]:
    """A SQLAlchemy condition equivalent to `evaluate_q` over the JSON attrs column.

    `dialect` is "sqlite" or "postgresql". Values and JSON keys are all bound parameters.
    """
    builder: _SqlBuilder
    if dialect == "sqlite":
        builder = _SqliteBuilder(attrs_column, expand)
    elif dialect == "postgresql":
        builder = _PostgresBuilder(attrs_column, expand)
    else:
        raise ValueError(f"unsupported dialect {dialect!r}")
    return builder.build(expr)
