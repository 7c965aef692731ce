"""Bounded @context handling: body limits for anonymous callers, size and depth caps, a bounded cache,
big contexts processed off the event loop (finding 5 of the red-team pass)."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from cityos.hub.jsonld import MAX_MEMO_TERMS, ContextLimits, ContextResolver, ContextStore
from hub.helpers import JSON, LD, air

Q = "/ngsi-ld/v1/entityOperations/query"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"


def context_of(size: int, tag: str = "") -> dict[str, str]:
    """An inline @context of about `size` bytes of JSON (terms of ~60 bytes)."""
    return {f"term{tag}{n:07d}": f"https://example.org/vocab/{tag}term{n:07d}" for n in range(max(1, size // 60))}


def query(context: Any) -> dict[str, Any]:
    return {"type": "Query", "entities": [{"type": "AirQualityObserved"}], "@context": context}


@pytest.fixture
def small_cache(app: Any, monkeypatch: pytest.MonkeyPatch) -> ContextResolver:
    """The app's hub with a context cache of at most 8 entries and 256 KiB."""
    hub = app.state.hub
    store = ContextStore(outbound=hub.contexts.outbound,
                         limits=ContextLimits(max_bytes=200 * 1024, max_depth=16, cache_entries=8,
                                              cache_bytes=256 * 1024))
    resolver = ContextResolver(store)
    monkeypatch.setattr(hub, "contexts", store)
    monkeypatch.setattr(hub, "resolver", resolver)
    return resolver


async def test_anonymous_bodies_are_limited_to_the_smaller_size(client: httpx.AsyncClient,
                                                                 anon_client: httpx.AsyncClient) -> None:
    big = [air(n, description={"type": "Property", "value": "x" * 1000}) for n in range(1200)]  # ~1.4 MB
    r = await anon_client.post(Q, json=query(context_of(1_300_000)), headers=LD)
    assert r.status_code == 413, r.text
    problem = r.json()
    assert problem["status"] == 413 and problem["type"] == ERR + "BadRequestData"
    assert "1048576 bytes" in problem["detail"] and "without a token" in problem["detail"]
    r = await anon_client.post(UPSERT, json=big, headers=JSON)
    assert r.status_code == 413  # the size answers before the token check could (anonymous may not write)
    # Every API, not only the hub's; a chunked body (no Content-Length) is cut off as it streams.
    r = await anon_client.post("/open311/v2/requests.json", content=b"description=" + b"x" * 1_100_000,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and r.json()["status"] == 413

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 100_000

    r = await anon_client.post(Q, content=chunks(), headers=JSON)
    assert r.status_code == 413 and "without a token" in r.json()["detail"]
    # An authenticated caller gets the larger limit (2 MiB in the tests).
    r = await client.post(UPSERT, json=big, headers=JSON)
    assert r.status_code in (201, 204), r.text[:300]
    assert (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:001199")).status_code == 200


async def test_oversized_and_deep_contexts_are_refused_before_processing(client: httpx.AsyncClient,
                                                                          small_cache: ContextResolver) -> None:
    before = len(small_cache._active)
    r = await client.post(Q, json=query(context_of(300 * 1024)), headers=LD)
    assert r.status_code == 400 and "larger than 204800 bytes" in r.json()["detail"]
    deep: dict[str, Any] = {"@id": "https://example.org/deep"}
    for _ in range(40):
        deep = {"@id": "https://example.org/t", "@context": {"inner": deep}}
    r = await client.post(Q, json=query({"outer": deep}), headers=LD)
    assert r.status_code == 400 and "nested deeper than 16 levels" in r.json()["detail"]
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"outer": deep}}, headers=JSON)
    assert r.status_code == 400 and "nested deeper" in r.json()["detail"]
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": context_of(300 * 1024)}, headers=JSON)
    assert r.status_code == 400 and "larger than" in r.json()["detail"]
    assert len(small_cache._active) == before
    assert small_cache.store.documents == {}


