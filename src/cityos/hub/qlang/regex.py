"""Regular expressions for `~=` / `!~=`: a portable subset, matched in linear time.

The subset and its semantics are described in the `cityos.hub.qlang` docstring.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

from cityos.core.db import register_sqlite_function

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
