"""The one way out: every server-side fetch of a caller-named URL goes through `Outbound`.

Callers name URLs in @contexts (Link headers, bodies), subscription endpoints and webhooks; without a
guard they make the server reach its own loopback, the cloud metadata service or the private network
(SSRF). The guard:

- resolves the name itself (`getaddrinfo`, so every spelling the OS accepts — `2130706433`,
  `0x7f000001`, `127.1`, `0177.0.0.1`, `::ffff:127.0.0.1`, `[::1]`, `0` — is judged as the address
  it really is) and refuses, unless allow-listed, any address that is not globally routable:
  loopback, private, link-local, multicast, reserved, unspecified, shared (100.64/10), and IPv6
  forms that embed such an IPv4 address (mapped, 6to4, Teredo, NAT64);
- connects to the address it checked (the URL is rewritten to the IP, with the original Host header
  and TLS server name, and the certificate verified against the name), so a DNS answer that changes
  between check and connect changes nothing;
- follows redirects itself (GET only, bounded), checking every hop again;
- bounds the time of the whole exchange and the size of the answer;
- ignores proxy environment variables (a proxy would connect on our behalf, unchecked).

`CITYOS_OUTBOUND_ALLOW` lists what may be reached anyway (comma-separated):
  `10.0.0.0/8` or `127.0.0.1` (any port), `10.1.2.3:8080`, `[::1]:8080`, `[fd00::/8]:443` (IPv6 with a
  port in brackets), `idp.internal` or `idp.internal:8443` (a name trusted whatever it resolves to).

Errors carry a `reason` for the server log only; callers show a generic text (the socket-level cause
would turn error messages into a port scanner).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("cityos.outbound")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443, "mqtt": 1883, "mqtts": 8883}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class OutboundError(Exception):
    """A fetch failed. `reason` is for the server log; never hand it to a caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboundRefused(OutboundError):
    """The target is not allowed by the outbound policy. `reason` names the rule (safe for the URL's author)."""


class OutboundTooLarge(OutboundError):
    pass


@dataclass(frozen=True)
class AllowRule:
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def admits_host(self, host: str, port: int) -> bool:
        return self.host is not None and self.host == host and self.port in (None, port)

    def admits_address(self, ip: IPAddress, port: int) -> bool:
        return self.network is not None and ip in self.network and self.port in (None, port)


def _parse_entry(entry: str) -> AllowRule:
    text, port = entry, None
    if text.startswith("["):  # [v6], [v6]:port, [v6/len]:port
        inner, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdecimal():
                raise ValueError(f"CITYOS_OUTBOUND_ALLOW: bad entry {entry!r}")
            port = int(rest[1:])
        text = inner
    elif text.count(":") == 1:  # v4:port, v4/len:port, name:port (more colons: a bare IPv6 address)
        text, _, raw_port = text.partition(":")
        if not raw_port.isdecimal():
            raise ValueError(f"CITYOS_OUTBOUND_ALLOW: bad port in {entry!r}")
        port = int(raw_port)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"CITYOS_OUTBOUND_ALLOW: port out of range in {entry!r}")
    try:
        return AllowRule(network=ipaddress.ip_network(text, strict=False), port=port)
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    if not name or any(c in name for c in "/ @?#") or not all(part for part in name.split(".")):
        raise ValueError(f"CITYOS_OUTBOUND_ALLOW: {entry!r} is neither an address, a network nor a host name")
    return AllowRule(host=name, port=port)


