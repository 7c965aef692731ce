"""Evaluation of a q expression against one entity (its attributes in the internal form)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any

from cityos.hub.qlang.regex import (
    REGEX_MAX_SUBJECT,
    regex_search,
)
from cityos.hub.qlang.semantics import (
    _DEFAULT_VALUE_KEY,
    _VALUE_KEYS,
    _PAny,
    _PBetween,
    _PCompare,
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
)

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
