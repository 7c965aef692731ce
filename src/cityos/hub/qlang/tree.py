"""The q expression tree: what `parse_q` produces and the evaluator and SQL translation consume."""

from __future__ import annotations

from dataclasses import dataclass

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
