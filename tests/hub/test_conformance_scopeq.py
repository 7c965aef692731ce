"""scopeQ, the Scope Query Language (ETSI GS CIM 009 v1.8.1 §4.19), in Query Entities (§5.7.2), the
temporal query (§5.7.4) and the purge (§5.6.21): `+` one level, `/#` a path and all below it, `;`
and, `,` or; an entity matches when one of its scopes does."""

from __future__ import annotations

import httpx
import pytest

from cityos.core.errors import BadRequestData
from cityos.hub.scopeq import Op, Term, matches, parse_scopeq, term_pattern
from hub.helpers import JSON

E = "/ngsi-ld/v1/entities"
T = "/ngsi-ld/v1/temporal/entities"
MADRID = "/Madrid/Gardens/ParqueNorte"
COMPANY = "/CompanyA/OrganizationB/UnitC"
ONE, MANY, NONE, DEEP = ("urn:ngsi-ld:Building:one", "urn:ngsi-ld:Building:many", "urn:ngsi-ld:Building:none",
                         "urn:ngsi-ld:Building:deep")


@pytest.mark.parametrize(("text", "scope", "expected"), [
    (MADRID, MADRID, True),
    (MADRID, "/Madrid/Gardens", False),
    (MADRID, MADRID + "/North", False),
    ("/Madrid/+/ParqueNorte", MADRID, True),
    ("/Madrid/+/ParqueNorte", "/Madrid/ParqueNorte", False),
    ("/Madrid/+", "/Madrid/Gardens/ParqueNorte", False),
    ("/CompanyA/#", "/CompanyA", True),
    ("/CompanyA/#", COMPANY, True),
    ("/CompanyA/#", "/CompanyAB", False),
    ("/#", "/x", True),
    ("/#", None, False),
    (MADRID + ";" + COMPANY, [MADRID, COMPANY], True),
    (MADRID + ";" + COMPANY, MADRID, False),
    (MADRID + "," + COMPANY, COMPANY, True),
    ("/a;/b,/c", "/c", True),  # ";" binds tighter than ","
    ("/a;(/b,/c)", "/c", False),
    ("/a;(/b,/c)", ["/a", "/c"], True),
    ("/Städte/北京/+", "/Städte/北京/朝阳", True),
    ("/a.b/c-d", "/aXb/c-d", False),  # punctuation is literal
])
def test_scopeq_semantics(text: str, scope: object, expected: bool) -> None:
    assert matches(parse_scopeq(text), scope) is expected


def test_parse_tree() -> None:
    assert parse_scopeq("/a/+/#") == Term(("a", "+"), True)
    assert parse_scopeq("/a;/b,/c") == Op("or", (Op("and", (Term(("a",), False), Term(("b",), False))),
                                                  Term(("c",), False)))


def test_patterns_are_anchored_and_escaped() -> None:
    assert term_pattern(Term(("a.b", "+"), True)) == r"^/a\.b/[^/]+(/.*)?$"
    assert term_pattern(Term((), True)) == "^(/.*)?$"


@pytest.mark.parametrize("bad", ["", " ", "Madrid", "/a//b", "/a/#/b", "/a#", "/a+/b", "(/a", "/a)", "/a;",
                                 ",/a", "/a;;/b", "()", "/a\x01", "/" + "(" * 40, ",".join(["/a"] * 100),
                                 "/" + "x" * 3000])
def test_invalid_scopeq(bad: str) -> None:
    with pytest.raises(BadRequestData):
        parse_scopeq(bad)


async def setup_entities(client: httpx.AsyncClient) -> None:
    for eid, scope in ((ONE, MADRID), (MANY, [MADRID, COMPANY]), (NONE, None), (DEEP, COMPANY + "/Room1")):
        name = {"type": "Property", "value": eid[-4:], "observedAt": "2024-01-01T00:00:00Z"}
        body: dict[str, object] = {"id": eid, "type": "Building", "name": name}
        if scope is not None:
            body["scope"] = scope
        r = await client.post(E, json=body, headers=JSON)
        assert r.status_code == 201, r.text


async def ids(client: httpx.AsyncClient, scope_q: str, path: str = E, **extra: str) -> set[str]:
    r = await client.get(path, params={"type": "Building", "scopeQ": scope_q, "count": "true", **extra})
    assert r.status_code == 200, r.text
    found = {e["id"] for e in r.json()}
    assert r.headers["NGSILD-Results-Count"] == str(len(found))
    return found


async def test_query_entities_by_scope(client: httpx.AsyncClient) -> None:
    await setup_entities(client)
    assert await ids(client, MADRID) == {ONE, MANY}
    assert await ids(client, "/Madrid/+/ParqueNorte") == {ONE, MANY}
    assert await ids(client, "/CompanyA/#") == {MANY, DEEP}
    assert await ids(client, "/CompanyA/+/+") == {MANY}
    assert await ids(client, "/#") == {ONE, MANY, DEEP}
    assert await ids(client, f"{MADRID};{COMPANY}") == {MANY}
    assert await ids(client, f"{MADRID},{COMPANY}") == {ONE, MANY}
    assert await ids(client, "/Nowhere") == set()
    # Paging counts only what matches.
    r = await client.get(E, params={"type": "Building", "scopeQ": "/#", "limit": "1", "count": "true"})
    assert r.headers["NGSILD-Results-Count"] == "3" and len(r.json()) == 1


async def test_temporal_query_by_scope(client: httpx.AsyncClient) -> None:
    await setup_entities(client)
    assert await ids(client, "/CompanyA/#", T) == {MANY, DEEP}


async def test_bad_scopeq_is_400(client: httpx.AsyncClient) -> None:
    await setup_entities(client)
    for bad in ("Madrid", "/a//b", "(/a"):
        r = await client.get(E, params={"type": "Building", "scopeQ": bad})
        assert r.status_code == 400, bad
        assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


async def test_purge_by_scope_deletes_only_matching_entities(client: httpx.AsyncClient) -> None:
    """A purge naming only scopeQ once deleted every entity (the filter was ignored)."""
    await setup_entities(client)
    r = await client.delete(E, params={"scopeQ": "/CompanyA/#"})
    assert r.status_code == 204, r.text
    left = await client.get(E, params={"type": "Building"})
    assert {e["id"] for e in left.json()} == {ONE, NONE}
