"""SQL translation of a q expression: a SQLAlchemy condition over the JSON `attrs` column,
for SQLite (json_extract / json_each) and PostgreSQL (JSONB and jsonpath)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

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

from cityos.hub.qlang.regex import (
    REGEX_MAX_SUBJECT,
    SQLITE_REGEXP_FUNCTION,
    pg_pattern,
)
from cityos.hub.qlang.semantics import (
    _DEFAULT_VALUE_KEY,
    _LANGUAGE,
    _VALUE_KEYS,
    _PAny,
    _PBetween,
    _PCompare,
    _PKind,
    _plan,
    _Pred,
    _PRegex,
    _resolve,
    _Target,
)
from cityos.hub.qlang.tree import (
    And,
    Comparison,
    Exists,
    Or,
    QExpr,
    Scalar,
)

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
