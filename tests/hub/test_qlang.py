"""The NGSI-LD q language: parser, evaluator, and the SQL translation on SQLite and PostgreSQL.

The SQL must agree exactly with `evaluate_q`; generated expressions and entities check that on a
real SQLite database and, when CITYOS_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import re2
import sqlalchemy as sa
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backends import postgres_test_url
from cityos.config import async_url
from cityos.core.clock import iso
from cityos.core.db import _configure_sqlite, json_dumps
from cityos.core.errors import BadRequestData
from cityos.hub.models import JsonDoc
from cityos.hub.qlang import (
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
    _sqlite_regexp,
    evaluate_q,
    parse_q,
    pg_pattern,
    q_attribute_names,
    q_to_sql,
    regex_search,
)
from cityos.hub.qlang.regex import REGEX_MAX_LENGTH

BASE = "https://example.org/"
PG_URL = postgres_test_url()


def expand(name: str) -> str:
    return BASE + name


def P(attr: str, *sub: str, keys: tuple[str, ...] = ()) -> AttrPath:
    return AttrPath(attr, tuple(sub), keys)


def num(v: int | float) -> Scalar:
    return Scalar(v, "number")


def text(v: str) -> Scalar:
    return Scalar(v, "string")


# ---------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------


def _probe_table() -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        f"qlang_probe_{uuid.uuid4().hex[:10]}", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("attrs", JsonDoc, nullable=False),
    )
    return metadata, table


class SqliteProbe:
    def __init__(self) -> None:
        self.engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool,
                                       json_serializer=json_dumps, json_deserializer=orjson.loads)
        sa.event.listen(self.engine, "connect", _configure_sqlite)
        self.metadata, self.table = _probe_table()
        self.metadata.create_all(self.engine)

    def matches(self, expr: QExpr, entities: list[dict[str, Any]],
                expander: Callable[[str], str] = expand) -> set[int]:
        with self.engine.begin() as conn:
            conn.execute(self.table.delete())
            if entities:
                conn.execute(self.table.insert(), [{"id": i, "attrs": a} for i, a in enumerate(entities)])
            cond = q_to_sql(expr, self.table.c.attrs, "sqlite", expander)
            return set(conn.execute(sa.select(self.table.c.id).where(cond)).scalars())

    def row_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())

    def close(self) -> None:
        self.metadata.drop_all(self.engine)
        self.engine.dispose()


class PostgresProbe:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.metadata, self.table = _probe_table()

    async def matches(self, expr: QExpr, entities: list[dict[str, Any]],
                      expander: Callable[[str], str] = expand) -> set[int]:
        async with self.engine.begin() as conn:
            await conn.execute(self.table.delete())
            if entities:
                await conn.execute(self.table.insert(), [{"id": i, "attrs": a} for i, a in enumerate(entities)])
            cond = q_to_sql(expr, self.table.c.attrs, "postgresql", expander)
            return set((await conn.execute(sa.select(self.table.c.id).where(cond))).scalars())

    async def row_count(self) -> int:
        async with self.engine.connect() as conn:
            result = await conn.execute(sa.select(sa.func.count()).select_from(self.table))
            return int(result.scalar_one())


@pytest.fixture(scope="module")
def sqlite_probe() -> Iterator[SqliteProbe]:
    probe = SqliteProbe()
    yield probe
    probe.close()


@pytest.fixture(scope="module")
async def pg_probe() -> AsyncIterator[PostgresProbe]:
    if not PG_URL:
        pytest.skip("CITYOS_TEST_POSTGRES_URL is not set")
    # JIT compilation of these wide JSON expressions costs seconds per query and buys nothing here.
    engine = create_async_engine(async_url(PG_URL), json_serializer=json_dumps, json_deserializer=orjson.loads,
                                 connect_args={"server_settings": {"jit": "off"}})
    probe = PostgresProbe(engine)
    async with engine.begin() as conn:
        await conn.run_sync(probe.metadata.create_all)
    yield probe
    async with engine.begin() as conn:
        await conn.run_sync(probe.metadata.drop_all)
    await engine.dispose()


def expected(expr: QExpr, entities: list[dict[str, Any]], expander: Callable[[str], str] = expand) -> set[int]:
    return {i for i, attrs in enumerate(entities) if evaluate_q(expr, attrs, expander)}


# ---------------------------------------------------------------------------------------------
# Parser: constructs
# ---------------------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, QExpr]] = [
    ("temperature", Exists(P("temperature"))),
    ("temperature==21.5", Comparison(P("temperature"), "==", num(21.5))),
    ("temperature!=21", Comparison(P("temperature"), "!=", num(21))),
    ("temperature>-3", Comparison(P("temperature"), ">", num(-3))),
    ("temperature>=1e3", Comparison(P("temperature"), ">=", num(1000.0))),
    ("temperature<2.5E-2", Comparison(P("temperature"), "<", num(0.025))),
    ("temperature<=0", Comparison(P("temperature"), "<=", num(0))),
    ('name=="Bob"', Comparison(P("name"), "==", text("Bob"))),
    ('name=="say \\"hi\\" \\\\ o/"', Comparison(P("name"), "==", text('say "hi" \\ o/'))),
    ('name=="a\\nb"', Comparison(P("name"), "==", text("a\\nb"))),  # other backslashes are literal
    ('name==""', Comparison(P("name"), "==", text(""))),
    ('name=="a;b|c(d)e,f..g"', Comparison(P("name"), "==", text("a;b|c(d)e,f..g"))),
    ("on==true", Comparison(P("on"), "==", Scalar(True, "boolean"))),
    ("on!=false", Comparison(P("on"), "!=", Scalar(False, "boolean"))),
    ("seen>2026-01-01T00:00:00Z",
     Comparison(P("seen"), ">", Scalar("2026-01-01T00:00:00.000Z", "datetime"))),
    ("seen<2026-01-01T02:00:00.123456+02:00",
     Comparison(P("seen"), "<", Scalar("2026-01-01T00:00:00.123Z", "datetime"))),
    ("seen==2026-01-01T00:00", Comparison(P("seen"), "==", Scalar("2026-01-01T00:00:00.000Z", "datetime"))),
    ("day>=2026-02-28", Comparison(P("day"), ">=", Scalar("2026-02-28", "date"))),
    ("at<12:30:00", Comparison(P("at"), "<", Scalar("12:30:00", "time"))),
    ("owner==urn:ngsi-ld:Person:1", Comparison(P("owner"), "==", Scalar("urn:ngsi-ld:Person:1", "uri"))),
    ("owner==https://example.org/a/b?c=d#e",
     Comparison(P("owner"), "==", Scalar("https://example.org/a/b?c=d#e", "uri"))),
    ("temperature==1..5", Comparison(P("temperature"), "==", Range(num(1), num(5)))),
    ("temperature!=-1.5..2e1", Comparison(P("temperature"), "!=", Range(num(-1.5), num(20.0)))),
    ("temperature==1..1e308", Comparison(P("temperature"), "==", Range(num(1), num(1e308)))),
    ('name=="a".."m"', Comparison(P("name"), "==", Range(text("a"), text("m")))),
    ("seen==2026-01-01T00:00:00Z..2026-02-01T00:00:00Z",
     Comparison(P("seen"), "==", Range(Scalar("2026-01-01T00:00:00.000Z", "datetime"),
                                       Scalar("2026-02-01T00:00:00.000Z", "datetime")))),
    ("status==1,2,3", Comparison(P("status"), "==", ValueList((num(1), num(2), num(3))))),
    ('status!="on","off",true,urn:x:y',
     Comparison(P("status"), "!=", ValueList((text("on"), text("off"), Scalar(True, "boolean"),
                                              Scalar("urn:x:y", "uri"))))),
    ('name~="^Bo.*b$"', Comparison(P("name"), "~=", Pattern("^Bo.*b$"))),
    ("name!~=(?i)bo(b|x)", Comparison(P("name"), "!~=", Pattern("(?i)bo(b|x)"))),
    ('name~="a|b";x', And((Comparison(P("name"), "~=", Pattern("a|b")), Exists(P("x"))))),
    ("temperature.accuracy<0.5", Comparison(P("temperature", "accuracy"), "<", num(0.5))),
    ("temperature.observedAt>2026-01-01T00:00:00Z",
     Comparison(P("temperature", "observedAt"), ">", Scalar("2026-01-01T00:00:00.000Z", "datetime"))),
    ("a.b.c", Exists(P("a", "b", "c"))),
    ('address[city]=="Berlin"', Comparison(P("address", keys=("city",)), "==", text("Berlin"))),
    ("address[a.b][0]>1",
     Comparison(P("address", keys=("a.b", "0")), ">", num(1))),
    ("a.b[c]", Exists(P("a", "b", keys=("c",)))),
    ("ngsi-ld:x_1", Exists(P("ngsi-ld:x_1"))),
    ("a;b", And((Exists(P("a")), Exists(P("b"))))),
    ("a|b", Or((Exists(P("a")), Exists(P("b"))))),
    ("a;b|c", Or((And((Exists(P("a")), Exists(P("b")))), Exists(P("c"))))),
    ("a|b;c", Or((Exists(P("a")), And((Exists(P("b")), Exists(P("c"))))))),
    ("a;(b|c)", And((Exists(P("a")), Or((Exists(P("b")), Exists(P("c"))))))),
    ("((a))", Exists(P("a"))),
    ("a;b;c", And((Exists(P("a")), Exists(P("b")), Exists(P("c"))))),
    ("(a;b);c", And((Exists(P("a")), Exists(P("b")), Exists(P("c"))))),
    (" a == 1 ; b ", And((Comparison(P("a"), "==", num(1)), Exists(P("b"))))),
]


@pytest.mark.parametrize(("q", "tree"), PARSE_CASES)
def test_parse(q: str, tree: QExpr) -> None:
    assert parse_q(q) == tree


def test_big_integers_become_floats_and_small_stay_ints() -> None:
    assert parse_q("a==9223372036854775807") == Comparison(P("a"), "==", num(9223372036854775807))
    big = parse_q("a==" + "9" * 30)
    assert isinstance(big, Comparison) and isinstance(big.value, Scalar)
    assert big.value.value == float("9" * 30)


def test_attribute_names() -> None:
    tree = parse_q('a==1;(b.c>2|d[e]=="x");a.observedAt>2026-01-01T00:00:00Z|f~="z"')
    assert q_attribute_names(tree) == {"a", "b", "d", "f"}


# ---------------------------------------------------------------------------------------------
# Parser: errors
# ---------------------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, str]] = [
    ("", "empty"),
    ("   ", "empty"),
    ("a=1", "use =="),
    ("a==", "expected a value"),
    ("a==;b", "expected a value"),
    ("==1", "expected an attribute name"),
    ("1a==1", "expected an attribute name"),
    ("a;", "expected a term"),
    (";a", "expected a term but found ';'"),
    ("a||b", "expected a term but found '|'"),
    ("(a", "never closed"),
    ("a)", "unbalanced ')'"),
    ("()", "expected a term but found ')'"),
    ("a b", "expected an operator (==, !=, >, >=, <, <=, ~=, !~=) after 'a'"),
    ("a==1 2", "expected ';', '|', ')'"),
    ('a=="abc', "unterminated string"),
    ("a==abc", "strings must be in double quotes"),
    ("a==null", "strings must be in double quotes"),
    ("a==٣", "strings must be in double quotes"),  # only ASCII digits make numbers
    ("a>true", "boolean can only be compared with == or !="),
    ("a<urn:x:y", "uri can only be compared with == or !="),
    ("a>1..2", "range can only be used with == or !="),
    ("a<1,2", "list of values can only be used with == or !="),
    ('a==1.."z"', "same type"),
    ("a==true..false", "range bound must be"),
    ("a==1e309", "out of range"),
    ("a==-1e999", "out of range"),
    ("a==2026-13-01", "not a valid Date"),
    ("a==2026-02-30T00:00:00Z", "not a valid DateTime"),
    ("a==25:00", "not a valid Time"),
    ("a[", "never closed"),
    ("a[]", "empty []"),
    ('a["x"]', "is not allowed in a [key]"),
    ("a[x].b", "must come before"),
    ("a.", "sub-attribute name"),
    ("a.1", "sub-attribute name"),
    ("a!b", "expected an operator"),
    ("a~=", "expected a regular expression"),
    ('a~="("', "missing ')'"),
    ('a~="a)"', "unbalanced ')'"),
    ('a~="*a"', "nothing to repeat"),
    ('a~="a**"', "multiple repeat"),
    ('a~="a{2,1}"', "smaller than the lower"),
    ('a~="a{300}"', "may not exceed 255"),
    ('a~="a{"', "'{' must start a bound"),
    ('a~="\\\\b"', "unsupported escape \\b"),
    ('a~="\\\\1"', "unsupported escape \\1"),
    ('a~="(?P<x>a)"', "unsupported group"),
    ('a~="a(?i)"', "unsupported group"),
    ('a~="[ab"', "unterminated character class"),
    ('a~="[a-"', "literal '-'"),
    ('a~="[]"', "empty character class"),
    ('a~="[z-a]"', "bad character range"),
    ('a~="[[:alpha:]]"', "'[' inside a character class"),
    ('a~="[a-c-e]"', "literal '-'"),
    ('a~="[\\\\W]"', "unsupported escape \\W inside a character class"),
    ('a~="a\\\\"', "ends with a backslash"),
    ('a~="^*"', "nothing to repeat"),
    ("a~=" + "x" * 300, "longer than 256"),
    ("a==1\x00", "not allowed"),
    ("a==\ud800", "not allowed"),
    ("' OR 1=1 --", "expected an attribute name"),
    ("a==1;DROP TABLE x", "expected an operator"),
    ('a=="x" OR 1=1', "expected ';', '|', ')'"),
]


@pytest.mark.parametrize(("q", "detail"), ERROR_CASES)
def test_parse_errors(q: str, detail: str) -> None:
    with pytest.raises(BadRequestData) as info:
        parse_q(q)
    assert detail in info.value.detail, info.value.detail
    assert info.value.status == 400


def test_error_detail_points_at_the_problem() -> None:
    with pytest.raises(BadRequestData) as info:
        parse_q("a==1;b==abc")
    assert "at character 9" in info.value.detail and "'abc'" in info.value.detail


def test_limits() -> None:
    with pytest.raises(BadRequestData, match="too long"):
        parse_q("a" * 4097)
    parse_q("a" * 4096)
    with pytest.raises(BadRequestData, match="too long"):
        parse_q("a==1", max_length=3)
    nested = "(" * 32 + "a" + ")" * 32
    assert parse_q(nested) == Exists(P("a"))
    with pytest.raises(BadRequestData, match="nested more than 32"):
        parse_q("(" * 33 + "a" + ")" * 33)
    with pytest.raises(BadRequestData, match="nested more than 2"):
        parse_q("(((a)))", max_depth=2)
    assert isinstance(parse_q(";".join(["a"] * 256)), And)
    with pytest.raises(BadRequestData, match="too many terms"):
        parse_q(";".join(["a"] * 257))
    with pytest.raises(BadRequestData, match="too many terms"):
        parse_q("a;b;c", max_terms=2)


def test_pathological_nesting_never_recurses() -> None:
    depth = 200_000
    with pytest.raises(BadRequestData, match="nested more than"):
        parse_q("(" * depth + "a" + ")" * depth, max_length=10 * depth, max_depth=10**9)
    with pytest.raises(BadRequestData):
        parse_q("a~=" + "(" * 100 + "a" + ")" * 100)
    long_or = "|".join(["a==1"] * 5000)
    tree = parse_q(long_or, max_length=10**6, max_terms=10**6)
    assert isinstance(tree, Or) and len(tree.children) == 5000
    assert evaluate_q(tree, {}, expand) is False


# ---------------------------------------------------------------------------------------------
# Evaluation semantics
# ---------------------------------------------------------------------------------------------

ENTITY: dict[str, Any] = {
    expand("temperature"): [
        {"type": "Property", "value": 21.5, "observedAt": "2026-01-01T10:00:00.000Z", "unitCode": "CEL",
         expand("accuracy"): {"type": "Property", "value": 0.5}},
        {"type": "Property", "value": 99, "datasetId": "urn:ds:2"},
    ],
    expand("name"): [{"type": "Property", "value": "Bob"}],
    expand("label"): [{"type": "LanguageProperty", "languageMap": {"en": "Tree", "de": "Baum"}}],
    expand("owner"): [{"type": "Relationship", "object": "urn:ngsi-ld:Person:1"}],
    expand("friends"): [{"type": "Relationship", "object": ["urn:p:1", "urn:p:2"]}],
    expand("category"): [{"type": "VocabProperty", "vocab": expand("shop")}],
    expand("tags"): [{"type": "ListProperty", "valueList": ["a", "b", 3]}],
    expand("address"): [{"type": "Property", "value": {"city": "Berlin", "zip": 10115, "geo": {"x": 1}}}],
    expand("active"): [{"type": "Property", "value": True}],
    expand("count"): [{"type": "Property", "value": 7}],
    expand("blob"): [{"type": "JsonProperty", "json": {"k": [1, 2]}}],
    expand("seen"): [{"type": "Property", "value": "2026-03-01T12:00:00.000Z"}],
}

SEMANTIC_CASES: list[tuple[str, bool]] = [
    ("temperature", True),
    ("nothing", False),
    ("temperature==21.5", True),
    ("temperature==99", False),  # only the default (first) instance
    ("temperature>21", True),
    ("temperature>=21.5;temperature<=21.5", True),
    ("temperature<21.5", False),
    ("temperature!=20", True),
    ("temperature!=21.5", False),
    ('temperature=="21.5"', False),  # typed: a string never equals a number
    ('temperature!="21.5"', False),  # ... and a type mismatch is not "different" either
    ("nothing!=1", False),
    ("temperature==21..22", True),
    ("temperature==22..30", False),
    ("temperature!=22..30", True),
    ("temperature!=21..22", False),
    ("temperature==1,21.5", True),
    ("temperature!=1,2", True),
    ("temperature!=1,21.5", False),
    ("temperature.accuracy==0.5", True),
    ("temperature.accuracy<0.1", False),
    ("temperature.accuracy", True),
    ("temperature.precision", False),
    ("temperature.unitCode==\"CEL\"", True),
    ("temperature.observedAt>2026-01-01T09:00:00Z", True),
    ("temperature.observedAt>2026-01-01T12:00:00+01:00", False),
    ("temperature.observedAt==2026-01-01T10:00:00Z", True),
    ("temperature.observedAt", True),
    ("temperature.datasetId", False),
    ("temperature.createdAt", False),
    ("temperature.observedAt.x", False),
    ('name=="Bob"', True),
    ('name=="bob"', False),
    ('name>"Ann"', True),
    ('name~="^B"', True),
    ('name~="(?i)^bob$"', True),
    ('name~="^o"', False),
    ('name!~="^o"', True),
    ('name!~="o"', False),
    ("name~=B.b", True),
    ('label=="Baum"', True),
    ('label=="Tree"', True),
    ('label=="tree"', False),
    ('label[de]=="Baum"', True),
    ('label[en]=="Baum"', False),
    ('label!="Tree"', False),
    ('label~="^Ba"', True),
    ("owner==urn:ngsi-ld:Person:1", True),
    ('owner=="urn:ngsi-ld:Person:1"', True),
    ("owner!=urn:ngsi-ld:Person:2", True),
    ("friends==urn:p:2", True),
    ("friends!=urn:p:2", False),
    ("friends!=urn:p:3", True),
    ("category==https://example.org/shop", True),
    ('tags=="b"', True),
    ("tags==3", True),
    ('tags=="c"', False),
    ('tags!="c"', True),
    ('tags!="a"', False),
    ('address[city]=="Berlin"', True),
    ("address[zip]>10000", True),
    ("address[geo][x]==1", True),
    ("address[geo]", True),
    ("address[nope]", False),
    ("address[city][x]", False),
    ('address=="Berlin"', False),
    ("active==true", True),
    ("active==false", False),
    ("active!=false", True),
    ("active==1", False),  # booleans are not numbers
    ("count==true", False),
    ("count==7.0", True),
    ("count==6..8", True),
    ("blob[k]==2", True),
    ("seen>2026-02-01T00:00:00Z", True),
    ("seen==2026-03-01T12:00:00.000Z", True),
    ("seen>2026-03-01T12:00:00.001Z", False),
    ('seen>"2026"', True),
    ("seen==2026-01-01..2026-12-31", True),
    ("temperature>100|name==\"Bob\"", True),
    ("temperature>100;name==\"Bob\"", False),
    ("(temperature>100|name==\"Bob\");active==true", True),
]


@pytest.mark.parametrize(("q", "result"), SEMANTIC_CASES)
def test_semantics_and_sql_agree(q: str, result: bool, sqlite_probe: SqliteProbe) -> None:
    tree = parse_q(q)
    assert evaluate_q(tree, ENTITY, expand) is result
    assert sqlite_probe.matches(tree, [ENTITY]) == ({0} if result else set())


async def test_semantics_on_postgres(pg_probe: PostgresProbe) -> None:
    for q, result in SEMANTIC_CASES:
        assert await pg_probe.matches(parse_q(q), [ENTITY]) == ({0} if result else set()), q


WEIRD_ENTITIES: list[dict[str, Any]] = [
    {},
    {expand("temperature"): []},
    {expand("temperature"): {"type": "Property", "value": 1}},  # not a list of instances
    {expand("temperature"): [None]},
    {expand("temperature"): ["text"]},
    {expand("temperature"): [{"value": 1}]},  # no type: compared like a Property
    {expand("temperature"): [{"type": ["Property"], "value": 1}]},
    {expand("temperature"): [{"type": "Relationship", "value": 1}]},  # the object is compared
    {expand("temperature"): [{"type": "LanguageProperty", "languageMap": ["x", 1]}]},
    {expand("temperature"): [{"type": "LanguageProperty", "languageMap": "x"}]},
    {expand("temperature"): [{"type": "Property", "value": None}]},
    {expand("temperature"): [{"type": "Property", "value": [[1], {"a": 1}, 1]}]},
    {expand("temperature"): [{"type": "Property", "value": {"0": 1, "a": [1]}}]},
    {expand("temperature"): [{"type": "Property", "value": 1, expand("accuracy"): [1]}]},
    {expand("temperature"): [{"type": "Property", "value": 1, "observedAt": None}]},
]


@pytest.mark.parametrize("q", ["temperature", "temperature==1", "temperature!=1", "temperature!=2",
                               'temperature=="x"', "temperature[0]", "temperature[0]==1",
                               "temperature[a]==1", "temperature.accuracy", "temperature.observedAt",
                               "temperature==1..1", "temperature!=5..6", "temperature~=x"])
def test_odd_shapes_agree(q: str, sqlite_probe: SqliteProbe) -> None:
    tree = parse_q(q)
    assert sqlite_probe.matches(tree, WEIRD_ENTITIES) == expected(tree, WEIRD_ENTITIES)


async def test_odd_shapes_agree_on_postgres(pg_probe: PostgresProbe) -> None:
    for q in ["temperature", "temperature==1", "temperature!=1", "temperature!=2", 'temperature=="x"',
              "temperature[0]", "temperature[0]==1", "temperature[a]==1", "temperature.accuracy",
              "temperature.observedAt", "temperature==1..1", "temperature!=5..6", "temperature~=x"]:
        tree = parse_q(q)
        assert await pg_probe.matches(tree, WEIRD_ENTITIES) == expected(tree, WEIRD_ENTITIES), q


# ---------------------------------------------------------------------------------------------
# Regular expressions
# ---------------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def regexes(draw: st.DrawFn, depth: int = 0) -> str:
    atoms = ["a", "b", "c", "A", ".", "[a-c]", "[^b]", "[ab\\d]", "\\d", "\\w", "\\s", "\\W", "\\.", "x", " ",
             "é", "1", "\\n"]
    pieces = []
    for _ in range(draw(st.integers(1, 4))):
        if depth < 2 and draw(st.integers(0, 5)) == 0:
            branches = draw(st.lists(regexes(depth + 1), min_size=1, max_size=3))
            atom = draw(st.sampled_from(["(", "(?:"])) + "|".join(branches) + ")"
        else:
            atom = draw(st.sampled_from(atoms))
        pieces.append(atom + draw(st.sampled_from(["", "", "", "*", "+", "?", "{1,2}", "*?", "{2}", "{0,}"])))
    body = "".join(pieces)
    if depth == 0:
        body = draw(st.sampled_from(["", "^"])) + body + draw(st.sampled_from(["", "$"]))
        body = draw(st.sampled_from(["", "", "(?i)"])) + body
    return body


SUBJECT_ALPHABET = "abcABx .1é\n_-9٣"


@settings(max_examples=200, deadline=None)
@given(regexes(), st.text(alphabet=SUBJECT_ALPHABET, max_size=12))
def test_regex_engine_matches_re2(pattern: str, subject: str) -> None:
    # RE2 is the oracle: like our matcher it never backtracks (Python's re hangs on some generated
    # patterns), has ASCII classes, and `$` only at the very end; dot-all is switched on.
    options = re2.Options()
    options.dot_nl = True
    reference = re2.compile(pattern, options).search(subject) is not None
    assert regex_search(pattern, subject) is reference


REGEX_SWEEP = [r"\w", r"\d", r"\s", r"\W+", r"[^\s\d]", r"(?i)k", r"(?i)s", r"(?i)[a-z]", r"(?i)é",
               r"(?i)[^a]", r"[^a]", ".", r"^.$", r"(?i)\w"]
SWEEP_CHARS = [chr(i) for i in range(1, 0x3000) if not 0xD800 <= i < 0xE000] + list("日本ſKİßΣσς\u2028\u3000")


async def test_regex_classes_agree_with_postgres(pg_probe: PostgresProbe) -> None:
    """Class escapes and case folding, over many non-ASCII characters, whatever the locale."""
    async with pg_probe.engine.connect() as conn:
        for pattern in REGEX_SWEEP:
            rows = (await conn.execute(
                sa.text("SELECT x, x ~ :p AS m FROM unnest(CAST(:xs AS text[])) AS x"),
                {"p": pg_pattern(pattern), "xs": SWEEP_CHARS})).all()
            differences = [(hex(ord(x)), m) for x, m in rows if m != regex_search(pattern, x)]
            assert not differences, (pattern, differences[:10])


def test_sqlite_regexp_function_never_raises() -> None:
    assert _sqlite_regexp("^a", "abc") == 1
    assert _sqlite_regexp("^b", "abc") == 0
    assert _sqlite_regexp("(", "abc") == 0
    assert _sqlite_regexp("a" * 1000, "a" * 1000) == 0
    assert _sqlite_regexp(None, "abc") == 0
    assert _sqlite_regexp("a", 5) == 0
    assert _sqlite_regexp(b"a", "a") == 0


def test_regex_engine_is_linear() -> None:
    # Patterns that take a backtracking engine (Python's re) seconds or forever.
    subject = "a" * 16383 + "!"
    started = time.perf_counter()
    for pattern in [".*a.*b", "(a+)+$", "(a|aa)*c", "(.*)*x", "a*a*a*a*a*a*b", "(a|a?)+b", "(?i)(a|A)+B"]:
        assert regex_search(pattern, subject) is False
    assert regex_search("a{255}", subject) is True
    assert time.perf_counter() - started < 5
    assert regex_search("x", "x" * 16385) is False  # longer subjects are never considered


# ---------------------------------------------------------------------------------------------
# Generated expressions and entities: parse(render(tree)) == tree and SQL == evaluate_q
# ---------------------------------------------------------------------------------------------

ATTRS = ["temperature", "name", "address", "owner", "tags", "status"]
SUBS = ["accuracy", "provider", "observedAt", "unitCode", "datasetId", "createdAt"]
JSON_KEYS = ["city", "zip", "nested", "0", "k"]
STRINGS = ["", "a", "b", "abc", "Abc", "a\nb", "O'Brien", 'say "hi"', "back\\slash", "é", "日本", "a b",
           "2026-01-01T00:00:00.000Z", "2026-06-01T12:30:00.000Z", "2026-01-01", "12:30:00",
           "urn:ngsi-ld:Thing:1", "urn:ngsi-ld:Thing:2", "'; DROP TABLE hub_entities; --", "Berlin", "CEL"]
DATETIMES = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, 12, 30, tzinfo=UTC),
             datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)]
URIS = ["urn:ngsi-ld:Thing:1", "urn:ngsi-ld:Thing:2", "https://example.org/shop"]
safe_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6)
# Named functions, not lambdas, in strategies: Hypothesis otherwise spends seconds reading lambda
# source to describe the strategy.


def _quarter(n: int) -> float:
    return n / 4


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(JSON_KEYS), inner, max_size=3)


numbers = st.one_of(st.integers(-6, 6), st.integers(-40, 40).map(_quarter),
                    st.sampled_from([1e300, -1e300, 2**53 - 1, 0.1, 5e-324]),
                    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
strings = st.one_of(st.sampled_from(STRINGS), safe_text)
json_scalars = st.one_of(numbers, strings, st.booleans(), st.none())
json_values = st.recursive(
    json_scalars,
    _json_containers,
    max_leaves=4,
)
TYPES = ["Property", "Relationship", "LanguageProperty", "VocabProperty", "ListProperty", "ListRelationship",
         "JsonProperty", "GeoProperty", None, "Unknown"]
VALUE_KEY = {"Relationship": "object", "LanguageProperty": "languageMap", "VocabProperty": "vocab",
             "ListProperty": "valueList", "ListRelationship": "objectList", "JsonProperty": "json"}


@st.composite
def instances(draw: st.DrawFn, nested: bool = True) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES))
    instance: dict[str, Any] = {} if kind is None else {"type": kind}
    key = VALUE_KEY.get(kind or "", "value")
    if kind == "LanguageProperty" and draw(st.booleans()):
        instance[key] = draw(st.dictionaries(st.sampled_from(["en", "de", "city"]), strings | numbers, max_size=3))
    elif kind in ("Relationship", "ListRelationship") and draw(st.booleans()):
        instance[key] = draw(st.sampled_from(URIS) | st.lists(st.sampled_from(URIS), max_size=3))
    elif draw(st.integers(0, 9)):
        instance[key] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:  # a stray value key of another type
        instance[draw(st.sampled_from(["value", "object", "languageMap", "valueList"]))] = draw(json_values)
    if draw(st.booleans()):
        instance["observedAt"] = draw(st.sampled_from([iso(d) for d in DATETIMES]) | strings)
    if draw(st.integers(0, 3)) == 0:
        instance["unitCode"] = draw(st.sampled_from(["CEL", "FAH"]) | json_scalars)
    if draw(st.integers(0, 3)) == 0:
        instance["datasetId"] = draw(st.sampled_from(URIS))
    if nested and draw(st.booleans()):
        instance[expand(draw(st.sampled_from(["accuracy", "provider"])))] = draw(instances(nested=False))
    return instance


@st.composite
def entities(draw: st.DrawFn) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(ATTRS), max_size=3, unique=True)):
        attrs[expand(name)] = draw(st.lists(instances(), min_size=0 if draw(st.integers(0, 9)) == 0 else 1,
                                            max_size=2))
    return attrs


Rendered = tuple[QExpr, str]


@st.composite
def scalar_literals(draw: st.DrawFn, kinds: tuple[str, ...]) -> tuple[Scalar, str]:
    kind = draw(st.sampled_from(kinds))
    if kind == "number":
        value = draw(numbers)
        return Scalar(value, "number"), repr(value)
    if kind == "string":
        value = draw(strings)
        return Scalar(value, "string"), _quote(value)
    if kind == "boolean":
        flag = draw(st.booleans())
        return Scalar(flag, "boolean"), "true" if flag else "false"
    if kind == "datetime":
        moment = draw(st.sampled_from(DATETIMES))
        written = draw(st.sampled_from([
            moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            iso(moment),
            (moment + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00",
        ]))
        normalised = iso(moment) if "+02:00" in written or "." in written else iso(moment.replace(microsecond=0))
        return Scalar(normalised, "datetime"), written
    if kind == "date":
        value = draw(st.sampled_from(["2026-01-01", "2025-12-31"]))
        return Scalar(value, "date"), value
    if kind == "time":
        value = draw(st.sampled_from(["12:30:00", "00:00"]))
        return Scalar(value, "time"), value
    value = draw(st.sampled_from(URIS))
    return Scalar(value, "uri"), value


ORDERED = ("number", "string", "datetime", "date", "time")
ANY_KIND = ("number", "string", "boolean", "datetime", "date", "time", "uri")


@st.composite
def terms(draw: st.DrawFn) -> Rendered:
    path = AttrPath(draw(st.sampled_from(ATTRS)),
                    tuple(draw(st.lists(st.sampled_from(SUBS), max_size=2))),
                    tuple(draw(st.lists(st.sampled_from(JSON_KEYS), max_size=2))))
    written = str(path)
    op = draw(st.sampled_from(["exists", "==", "!=", ">", ">=", "<", "<=", "~=", "!~="]))
    if op == "exists":
        return Exists(path), written
    if op in ("~=", "!~="):
        # A longer pattern is refused by the parser (its own test): the expressions here must all be valid.
        pattern = draw(regexes().filter(lambda p: len(p) <= REGEX_MAX_LENGTH))
        return Comparison(path, op, Pattern(pattern)), written + op + _quote(pattern)
    shape = draw(st.sampled_from(["scalar", "range", "list"])) if op in ("==", "!=") else "scalar"
    if shape == "range":
        numeric = draw(st.booleans())
        kinds = ("number",) if numeric else ("string", "datetime", "date", "time")
        low, low_text = draw(scalar_literals(kinds))
        high, high_text = draw(scalar_literals(kinds))
        return Comparison(path, op, Range(low, high)), f"{written}{op}{low_text}..{high_text}"
    if shape == "list":
        items = draw(st.lists(scalar_literals(ANY_KIND), min_size=2, max_size=3))
        return (Comparison(path, op, ValueList(tuple(i for i, _ in items))),
                written + op + ",".join(t for _, t in items))
    value, value_text = draw(scalar_literals(ANY_KIND if op in ("==", "!=") else ORDERED))
    return Comparison(path, op, value), written + op + value_text


def _combine(parts: tuple[str, list[Rendered]]) -> Rendered:
    kind, children = parts
    node_type: type[And] | type[Or] = And if kind == ";" else Or
    flat: list[QExpr] = []
    for child, _ in children:
        flat.extend(child.children if isinstance(child, node_type) else [child])
    rendered = kind.join(f"({t})" if isinstance(c, And | Or) else t for c, t in children)
    return node_type(tuple(flat)), rendered


def _combinations(inner: st.SearchStrategy[Rendered]) -> st.SearchStrategy[Rendered]:
    return st.tuples(st.sampled_from([";", "|"]), st.lists(inner, min_size=2, max_size=3)).map(_combine)


expressions = st.recursive(
    terms(),
    _combinations,
    max_leaves=6,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, st.lists(entities(), min_size=1, max_size=4))
def test_generated_expressions_sqlite(sqlite_probe: SqliteProbe, rendered: Rendered,
                                      batch: list[dict[str, Any]]) -> None:
    tree, q = rendered
    note(q)
    assert parse_q(q) == tree
    assert sqlite_probe.matches(tree, batch) == expected(tree, batch)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, st.lists(entities(), min_size=1, max_size=4))
async def test_generated_expressions_postgres(pg_probe: PostgresProbe, rendered: Rendered,
                                              batch: list[dict[str, Any]]) -> None:
    tree, q = rendered
    note(q)
    assert await pg_probe.matches(parse_q(q), batch) == expected(tree, batch)


@st.composite
def focused(draw: st.DrawFn) -> tuple[Rendered, list[dict[str, Any]]]:
    """One term against entities that hold the literal it compares with (more matches than chance)."""
    term, q = draw(terms())
    batch = draw(st.lists(entities(), min_size=1, max_size=3))
    literals: list[Any] = []
    if isinstance(term, Comparison):
        value = term.value
        if isinstance(value, Scalar):
            literals = [value.value]
        elif isinstance(value, Range):
            literals = [value.low.value, value.high.value]
        elif isinstance(value, ValueList):
            literals = [item.value for item in value.items]
    for attrs in batch:
        instance = draw(instances())
        stored: Any = draw(st.sampled_from(literals)) if literals else draw(json_values)
        for key in reversed(term.path.json_path):
            stored = {key: stored}
        subs = term.path.sub_path
        target = instance
        for sub in subs:
            if sub in ("observedAt", "unitCode", "datasetId", "createdAt"):
                target[sub] = stored
                break
            target = target.setdefault(expand(sub), {"type": "Property"})
        else:
            target[VALUE_KEY.get(target.get("type") or "", "value")] = stored
        attrs[expand(term.path.attr)] = [instance]
    return (term, q), batch


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(focused())
def test_focused_terms_sqlite(sqlite_probe: SqliteProbe, case: tuple[Rendered, list[dict[str, Any]]]) -> None:
    (tree, q), batch = case
    note(q)
    assert sqlite_probe.matches(parse_q(q), batch) == expected(tree, batch)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(focused())
async def test_focused_terms_postgres(pg_probe: PostgresProbe,
                                      case: tuple[Rendered, list[dict[str, Any]]]) -> None:
    (tree, q), batch = case
    note(q)
    assert await pg_probe.matches(parse_q(q), batch) == expected(tree, batch)


# ---------------------------------------------------------------------------------------------
# Fuzzing: arbitrary text is either rejected with BadRequestData or runs
# ---------------------------------------------------------------------------------------------

Q_ALPHABET = "ab.[]()=!<>~;|,\"\\ 019-:TZe'*^$?+{}"
FUZZ_ENTITIES = [ENTITY, *WEIRD_ENTITIES[:6], {expand("a"): [{"type": "Property", "value": {"b": 1}}]}]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_text_only_raises_bad_request(q: str) -> None:
    try:
        tree = parse_q(q)
    except BadRequestData:
        return
    evaluate_q(tree, ENTITY, expand)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=Q_ALPHABET, max_size=40))
def test_fuzzed_q_agrees_on_sqlite(sqlite_probe: SqliteProbe, q: str) -> None:
    try:
        tree = parse_q(q)
    except BadRequestData:
        return
    note(repr(tree))
    assert sqlite_probe.matches(tree, FUZZ_ENTITIES) == expected(tree, FUZZ_ENTITIES)


# ---------------------------------------------------------------------------------------------
# Injection
# ---------------------------------------------------------------------------------------------

HOSTILE = [
    "a==1;DROP TABLE x",
    "' OR 1=1 --",
    "a==1) OR (1=1",
    "a==1 UNION SELECT 1",
    '"; DROP TABLE t; --',
    'name=="\'; DROP TABLE qlang_probe; --"',
    'name=="x\\" OR 1=1 --"',
    'name=="O\'Brien"',
    'name=="back\\\\slash"',
    'name=="\\\\"',
    'name=="%27%20OR%201%3D1"',
    "name==urn:x';DROP",
    "name==urn:x'--",
    "address[');DROP/**/TABLE/**/t;--]==1",
    "address[$.x]==1",
    "address['||'1]",
    "address[a')/*]",
    'name~="\'; DROP TABLE t; --"',
    "name~=(';DROP)",
    "name~=\\'",
    'name=="\x1a\x7f\u2028"',
    "name==" + '"' + "A" * 3000 + '"',
    "a==1..1e308",
    "a!=-1e308..1e308",
]
HOSTILE_ENTITIES: list[dict[str, Any]] = [
    ENTITY,
    {expand("name"): [{"type": "Property", "value": "'; DROP TABLE qlang_probe; --"}]},
    {expand("name"): [{"type": "Property", "value": 'x" OR 1=1 --'}]},
    {expand("name"): [{"type": "Property", "value": "O'Brien"}]},
    {expand("name"): [{"type": "Property", "value": "back\\slash"}]},
    {expand("name"): [{"type": "Property", "value": "\\"}]},
    {expand("name"): [{"type": "Property", "value": "urn:x'--"}]},
    {expand("address"): [{"type": "Property", "value": {"');DROP/**/TABLE/**/t;--": 1, "$.x": 1}}]},
    {expand("a"): [{"type": "Property", "value": 5}]},
]


@pytest.mark.parametrize("q", HOSTILE)
def test_injection_sqlite(q: str, sqlite_probe: SqliteProbe) -> None:
    try:
        tree = parse_q(q)
    except BadRequestData:
        return
    assert sqlite_probe.matches(tree, HOSTILE_ENTITIES) == expected(tree, HOSTILE_ENTITIES)
    assert sqlite_probe.row_count() == len(HOSTILE_ENTITIES)


def test_injection_values_match_literally(sqlite_probe: SqliteProbe) -> None:
    cases = {
        'name=="\'; DROP TABLE qlang_probe; --"': {1},
        'name=="x\\" OR 1=1 --"': {2},
        'name=="O\'Brien"': {3},
        'name=="back\\\\slash"': {4},
        'name=="\\\\"': {5},
        "name==urn:x'--": {6},
        "address[');DROP/**/TABLE/**/t;--]==1": {7},
        "address[$.x]==1": {7},
        "a==1..1e308": {8},
    }
    for q, ids in cases.items():
        tree = parse_q(q)
        assert expected(tree, HOSTILE_ENTITIES) == ids, q
        assert sqlite_probe.matches(tree, HOSTILE_ENTITIES) == ids, q


async def test_injection_postgres(pg_probe: PostgresProbe) -> None:
    for q in HOSTILE:
        try:
            tree = parse_q(q)
        except BadRequestData:
            continue
        assert await pg_probe.matches(tree, HOSTILE_ENTITIES) == expected(tree, HOSTILE_ENTITIES), q
        assert await pg_probe.row_count() == len(HOSTILE_ENTITIES)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_user_text_never_reaches_the_sql_string(dialect: str) -> None:
    table = sa.table("t", sa.column("attrs", JsonDoc))
    tree = parse_q('name=="DROPVALUE";addr[DROPKEY]~="DROPRE";x.DROPSUB==1,2|DROPATTR')
    cond = q_to_sql(tree, table.c.attrs, dialect, expand)
    compiled = sa.select(table.c.attrs).where(cond).compile(
        dialect=sqlite_dialect.dialect() if dialect == "sqlite" else pg_dialect.asyncpg.dialect())
    sql = str(compiled)
    assert "DROP" not in sql and "example.org" not in sql and "$." not in sql and "'" not in sql
    params = " ".join(str(v) for v in compiled.params.values())
    for word in ("DROPVALUE", "DROPKEY", "DROPRE", "DROPSUB", "DROPATTR"):
        assert word in params


HOSTILE_IRIS = {
    "quote": 'https://example.org/a"); DROP TABLE t; --',
    "apostrophe": "https://example.org/a'b",
    "backslash": "https://example.org/a\\b",
    "dots": "https://example.org/a.b[0]$",
    "unicode": "https://example.org/é日本",
    "nul": "https://example.org/a\x00b",
}


def hostile_expand(name: str) -> str:
    return HOSTILE_IRIS.get(name, expand(name))


HOSTILE_IRI_ENTITY: dict[str, Any] = {
    iri: [{"type": "Property", "value": 1, HOSTILE_IRIS["apostrophe"]: {"type": "Property", "value": 2}}]
    for iri in HOSTILE_IRIS.values() if "\x00" not in iri
}


@pytest.mark.parametrize(("q", "result"), [
    ("quote", False),  # '"' cannot be addressed in a SQLite JSON path: never matches, anywhere
    ("quote==1", False),
    ("apostrophe==1", True),
    ("backslash==1", True),
    ("dots==1", True),
    ("unicode==1", True),
    ("nul", False),
    ("dots.apostrophe==2", True),
    ("backslash.apostrophe", True),
])
def test_hostile_expansions(q: str, result: bool, sqlite_probe: SqliteProbe) -> None:
    tree = parse_q(q)
    assert evaluate_q(tree, HOSTILE_IRI_ENTITY, hostile_expand) is result
    assert sqlite_probe.matches(tree, [HOSTILE_IRI_ENTITY], hostile_expand) == ({0} if result else set())
    assert sqlite_probe.row_count() == 1


async def test_hostile_expansions_postgres(pg_probe: PostgresProbe) -> None:
    for q in ["quote", "quote==1", "apostrophe==1", "backslash==1", "dots==1", "unicode==1", "nul",
              "dots.apostrophe==2", "backslash.apostrophe"]:
        tree = parse_q(q)
        want = expected(tree, [HOSTILE_IRI_ENTITY], hostile_expand)
        assert await pg_probe.matches(tree, [HOSTILE_IRI_ENTITY], hostile_expand) == want, q
    assert await pg_probe.row_count() == 1


def test_many_terms_run_on_sqlite(sqlite_probe: SqliteProbe) -> None:
    q = ";".join(f'name!="v{i}",{i},urn:x:{i}' for i in range(150)) + "|" + "|".join(
        f"temperature.observedAt~=x{i}" for i in range(106))
    tree = parse_q(q, max_length=10_000)
    assert sqlite_probe.matches(tree, [ENTITY, {}]) == expected(tree, [ENTITY, {}])


async def test_many_terms_run_on_postgres(pg_probe: PostgresProbe) -> None:
    q = ";".join(f'name!="v{i}",{i},urn:x:{i}' for i in range(150)) + "|" + "|".join(
        f"temperature.observedAt~=x{i}" for i in range(106))
    tree = parse_q(q, max_length=10_000)
    assert await pg_probe.matches(tree, [ENTITY, {}]) == expected(tree, [ENTITY, {}])


def test_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="dialect"):
        q_to_sql(parse_q("a"), sa.column("attrs"), "mysql", expand)
