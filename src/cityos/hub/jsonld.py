"""JSON-LD @context handling for the hub.

pyld processes @contexts exactly as JSON-LD 1.1 says. Running full expansion on every entity
would cost milliseconds each, so we let pyld build the active context once per distinct
@context and then expand and compact terms through it, caching every answer. Remote contexts
are fetched asynchronously before pyld sees them, so pyld never blocks on the network, and the
NGSI-LD core context is built in and never fetched. Fetches go through the outbound guard
(cityos.core.outbound) and only for authenticated callers; every cache here is bounded, and a
caller's inline @context is capped in size and depth and processed in a thread when big.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from cachetools import LRUCache
from pyld import jsonld
from pyld.context_resolver import ContextResolver as PyldContextResolver

from cityos.core import clock
from cityos.core.errors import BadRequestData, LdContextNotAvailable, ProblemError
from cityos.core.outbound import Outbound, OutboundError, log_failure

log = logging.getLogger("cityos.hub.jsonld")

CORE_CONTEXT_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
CORE_CONTEXT_URLS = frozenset(
    {
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
        *(f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.{minor}.jsonld" for minor in range(3, 10)),
    }
)
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
MAX_CONTEXT_URLS = 16
# A memo of term expansions per context: callers choose the terms (type=, attrs=, q=), so it is bounded
# (and simply started afresh when full: cheaper on the hot path than an LRU's bookkeeping).
MAX_MEMO_TERMS = 4096
# Contexts whose JSON is larger than this are processed in a worker thread, two at a time at most, so a
# big @context never stalls the event loop for other callers.
THREAD_CONTEXT_BYTES = 32 * 1024
HEAVY_AT_ONCE = 2
# Cache budgets are in bytes of memory; an entry's JSON size times this estimates it (measured: a 0.94 MB
# context holds ~3.8 MB once processed by pyld, plus the caller's document kept as its source).
MEMORY_FACTOR = 6


@dataclass(frozen=True)
class ContextLimits:
    max_bytes: int = 1024 * 1024
    max_depth: int = 16
    cache_entries: int = 256
    cache_bytes: int = 32 * 1024 * 1024

    def weigher(self) -> Callable[[Any], int]:
        """The cache's weight of an entry: its estimated memory, but at least an equal share of the budget, so
        one LRU bounds both the number of entries (≤ cache_entries) and their memory (≤ cache_bytes)."""
        floor = max(1, self.cache_bytes // max(1, self.cache_entries))
        return lambda entry: max(floor, int(getattr(entry, "size", 0)) * MEMORY_FACTOR)

    def fits(self, size: int) -> bool:
        return size * MEMORY_FACTOR <= self.cache_bytes


def _load_core_context() -> dict[str, Any]:
    text = resources.files("cityos.hub").joinpath("contexts/ngsi-ld-core-context.jsonld").read_text("utf-8")
    body: dict[str, Any] = json.loads(text)
    return body


CORE_CONTEXT_DOC: dict[str, Any] = _load_core_context()


def check_shape(value: Any, limits: ContextLimits, what: str) -> None:
    """Refuse a @context nested deeper than the limit (pyld recurses per level; deep ones cost CPU and stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limits.max_depth:
            raise BadRequestData(f"{what} is nested deeper than {limits.max_depth} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))


def digest_of(source: Any) -> str:
    return hashlib.sha256(orjson.dumps(source, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class ContextStoreFull(ProblemError):
    status, error_type, title = 507, "OperationNotSupported", "Insufficient storage"


@dataclass
class CachedContext:
    url: str
    body: Any
    kind: str  # "Cached" (fetched), "Hosted" (posted by a user) or "ImplicitlyCreated" (an inline @context)
    fetched_at: str
    uses: int = 0
    size: int = 0


class ContextStore:
    """The documents behind remote @context URLs: fetched once, cached, droppable by an operator.

    Fetched and implicitly created documents live in an LRU bounded in entries and bytes (callers,
    anonymous ones too, create them); hosted ones (POST /jsonldContexts, an authenticated write) stay
    until deleted. Only authenticated callers make the server fetch (`may_fetch`); every fetch goes
    through the outbound guard.
    """

    def __init__(self, fetch_timeout: float = 5.0, ttl_seconds: int = 3600, outbound: Outbound | None = None,
                 limits: ContextLimits | None = None) -> None:
        self.fetch_timeout = fetch_timeout
        self.ttl_seconds = ttl_seconds
        self.limits = limits or ContextLimits()
        self.outbound = outbound or Outbound()
        self.hosted: dict[str, CachedContext] = {}
        self.cached: LRUCache[str, CachedContext] = LRUCache(self.limits.cache_bytes, getsizeof=self.limits.weigher())
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def documents(self) -> dict[str, CachedContext]:
        return {**self.cached, **self.hosted}

    def get(self, url: str) -> CachedContext | None:
        return self.hosted.get(url) or self.cached.get(url)

    def put(self, url: str, body: Any, kind: str, size: int | None = None) -> CachedContext:
        if size is None:
            size = len(orjson.dumps(body))
        entry = CachedContext(url=url, body=body, kind=kind, fetched_at=clock.iso(clock.now()), size=size)
        if kind == "Hosted":
            self.cached.pop(url, None)
            self.hosted[url] = entry
        elif url not in self.hosted and self.limits.fits(size):  # a hosted document is never replaced here
            self.cached[url] = entry
        return entry

    def check_room(self, size: int) -> None:
        """Hosted documents are never evicted (their URLs are handed out), so their number and bytes are
        capped instead: a new one past either cap is refused until unused ones are deleted."""
        used = sum(entry.size for entry in self.hosted.values())
        if len(self.hosted) >= self.limits.cache_entries or not self.limits.fits(used + size):
            raise ContextStoreFull(f"the hosted @context store is full ({len(self.hosted)} documents of at most "
                                   f"{self.limits.cache_entries}, {used} bytes of JSON of at most "
                                   f"{self.limits.cache_bytes // MEMORY_FACTOR}); delete unused ones first")

    def drop(self, url: str) -> bool:
        return (self.hosted.pop(url, None) or self.cached.pop(url, None)) is not None

    def _fresh(self, entry: CachedContext) -> bool:
        if entry.kind in ("Hosted", "ImplicitlyCreated"):
            return True
        age = (clock.now() - clock.parse_iso(entry.fetched_at)).total_seconds()
        return age < self.ttl_seconds

    async def ensure(self, url: str, may_fetch: bool = True) -> Any:
        if url in CORE_CONTEXT_URLS:
            return CORE_CONTEXT_DOC
        entry = self.get(url)
        if entry is not None and self._fresh(entry):
            entry.uses += 1
            return entry.body
        if not may_fetch:
            # Anonymous callers never make the server connect anywhere (SSRF, and a free amplifier).
            raise LdContextNotAvailable(f"@context {url} is not available here; only built-in and already "
                                        "cached @contexts can be used without a token")
        lock = self._locks.setdefault(url, asyncio.Lock())
        try:
            async with lock:
                entry = self.get(url)
                if entry is not None and self._fresh(entry):
                    return entry.body
                body, size = await self._fetch(url)
                self.put(url, body, "Cached", size).uses = 1
                return body
        finally:
            if not lock.locked():
                self._locks.pop(url, None)

    async def _fetch(self, url: str) -> tuple[Any, int]:
        if not url.startswith(("http://", "https://")):
            raise BadRequestData(f"@context URL {url[:200]!r} is not an http(s) URL")
        # One text for every failure: which one it was (refused, refused connection, timeout, status,
        # not JSON) would let a caller map the network behind the server. The log has the cause.
        unavailable = LdContextNotAvailable(f"could not fetch @context {url[:200]}")
        try:
            response = await self.outbound.get(url, headers={"Accept": "application/ld+json, application/json"},
                                               timeout=self.fetch_timeout, max_bytes=self.limits.max_bytes)
        except OutboundError as exc:
            log_failure(f"@context {url[:200]}", exc)
            raise unavailable from exc
        if response.status != 200:
            log.warning("@context %s: HTTP %s", url[:200], response.status)
            raise unavailable
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            log.warning("@context %s: not JSON", url[:200])
            raise unavailable from exc
        if not isinstance(body, dict) or "@context" not in body:
            log.warning("@context %s: no @context member", url[:200])
            raise unavailable
        check_shape(body, self.limits, f"@context {url[:200]}")
        return body, len(response.content)


def _remote_urls(context: Any, found: list[str]) -> None:
    if isinstance(context, str):
        found.append(context)
    elif isinstance(context, list):
        for item in context:
            _remote_urls(item, found)
    elif isinstance(context, dict):
        imported = context.get("@import")
        if isinstance(imported, str):
            found.append(imported)


@dataclass
class ActiveContext:
    """A processed @context with memoised term expansion and compaction."""

    source: Any  # what the caller sent: None (core only), a URL, a list or an object
    pyld_context: dict[str, Any]
    digest: str | None = None  # of an inline source: names its implicitly created document
    size: int = 0  # bytes of JSON behind it (the source and the documents it fetched): its cache weight
    _expanded: dict[str, str] = field(default_factory=dict)
    _compacted: dict[str, str] = field(default_factory=dict)

    def expand(self, term: str) -> str:
        cached = self._expanded.get(term)
        if cached is not None:
            return cached
        iri = jsonld.JsonLdProcessor()._expand_iri(self.pyld_context, term, vocab=True)
        result = iri if isinstance(iri, str) and iri else term
        if len(self._expanded) >= MAX_MEMO_TERMS:
            self._expanded.clear()
        self._expanded[term] = result
        return result

    def compact(self, iri: str) -> str:
        cached = self._compacted.get(iri)
        if cached is not None:
            return cached
        term = jsonld.JsonLdProcessor()._compact_iri(self.pyld_context, iri, vocab=True)
        result = term if isinstance(term, str) and term else iri
        if len(self._compacted) >= MAX_MEMO_TERMS:
            self._compacted.clear()
        self._compacted[iri] = result
        return result

    @property
    def response_context(self) -> Any:
        """The @context to hand back: the caller's own, or the core context URL."""
        if self.source is None:
            return CORE_CONTEXT_URL
        return self.source

    @property
    def link_url(self) -> str:
        return self.source if isinstance(self.source, str) else CORE_CONTEXT_URL


class ContextResolver:
    """Turns the @context of a request into an ActiveContext, cheaply for repeated contexts.

    Processed contexts are kept in an LRU bounded in entries and bytes (ContextLimits), keyed by a
    digest (an inline @context can be megabytes: it must not be its own key). An inline @context
    past `max_bytes` or `max_depth` is refused before any processing; a large one is processed in a
    worker thread.
    """

    def __init__(self, store: ContextStore, max_cached: int | None = None) -> None:
        self.store = store
        self.limits = store.limits
        entries = max_cached or self.limits.cache_entries
        self._active: LRUCache[str, ActiveContext] = LRUCache(
            self.limits.cache_bytes, getsizeof=ContextLimits(cache_entries=entries,
                                                             cache_bytes=self.limits.cache_bytes).weigher())
        self._heavy = asyncio.Semaphore(HEAVY_AT_ONCE)
        self.core = self._process(None, {})

    def invalidate(self) -> None:
        self._active.clear()

    async def resolve(self, context: Any, may_fetch: bool = True) -> ActiveContext:
        """`may_fetch=False` (anonymous callers): remote @contexts must already be cached or built in."""
        if context is None or (isinstance(context, str) and context in CORE_CONTEXT_URLS):
            return self.core
        if isinstance(context, str):
            key, digest, size = context, None, len(context)
        else:
            dumped = orjson.dumps(context, option=orjson.OPT_SORT_KEYS)
            size = len(dumped)
            if size > self.limits.max_bytes:
                raise BadRequestData(f"the @context is larger than {self.limits.max_bytes} bytes")
            digest = hashlib.sha256(dumped).hexdigest()[:32]
            key = "inline:" + digest
        active = self._active.get(key)
        if active is not None:
            return active
        if not isinstance(context, str):
            check_shape(context, self.limits, "the @context")
        documents = await self._fetch_all(context, may_fetch)
        for url in documents:
            entry = self.store.get(url)
            size += entry.size if entry is not None else 0
        if size > THREAD_CONTEXT_BYTES:
            async with self._heavy:
                active = await asyncio.to_thread(self._process, context, documents)
        else:
            active = self._process(context, documents)
        active.digest, active.size = digest, size
        if self.limits.fits(size):
            self._active[key] = active
        return active

    async def _fetch_all(self, context: Any, may_fetch: bool) -> dict[str, Any]:
        pending: list[str] = []
        _remote_urls(context, pending)
        documents: dict[str, Any] = {}
        while pending:
            url = pending.pop()
            if url in documents:
                continue
            if len(documents) >= MAX_CONTEXT_URLS:
                raise BadRequestData(f"@context refers to more than {MAX_CONTEXT_URLS} remote documents")
            body = await self.store.ensure(url, may_fetch)
            documents[url] = body
            _remote_urls(body.get("@context") if isinstance(body, dict) else None, pending)
        return documents
    def _process(self, context: Any, documents: dict[str, Any]) -> ActiveContext:
        def loader(url: str, _options: dict[str, Any] | None = None) -> dict[str, Any]:
            if url in CORE_CONTEXT_URLS:
                return {"contextUrl": None, "documentUrl": url, "document": copy.deepcopy(CORE_CONTEXT_DOC)}
            if url in documents:
                return {"contextUrl": None, "documentUrl": url, "document": copy.deepcopy(documents[url])}
            raise LdContextNotAvailable(f"@context {url} is not available")

        user = context if isinstance(context, list) else ([] if context is None else [context])
        # The core context comes last so its protected terms can never be redefined by a user context.
        local = [*user, CORE_CONTEXT_DOC["@context"]]
        processor = jsonld.JsonLdProcessor()
        options = {"documentLoader": loader, "base": "",
                   "contextResolver": PyldContextResolver({}, loader)}
        try:
            initial = processor._get_initial_context(options)
            processed = processor.process_context(initial, local, options)
        except LdContextNotAvailable:
            raise
        except jsonld.JsonLdError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), LdContextNotAvailable) else None
            if cause is not None:
                raise cause from exc
            raise BadRequestData(f"invalid @context: {exc.message if hasattr(exc, 'message') else exc}") from exc
        except (TypeError, ValueError, KeyError, RecursionError) as exc:
            raise BadRequestData(f"invalid @context: {exc}") from exc
        return ActiveContext(source=context, pyld_context=processed)
