"""JSON-LD @context handling for the hub.

pyld processes @contexts exactly as JSON-LD 1.1 says. Running full expansion on every entity
would cost milliseconds each, so we let pyld build the active context once per distinct
@context and then expand and compact terms through it, caching every answer. Remote contexts
are fetched asynchronously before pyld sees them, so pyld never blocks on the network, and the
NGSI-LD core context is built in and never fetched.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx
import orjson
from pyld import jsonld
from pyld.context_resolver import ContextResolver as PyldContextResolver

from cityos.core import clock
from cityos.core.errors import BadRequestData, LdContextNotAvailable

CORE_CONTEXT_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
CORE_CONTEXT_URLS = frozenset(
    {
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
        *(f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.{minor}.jsonld" for minor in range(3, 10)),
    }
)
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
MAX_CONTEXT_BYTES = 1024 * 1024
MAX_CONTEXT_URLS = 16


def _load_core_context() -> dict[str, Any]:
    text = resources.files("cityos.hub").joinpath("contexts/ngsi-ld-core-context.jsonld").read_text("utf-8")
    body: dict[str, Any] = json.loads(text)
    return body


CORE_CONTEXT_DOC: dict[str, Any] = _load_core_context()


@dataclass
class CachedContext:
    url: str
    body: Any
    kind: str  # "Cached" (fetched) or "Hosted" (posted by an operator)
    fetched_at: str
    uses: int = 0


class ContextStore:
    """The documents behind remote @context URLs: fetched once, cached, droppable by an operator."""

    def __init__(self, fetch_timeout: float = 5.0, ttl_seconds: int = 3600) -> None:
        self.fetch_timeout = fetch_timeout
        self.ttl_seconds = ttl_seconds
        self.documents: dict[str, CachedContext] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, url: str) -> CachedContext | None:
        return self.documents.get(url)

    def put(self, url: str, body: Any, kind: str) -> CachedContext:
        entry = CachedContext(url=url, body=body, kind=kind, fetched_at=clock.iso(clock.now()))
        self.documents[url] = entry
        return entry

    def drop(self, url: str) -> bool:
        return self.documents.pop(url, None) is not None

    def _fresh(self, entry: CachedContext) -> bool:
        if entry.kind in ("Hosted", "ImplicitlyCreated"):
            return True
        age = (clock.now() - clock.parse_iso(entry.fetched_at)).total_seconds()
        return age < self.ttl_seconds

    async def ensure(self, url: str) -> Any:
        if url in CORE_CONTEXT_URLS:
            return CORE_CONTEXT_DOC
        entry = self.documents.get(url)
        if entry is not None and self._fresh(entry):
            entry.uses += 1
            return entry.body
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            entry = self.documents.get(url)
            if entry is not None and self._fresh(entry):
                return entry.body
            body = await self._fetch(url)
            self.put(url, body, "Cached").uses = 1
            return body

    async def _fetch(self, url: str) -> Any:
        if not url.startswith(("http://", "https://")):
            raise BadRequestData(f"@context URL {url!r} is not an http(s) URL")
        try:
            async with httpx.AsyncClient(timeout=self.fetch_timeout, follow_redirects=True) as client:
                response = await client.get(url, headers={"Accept": "application/ld+json, application/json"})
        except httpx.HTTPError as exc:
            raise LdContextNotAvailable(f"could not fetch @context {url}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise LdContextNotAvailable(f"could not fetch @context {url}: HTTP {response.status_code}")
        if len(response.content) > MAX_CONTEXT_BYTES:
            raise LdContextNotAvailable(f"@context {url} is larger than {MAX_CONTEXT_BYTES} bytes")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise LdContextNotAvailable(f"@context {url} is not JSON") from exc
        if not isinstance(body, dict) or "@context" not in body:
            raise LdContextNotAvailable(f"@context {url} has no @context member")
        return body


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
    _expanded: dict[str, str] = field(default_factory=dict)
    _compacted: dict[str, str] = field(default_factory=dict)

    def expand(self, term: str) -> str:
        cached = self._expanded.get(term)
        if cached is not None:
            return cached
        iri = jsonld.JsonLdProcessor()._expand_iri(self.pyld_context, term, vocab=True)
        result = iri if isinstance(iri, str) and iri else term
        self._expanded[term] = result
        return result

    def compact(self, iri: str) -> str:
        cached = self._compacted.get(iri)
        if cached is not None:
            return cached
        term = jsonld.JsonLdProcessor()._compact_iri(self.pyld_context, iri, vocab=True)
        result = term if isinstance(term, str) and term else iri
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
    """Turns the @context of a request into an ActiveContext, cheaply for repeated contexts."""

    def __init__(self, store: ContextStore, max_cached: int = 512) -> None:
        self.store = store
        self.max_cached = max_cached
        self._active: OrderedDict[str, ActiveContext] = OrderedDict()
        self.core = self._process(None, {})

    def invalidate(self) -> None:
        self._active.clear()

    async def resolve(self, context: Any) -> ActiveContext:
        if context is None or (isinstance(context, str) and context in CORE_CONTEXT_URLS):
            return self.core
        key = context if isinstance(context, str) else orjson.dumps(context, option=orjson.OPT_SORT_KEYS).decode()
        active = self._active.get(key)
        if active is not None:
            self._active.move_to_end(key)
            return active
        documents = await self._fetch_all(context)
        active = self._process(context, documents)
        self._active[key] = active
        if len(self._active) > self.max_cached:
            self._active.popitem(last=False)
        return active

    async def _fetch_all(self, context: Any) -> dict[str, Any]:
        pending: list[str] = []
        _remote_urls(context, pending)
        documents: dict[str, Any] = {}
        while pending:
            url = pending.pop()
            if url in documents:
                continue
            if len(documents) >= MAX_CONTEXT_URLS:
                raise BadRequestData(f"@context refers to more than {MAX_CONTEXT_URLS} remote documents")
            body = await self.store.ensure(url)
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
