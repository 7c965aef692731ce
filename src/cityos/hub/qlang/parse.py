"""Parsing a q expression (the grammar is in the `cityos.hub.qlang` docstring) into the tree."""

from __future__ import annotations

import math
import re
import string
from datetime import date
from typing import NoReturn

from cityos.core.clock import iso, parse_iso
from cityos.core.errors import BadRequestData
from cityos.hub.qlang.regex import (
    _compile_regex,
    _RegexSyntaxError,
    python_pattern,
)
from cityos.hub.qlang.tree import (
    And,
    AttrPath,
    Comparison,
    Exists,
    Or,
    Pattern,
    QExpr,
    QValue,
    Range,
    Scalar,
    ValueList,
)

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
