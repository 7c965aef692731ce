"""User @contexts fetched over real HTTP: timeout, cache, invalidation, 503 on failure."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from hub.helpers import JSON, link

E = "/ngsi-ld/v1/entities"


class ContextServer:
    def __init__(self) -> None:
        self.hits = 0
        self.body = {"@context": {"level": "https://example.org/v1/waterLevel"}}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if self.path == "/ctx.jsonld":
                    payload = json.dumps(server.body).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/ld+json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def context_server() -> Iterator[ContextServer]:
    server = ContextServer()
    yield server
    server.httpd.shutdown()


async def test_remote_context_is_fetched_once_and_cached(client: httpx.AsyncClient,
                                                         context_server: ContextServer) -> None:
    url = f"{context_server.url}/ctx.jsonld"
    body = {"id": "urn:ngsi-ld:River:7", "type": "River", "level": {"type": "Property", "value": 2.5}}
    assert (await client.post(E, json=body, headers=JSON | link(url))).status_code == 201
    for _ in range(3):
        r = await client.get(f"{E}/urn:ngsi-ld:River:7", headers=link(url))
        assert r.json()["level"]["value"] == 2.5
    assert context_server.hits == 1
    expanded = (await client.get(f"{E}/urn:ngsi-ld:River:7")).json()
    assert "https://example.org/v1/waterLevel" in expanded
    listed = (await client.get("/ngsi-ld/v1/jsonldContexts", params={"details": "true"})).json()
    entry = next(e for e in listed if e["URL"] == url)
    assert entry["kind"] == "Cached"
    # An operator drops it: the next use fetches again, and sees the new definition.
    context_server.body = {"@context": {"level": "https://example.org/v2/waterLevel"}}
    assert (await client.delete(f"/ngsi-ld/v1/jsonldContexts/{entry['localId']}")).status_code == 204
    r = await client.get(f"{E}/urn:ngsi-ld:River:7", headers=link(url))
    assert "level" not in r.json()
    assert context_server.hits == 2


async def test_unreachable_context_is_503(client: httpx.AsyncClient, context_server: ContextServer) -> None:
    body = {"id": "urn:ngsi-ld:River:8", "type": "River", "level": 1}
    r = await client.post(E, json=body, headers=JSON | link(f"{context_server.url}/missing.jsonld"))
    assert r.status_code == 503
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"
    r = await client.post(E, json=body, headers=JSON | link("http://127.0.0.1:9/nothing.jsonld"))
    assert r.status_code == 503
    assert (await client.get(f"{E}/urn:ngsi-ld:River:8")).status_code == 404


async def test_invalid_inline_context_is_400(client: httpx.AsyncClient) -> None:
    body = {"@context": [{"level": {"@id": 5}}], "id": "urn:ngsi-ld:River:9", "type": "River", "level": 1}
    r = await client.post(E, json=body, headers={"Content-Type": "application/ld+json"})
    assert r.status_code == 400
    r = await client.get(E, params={"type": "River"}, headers={"Link": "<>; rel=nothing"})
    assert r.status_code == 400


async def test_core_context_urls_are_never_fetched(client: httpx.AsyncClient) -> None:
    for version in ("", "-v1.6", "-v1.7", "-v1.8", "-v1.9"):
        url = f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context{version}.jsonld"
        r = await client.get(E, params={"type": "River"}, headers=link(url))
        assert r.status_code == 200, (version, r.text)
