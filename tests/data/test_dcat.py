"""The open catalogue as DCAT-AP 3: content negotiation (Turtle, JSON-LD, RDF/XML) and validation with
pyshacl against the official DCAT-AP 3.0.0 SHACL shapes (read in place from the shared data folder)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import rdflib.namespace as ns
from city import seed_city
from rdflib import Graph

SHAPES = Path("/work/shared/data/dcat-ap/shapes.ttl")
SHAPES_PRESENT = SHAPES.exists()


async def _catalogue(client: httpx.AsyncClient) -> None:
    await seed_city(client, hours=1, per_district=1, profiles=("air-quality", "smart-meter"))
    assert (await client.post("/api/data/harvest")).status_code == 200


async def test_content_negotiation(client: httpx.AsyncClient, anon_client: httpx.AsyncClient) -> None:
    await _catalogue(client)
    open_count = (await client.get("/api/3/action/package_search", params={"rows": 0})).json()["result"]["count"]
    for accept, fmt, media in (("text/turtle", "turtle", "text/turtle"),
                               ("application/ld+json", "json-ld", "application/ld+json"),
                               ("application/rdf+xml", "xml", "application/rdf+xml")):
        r = await anon_client.get("/catalog", headers={"Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"].startswith(media)
        graph = Graph().parse(data=r.content, format=fmt)
        assert len(list(graph.subjects(ns.RDF.type, ns.DCAT.Catalog))) == 1
        assert len(list(graph.subjects(ns.RDF.type, ns.DCAT.Dataset))) == open_count
    by_param = await anon_client.get("/catalog", params={"format": "jsonld"})
    assert by_param.headers["content-type"].startswith("application/ld+json")
    assert (await anon_client.get("/catalog", params={"format": "pdf"})).status_code == 400


async def test_zero_violations_of_the_dcat_ap_shapes(client: httpx.AsyncClient) -> None:
    if not SHAPES_PRESENT:
        pytest.skip(f"the DCAT-AP 3.0.0 SHACL shapes are not at {SHAPES} (shared data folder missing)")
    from pyshacl import validate

    await _catalogue(client)
    r = await client.get("/catalog", headers={"Accept": "text/turtle"})
    data = Graph().parse(data=r.content, format="turtle")
    shapes = Graph().parse(SHAPES, format="turtle")
    conforms, _report, text = validate(data, shacl_graph=shapes, inference="none", abort_on_first=False)
    assert conforms, text[:4000]