async def test_the_context_cache_is_bounded_in_entries_and_bytes(anon_client: httpx.AsyncClient,
                                                                 small_cache: ContextResolver) -> None:
    for n in range(30):  # 30 distinct ~20 KB inline contexts, anonymously
        r = await anon_client.post(Q, json=query(context_of(20 * 1024, tag=f"c{n}_")), headers=LD)
        assert r.status_code == 200, r.text[:300]
    active = small_cache._active
    assert 1 < len(active) <= 8 and active.currsize <= 256 * 1024
    cached = small_cache.store.cached  # the documents hosted for the Link headers of those answers
    assert 1 < len(cached) <= 8 and cached.currsize <= 256 * 1024
    # The most recent one is still a cache hit: the same processed context is used again.
    last = context_of(20 * 1024, tag="c29_")
    assert await small_cache.resolve(last, may_fetch=False) is await small_cache.resolve(last, may_fetch=False)
    # A small context weighs at least an equal share, so the count stays bounded too.
    for n in range(30):
        await small_cache.resolve({f"t{n}": "https://example.org/t"}, may_fetch=False)
    assert len(active) <= 8


async def test_big_contexts_are_processed_off_the_event_loop(small_cache: ContextResolver,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[tuple[int, bool]] = []
    original = small_cache._process

    def spy(context: Any, documents: dict[str, Any]) -> Any:
        threads.append((len(str(context)), threading.current_thread() is threading.main_thread()))
        return original(context, documents)

    monkeypatch.setattr(small_cache, "_process", spy)
    await small_cache.resolve({"small": "https://example.org/small"}, may_fetch=False)
    await small_cache.resolve(context_of(100 * 1024, tag="big"), may_fetch=False)
    assert [on_loop for _size, on_loop in threads] == [True, False]


def test_term_memos_are_bounded(app: Any) -> None:
    core = app.state.hub.resolver.core
    for n in range(MAX_MEMO_TERMS + 500):
        core.expand(f"anonymousTerm{n}")
        core.compact(f"https://example.org/anonymous/{n}")
    assert len(core._expanded) <= MAX_MEMO_TERMS and len(core._compacted) <= MAX_MEMO_TERMS
    assert core.expand("location") == "https://uri.etsi.org/ngsi-ld/location"


async def test_hosted_contexts_are_capped(client: httpx.AsyncClient, small_cache: ContextResolver) -> None:
    """Hosted documents are never evicted (their URLs are handed out): past the cap a new one is refused."""
    urls = []
    for n in range(8):
        r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {f"t{n}": "https://example.org/t"}},
                              headers=JSON)
        assert r.status_code == 201, r.text
        urls.append(r.headers["Location"])
    again = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"t0": "https://example.org/t"}},
                              headers=JSON)
    assert again.status_code == 201 and again.headers["Location"] == urls[0]
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"t8": "https://example.org/t"}},
                          headers=JSON)
    assert r.status_code == 507 and "store is full" in r.json()["detail"] and r.json()["status"] == 507
    assert len(small_cache.store.hosted) == 8
    local_id = urls[3].rsplit("/", 1)[1]
    assert (await client.delete(f"/ngsi-ld/v1/jsonldContexts/{local_id}")).status_code == 204
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"t8": "https://example.org/t"}},
                          headers=JSON)
    assert r.status_code == 201
    # Bytes count too (as memory, about 6× the JSON): one document of 25 KB leaves no room for another.
    assert (await client.delete(f"/ngsi-ld/v1/jsonldContexts/{urls[4].rsplit('/', 1)[1]}")).status_code == 204
    assert (await client.delete(f"/ngsi-ld/v1/jsonldContexts/{urls[5].rsplit('/', 1)[1]}")).status_code == 204
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": context_of(25 * 1024, "a")}, headers=JSON)
    assert r.status_code == 201, r.text[:200]
    r = await client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": context_of(25 * 1024, "b")}, headers=JSON)
    assert r.status_code == 507