def parse_allow_list(text: str | Iterable[str]) -> tuple[AllowRule, ...]:
    entries = text.split(",") if isinstance(text, str) else list(text)
    return tuple(_parse_entry(e.strip()) for e in entries if e.strip())


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and may be delivered to (mapped, 6to4, Teredo, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_class(ip: IPAddress) -> str | None:
    """Why `ip` may not be reached without an allow-list entry, or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            found = address_class(inner)
            if found is not None:
                return f"{found} (inside the IPv6 address {ip})"
    # Order matters only for the wording: the first matching class is named.
    for name, hit in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                      ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                      ("private", ip.is_private), ("reserved", ip.is_reserved),
                      ("not globally routable", not ip.is_global)):
        if hit:
            return name
    return None


def _host_key(host: str) -> str:
    return host.lower().rstrip(".").strip("[]")


@dataclass
class Response:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str


@dataclass
class Outbound:
    """The outbound policy and its HTTP client. One per app (`app.state.outbound`)."""

    allow: tuple[AllowRule, ...] = ()
    timeout: float = 10.0
    max_bytes: int = 1024 * 1024
    max_redirects: int = 5
    # TLS trust: None means the system's defaults, honouring SSL_CERT_FILE / SSL_CERT_DIR (a private CA).
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    _resolver: Any = field(default=None, repr=False)  # tests may swap in a fake resolver

    def tls_context(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = httpx.create_ssl_context(trust_env=True)
        return self.tls

    @classmethod
    def from_settings(cls, allow: str, timeout: float = 10.0, max_bytes: int = 1024 * 1024,
                      max_redirects: int = 5) -> Outbound:
        return cls(parse_allow_list(allow), timeout, max_bytes, max_redirects)

    # ------------------------------------------------------------------ the address policy

    def _rule_for_host(self, host: str, port: int) -> bool:
        return any(rule.admits_host(host, port) for rule in self.allow)

    def judge(self, ip: IPAddress, port: int) -> str | None:
        """None when `ip:port` may be reached, else the rule that refuses it."""
        if any(rule.admits_address(ip, port) for rule in self.allow):
            return None
        found = address_class(ip)
        return None if found is None else f"{ip} is a {found} address"

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        if self._resolver is not None:
            answer: list[IPAddress] = await self._resolver(host, port)
            return answer
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise OutboundError(f"{host}: name resolution failed: {exc}") from exc
        found: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in found:
                found.append(ip)
        if not found:
            raise OutboundError(f"{host}: no address")
        return found

    async def admit(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to for host:port, all of them checked; OutboundRefused if any is refused.

        A name that resolves to a public and a private address is refused as a whole: which one a
        connection would use is up to chance, and rebinding attacks rely on exactly that.
        """
        key = _host_key(host)
        if not key:
            raise OutboundRefused("the URL has no host")
        addresses = await self._resolve(key, port)
        if self._rule_for_host(key, port):
            return addresses
        for ip in addresses:
            refused = self.judge(ip, port)
            if refused is not None:
                raise OutboundRefused(f"{host} is not allowed: {refused}; outbound connections go only to public "
                                      f"addresses unless CITYOS_OUTBOUND_ALLOW lists the target")
        return addresses

    async def check_url(self, url: str, *, schemes: Iterable[str] = ("http", "https"),
                        unresolved_ok: bool = False) -> None:
        """Refuse (OutboundRefused) a URL whose host is not allowed. With `unresolved_ok`, a name that does
        not resolve now passes (it is checked again when used): a subscription may name a host not yet up."""
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            raise OutboundRefused(f"only {', '.join(schemes)} URLs may be fetched")
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError as exc:
            raise OutboundRefused("the URL has an invalid port") from exc
        try:
            async with asyncio.timeout(self.timeout):  # a resolver that hangs must not hold the caller
                await self.admit(parts.hostname or "", port)
        except OutboundRefused:
            raise
        except (OutboundError, TimeoutError) as exc:
            if not unresolved_ok:
                raise exc if isinstance(exc, OutboundError) else OutboundError("name resolution timed out") from exc

    # ------------------------------------------------------------------ HTTP

    def client(self, *, timeout: float | None = None, connections: int = 4) -> OutboundClient:
        """A client with its own connection pool, for one endpoint (notifications) or one fetch."""
        return OutboundClient(self, timeout or self.timeout, connections)

    async def get(self, url: str, *, headers: dict[str, str] | None = None,
                  timeout: float | None = None,  # noqa: ASYNC109 - one budget for all hops, applied inside
                  max_bytes: int | None = None) -> Response:
        """GET with redirects followed by hand (each hop checked), bounded in time and size as a whole."""
        limit = max_bytes or self.max_bytes
        budget = timeout or self.timeout
        try:
            async with asyncio.timeout(budget):
                for _hop in range(self.max_redirects + 1):
                    # A fresh pool per hop: a kept connection must never carry a request for another name.
                    async with self.client(timeout=budget, connections=1) as http:
                        answer = await http.request("GET", url, headers=headers, max_bytes=limit)
                    location = answer.headers.get("location")
                    if answer.status not in REDIRECTS or not location:
                        return answer
                    url = str(httpx.URL(url).join(location))
                raise OutboundError(f"more than {self.max_redirects} redirects")
        except TimeoutError as exc:
            raise OutboundError(f"no complete answer within {budget} s") from exc


class OutboundClient:
    """An httpx client that connects only to checked addresses. No redirects, no proxies from the environment."""

    def __init__(self, outbound: Outbound, timeout: float, connections: int) -> None:
        self.outbound = outbound
        self.timeout = timeout
        # trust_env=False: proxy variables are ignored (the TLS context above still honours SSL_CERT_FILE).
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                      verify=outbound.tls_context(),
                                      limits=httpx.Limits(max_connections=connections,
                                                          max_keepalive_connections=connections))

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, url: str, *, content: bytes | None = None,
                      headers: dict[str, str] | None = None, max_bytes: int | None = None,
                      truncate: bool = False) -> Response:
        """One request, no redirects; the whole exchange (resolution, connection, answer) within the timeout.

        An answer past `max_bytes` is an error, or with `truncate` cut there (when only the status matters).
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(method, url, content, headers, max_bytes or self.outbound.max_bytes,
                                           truncate)
        except TimeoutError as exc:
            raise OutboundError(f"{method} {url}: no complete answer within {self.timeout} s") from exc

    async def _request(self, method: str, url: str, content: bytes | None, headers: dict[str, str] | None,
                       limit: int, truncate: bool) -> Response:
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise OutboundRefused("the URL is not valid") from exc
        if target.scheme not in ("http", "https"):
            raise OutboundRefused("only http and https URLs may be fetched")
        port = target.port or DEFAULT_PORTS[target.scheme]
        addresses = await self.outbound.admit(target.host, port)
        sent = dict(headers or {})
        sent["Host"] = target.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        last: Exception | None = None
        for ip in addresses:
            request = self.http.build_request(method, target.copy_with(host=str(ip)), content=content,
                                              headers=sent, extensions=extensions)
            try:
                response = await self.http.send(request, stream=True)
            except httpx.ConnectError as exc:
                last = exc  # the next address of the name, if any
                continue
            except httpx.HTTPError as exc:
                raise OutboundError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
            try:
                return await _read_bounded(response, limit, url, truncate)
            except httpx.HTTPError as exc:
                raise OutboundError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
            finally:
                await response.aclose()
        raise OutboundError(f"{method} {url}: cannot connect: {last}")


async def _read_bounded(response: httpx.Response, limit: int, url: str, truncate: bool) -> Response:
    declared = response.headers.get("content-length")
    if not truncate and declared and declared.isdecimal() and int(declared) > limit:
        raise OutboundTooLarge(f"{url}: answer of {declared} bytes, more than {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[:limit - size])
                break  # the rest is never read; closing the response drops the connection
            raise OutboundTooLarge(f"{url}: answer larger than {limit} bytes")
        chunks.append(chunk)
    return Response(response.status_code, response.headers, b"".join(chunks), url)


def log_failure(what: str, exc: OutboundError) -> None:
    """The socket-level cause goes to the server log, never to the caller."""
    log.warning("%s: %s", what, exc.reason)
