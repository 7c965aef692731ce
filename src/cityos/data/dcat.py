"""The open catalogue as DCAT-AP 3 (rdflib): Turtle, JSON-LD or RDF/XML at `/catalog`.

Each open dataset is a `dcat:Dataset` with its distributions (the DataStore API and the downloads), its
publisher (the providing department, a `foaf:Agent`), its theme (a `skos:Concept`), keywords, update
frequency (the EU frequency vocabulary) and the GB/T 21063 share and open types as `adms` /
`dct:accessRights` statements.
"""

from __future__ import annotations

from typing import Any

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS, XSD

from cityos.core import clock
from cityos.data.models import OPEN_CONDITIONAL, OPEN_TYPES, SHARE_TYPES

FREQ = Namespace("http://publications.europa.eu/resource/authority/frequency/")
ACCESS = Namespace("http://publications.europa.eu/resource/authority/access-right/")
FILE_TYPE = Namespace("http://publications.europa.eu/resource/authority/file-type/")
IANA = Namespace("https://www.iana.org/assignments/media-types/")
FREQUENCIES = {"realtime": "UPDATE_CONT", "daily": "DAILY", "monthly": "MONTHLY", "yearly": "ANNUAL",
               "irregular": "IRREG"}
MEDIA = {"csv": ("CSV", "text/csv"), "json": ("JSON", "application/json"),
         "geojson": ("GEOJSON", "application/geo+json"), "parquet": ("PARQUET", "application/vnd.apache.parquet")}
FORMATS = {"turtle": "text/turtle", "json-ld": "application/ld+json", "xml": "application/rdf+xml"}


def catalogue_graph(base: str, items: list[dict[str, Any]]) -> Graph:
    g = Graph()
    g.bind("dcat", DCAT)
    g.bind("dct", DCTERMS)
    g.bind("foaf", FOAF)
    g.bind("skos", SKOS)
    catalog = URIRef(f"{base}/catalog")
    g.add((catalog, RDF.type, DCAT.Catalog))
    g.add((catalog, DCTERMS.title, Literal("城市开放数据目录", lang="zh")))
    g.add((catalog, DCTERMS.title, Literal("City open data catalogue", lang="en")))
    g.add((catalog, DCTERMS.description, Literal("CityOS 政务数据资源目录中的开放数据集。", lang="zh")))
    g.add((catalog, DCTERMS.description, Literal("The open datasets of the CityOS data resource catalogue.",
                                                 lang="en")))
    g.add((catalog, DCTERMS.publisher, _agent(g, base, "data-office")))
    g.add((catalog, FOAF.homepage, URIRef(f"{base}/opendata")))
    for ds in items:
        g.add((catalog, DCAT.dataset, _dataset(g, base, ds)))
    return g


def _agent(g: Graph, base: str, name: str) -> URIRef:
    agent = URIRef(f"{base}/catalog/organization/{name}")
    g.add((agent, RDF.type, FOAF.Agent))
    g.add((agent, FOAF.name, Literal(name)))
    return agent


def _theme(g: Graph, base: str, category: str) -> URIRef:
    concept = URIRef(f"{base}/catalog/theme/{category}")
    g.add((concept, RDF.type, SKOS.Concept))
    g.add((concept, SKOS.prefLabel, Literal(category)))
    return concept


def _dataset(g: Graph, base: str, ds: dict[str, Any]) -> URIRef:
    code = ds["id"]
    node = URIRef(f"{base}/catalog/dataset/{code}")
    g.add((node, RDF.type, DCAT.Dataset))
    g.add((node, DCTERMS.identifier, Literal(code)))
    g.add((node, DCTERMS.title, Literal(ds["title"], lang="zh")))
    g.add((node, DCTERMS.title, Literal(ds["title_en"], lang="en")))
    g.add((node, DCTERMS.description, Literal(ds["description"])))
    g.add((node, DCTERMS.publisher, _agent(g, base, ds["provider"])))
    g.add((node, DCAT.theme, _theme(g, base, ds["category"])))
    for tag in ds["tags"]:
        g.add((node, DCAT.keyword, Literal(tag)))
    g.add((node, DCTERMS.issued, Literal(clock.iso(clock.as_utc(ds["created_at"])), datatype=XSD.dateTime)))
    g.add((node, DCTERMS.modified, Literal(clock.iso(clock.as_utc(ds["modified_at"])), datatype=XSD.dateTime)))
    freq = FREQ[FREQUENCIES.get(ds["update_cycle"], "IRREG")]
    g.add((freq, RDF.type, DCTERMS.Frequency))
    g.add((node, DCTERMS.accrualPeriodicity, freq))
    rights = ACCESS["RESTRICTED" if ds["open_type"] == OPEN_CONDITIONAL else "PUBLIC"]
    g.add((rights, RDF.type, DCTERMS.RightsStatement))
    g.add((node, DCTERMS.accessRights, rights))
    g.add((node, DCAT.landingPage, _document(g, f"{base}/opendata/dataset/{code}")))
    g.add((node, SKOS.note, Literal(f"共享类型 share type: {SHARE_TYPES.get(ds['share_type'], '')}; "
                                    f"开放类型 open type: {OPEN_TYPES.get(ds['open_type'], '')}")))
    api = BNode()
    g.add((api, RDF.type, DCAT.Distribution))
    g.add((api, DCAT.accessURL, URIRef(f"{base}/api/3/action/datastore_search?resource_id={code}")))
    g.add((api, DCTERMS.title, Literal("CKAN DataStore API")))
    _format(g, api, "json")
    g.add((node, DCAT.distribution, api))
    for fmt in ("csv", "json", "parquet", *(["geojson"] if ds["geo"] else [])):
        dist = BNode()
        url = URIRef(f"{base}/opendata/download/{code}.{fmt}")
        g.add((dist, RDF.type, DCAT.Distribution))
        g.add((dist, DCAT.accessURL, url))
        g.add((dist, DCAT.downloadURL, url))
        _format(g, dist, fmt)
        g.add((node, DCAT.distribution, dist))
    return node


def _document(g: Graph, url: str) -> URIRef:
    page = URIRef(url)
    g.add((page, RDF.type, FOAF.Document))
    return page


def _format(g: Graph, dist: BNode, fmt: str) -> None:
    name, media = MEDIA[fmt]
    file_type = FILE_TYPE[name]
    g.add((file_type, RDF.type, DCTERMS.MediaTypeOrExtent))
    g.add((dist, DCTERMS.format, file_type))
    media_type = IANA[media]
    g.add((media_type, RDF.type, DCTERMS.MediaType))
    g.add((dist, DCAT.mediaType, media_type))


def negotiate(accept: str, fmt: str | None) -> str:
    """The rdflib format for `?format=` or the Accept header; Turtle by default."""
    if fmt:
        aliases = {"ttl": "turtle", "turtle": "turtle", "jsonld": "json-ld", "json-ld": "json-ld",
                   "rdf": "xml", "xml": "xml", "rdfxml": "xml"}
        if fmt not in aliases:
            raise ValueError("format is one of ttl, jsonld, rdf")
        return aliases[fmt]
    accept = accept.lower()
    if "application/ld+json" in accept or "application/json" in accept:
        return "json-ld"
    if "application/rdf+xml" in accept:
        return "xml"
    return "turtle"
