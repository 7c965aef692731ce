"""The outbound guard (cityos.core.outbound) and every path that fetches a caller-named URL.

Real HTTP servers on loopback stand for "internal services"; the test app allow-lists loopback
(tests/conftest.py), so tests of the default policy empty the app's allow-list for their duration.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from cityos.core.outbound import (
    Outbound,
    OutboundError,
    OutboundRefused,
    OutboundTooLarge,
    address_class,
    parse_allow_list,
)
from cityos.hub.subscriptions.delivery import REFUSED, UNREACHABLE
from hub.helpers import JSON, air, link
from hub.subscriptions.notify_helpers import (  # noqa: F401 - fixtures are used by name
    Receiver,
    S,
    closed_port,
    fast_notify_fixture,
    receiver_fixture,
    subscription,
)

E = "/ngsi-ld/v1/entities"
ERR = "https://uri.etsi.org/ngsi-ld/errors/"
CTX = {"@context": {"level": "https://example.org/v1/waterLevel"}}


class Internal:
    """An "internal service" on 127.0.0.1: answers GET /ctx.jsonld with a context, /redirect?to=… with a 302,
    /big with 2 MB, /slow after 5 s; records every request (path, Host header)."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                me.hits.append((self.path, self.headers.get("Host", "")))
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/missing":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/slow":
                    time.sleep(5)
                payload = b"x" * (2 * 1024 * 1024) if self.path == "/big" else orjson.dumps(CTX)
                self.send_response(200)
                self.send_header("Content-Type", "application/ld+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                # A receiver reads the notification before it answers: closing with the request unread
                # resets the connection (the client then sees a read error, not the answer).
                self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                self.do_GET()

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def internal() -> Iterator[Internal]:
    server = Internal()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
async def strict(app: Any) -> AsyncIterator[Outbound]:
    """The app with the default (empty) allow-list."""
    outbound: Outbound = app.state.outbound
    saved = outbound.allow
    outbound.allow = ()
    yield outbound
    outbound.allow = saved


# ------------------------------------------------------------------ the address policy


REFUSED_HOSTS = [
    "127.0.0.1", "0x7f000001", "2130706433", "127.1", "0177.0.0.1", "017700000001", "localhost",
    "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0", "0", "[::]",
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "240.0.0.1",
    "255.255.255.255", "[fe80::1]", "[fc00::1]", "[ff02::1]", "[2002:7f00:1::]", "[64:ff9b::7f00:1]",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_every_spelling_of_a_non_public_address_is_refused(host: str) -> None:
    with pytest.raises(OutboundRefused) as caught:
        await Outbound().check_url(f"http://{host}:8080/ctx.jsonld")
    assert "CITYOS_OUTBOUND_ALLOW" in caught.value.reason


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None


async def test_public_literal_passes_the_check() -> None:
    await Outbound().check_url("https://8.8.8.8/ctx.jsonld")
    await Outbound().check_url("http://[2606:4700:4700::1111]:8080/x")


async def test_only_http_schemes_and_hosts() -> None:
    for url in ("file:///etc/passwd", "gopher://8.8.8.8/", "ftp://8.8.8.8/x", "http:///nohost", "http://8.8.8.8:0x50/"):
        with pytest.raises(OutboundRefused):
            await Outbound().check_url(url)


def test_allow_list_entries() -> None:
    rules = parse_allow_list(" 10.0.0.0/8, 192.168.1.5:8080 ,[::1]:9000,[fd00::/8], idp.internal:8443, Ctx.Example. ,")
    guard = Outbound(rules)
    assert guard.judge(ipaddress.ip_address("10.9.9.9"), 1) is None
    assert guard.judge(ipaddress.ip_address("192.168.1.5"), 8080) is None
    assert "private" in (guard.judge(ipaddress.ip_address("192.168.1.5"), 80) or "")
    assert guard.judge(ipaddress.ip_address("::1"), 9000) is None
    assert "loopback" in (guard.judge(ipaddress.ip_address("::1"), 9001) or "")
    assert guard.judge(ipaddress.ip_address("fd12::1"), 443) is None
    assert "loopback" in (guard.judge(ipaddress.ip_address("127.0.0.1"), 80) or "")
    assert [r.host for r in rules if r.host] == ["idp.internal", "ctx.example"]
    for bad in ("10.0.0.0/33", "host:port", "[::1]:x", "a b", "http://x/", "1.2.3.4:70000", "a..b"):
        with pytest.raises(ValueError, match="CITYOS_OUTBOUND_ALLOW"):
            parse_allow_list(bad)


async def test_a_name_on_the_allow_list_is_reached_whatever_it_resolves_to(internal: Internal) -> None:
    guard = Outbound(parse_allow_list(f"localhost:{internal.port}"))
    answer = await guard.get(f"http://localhost:{internal.port}/ctx.jsonld")
    assert answer.status == 200 and orjson.loads(answer.content) == CTX
    with pytest.raises(OutboundRefused):  # another port of the same name is not on the list
        await guard.get(f"http://localhost:{closed_port()}/ctx.jsonld")


async def test_the_connection_goes_to_the_checked_address(internal: Internal) -> None:
    """DNS rebinding: the name is resolved once, by the guard; the connection uses that answer.

    `svc.invalid` exists in no DNS: were the HTTP client to resolve it again itself, the request would fail.
    """
    answers = []

    async def resolver(host: str, port: int) -> list[Any]:
        answers.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    guard = Outbound(parse_allow_list("127.0.0.1/32"), _resolver=resolver)
    answer = await guard.get(f"http://svc.invalid:{internal.port}/ctx.jsonld")
    assert answer.status == 200 and answers == ["svc.invalid"]
    assert internal.hits == [("/ctx.jsonld", f"svc.invalid:{internal.port}")]  # the name kept in Host
    # The same name answering with a private address is refused before any connection.
    strict = Outbound((), _resolver=resolver)
    with pytest.raises(OutboundRefused):
        await strict.get(f"http://svc.invalid:{internal.port}/ctx.jsonld")
    assert len(internal.hits) == 1


async def test_a_name_with_one_private_address_is_refused_whole() -> None:
    async def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]

    with pytest.raises(OutboundRefused, match=r"10\.0\.0\.1"):
        await Outbound((), _resolver=resolver).check_url("http://mixed.invalid/")


async def test_every_redirect_hop_is_checked(internal: Internal) -> None:
    other = Internal()
    try:
        guard = Outbound(parse_allow_list(f"127.0.0.1:{internal.port}"))
        for target in (f"{other.url}/ctx.jsonld", f"http://0x7f000001:{other.port}/ctx.jsonld",
                       f"http://[::ffff:127.0.0.1]:{other.port}/ctx.jsonld", "http://169.254.169.254/latest/"):
            with pytest.raises(OutboundRefused):
                await guard.get(f"{internal.url}/redirect?to={target}")
        assert other.hits == []
        # Allowed hops are followed, up to the bound.
        both = Outbound(parse_allow_list(f"127.0.0.1:{internal.port},127.0.0.1:{other.port}"), max_redirects=2)
        answer = await both.get(f"{internal.url}/redirect?to={other.url}/ctx.jsonld")
        assert answer.status == 200 and other.hits == [("/ctx.jsonld", f"127.0.0.1:{other.port}")]
        loop = f"{internal.url}/redirect?to=/redirect?to=/redirect?to=/ctx.jsonld"
        with pytest.raises(OutboundError, match="redirects"):
            await both.get(loop)
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()


async def test_answers_are_bounded_in_size_and_time(internal: Internal) -> None:
    guard = Outbound(parse_allow_list("127.0.0.1/32"), timeout=1.0, max_bytes=1024 * 1024)
    with pytest.raises(OutboundTooLarge):
        await guard.get(f"{internal.url}/big")
    started = time.monotonic()
    with pytest.raises(OutboundError, match="within"):
        await guard.get(f"{internal.url}/slow")
    assert time.monotonic() - started < 4  # the budget, not the server's 5 s
    async with guard.client(timeout=1.0) as http:
        with pytest.raises(OutboundError):
            await http.request("POST", f"{internal.url}/slow", content=b"{}")


async def test_proxy_settings_of_the_environment_are_ignored(internal: Internal,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would connect on our behalf to whatever the URL names, unchecked."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{closed_port()}")
    answer = await Outbound(parse_allow_list("127.0.0.1/32")).get(f"{internal.url}/ctx.jsonld")
    assert answer.status == 200


# ------------------------------------------------------------------ @contexts


async def test_context_links_to_internal_addresses_are_never_fetched(client: httpx.AsyncClient, strict: Outbound,
                                                                     internal: Internal) -> None:
    urls = [f"{internal.url}/ctx.jsonld", f"http://0x7f000001:{internal.port}/ctx.jsonld",
            f"http://2130706433:{internal.port}/ctx.jsonld", f"http://127.1:{internal.port}/ctx.jsonld",
            f"http://[::ffff:127.0.0.1]:{internal.port}/ctx.jsonld", f"http://localhost:{internal.port}/ctx.jsonld"]
    for url in urls:
        r = await client.post(E, json=air(1), headers=JSON | link(url))
        assert r.status_code == 503, r.text
        assert r.json()["type"] == ERR + "LdContextNotAvailable"
        assert r.json()["detail"] == f"could not fetch @context {url}"
        r = await client.get(E, params={"type": "AirQualityObserved"}, headers=link(url))
        assert r.status_code == 503
    assert internal.hits == []
    assert (await client.get(f"{E}/urn:ngsi-ld:AirQualityObserved:000001")).status_code == 404
    listed = (await client.get("/ngsi-ld/v1/jsonldContexts")).json()
    assert not [u for u in listed if str(internal.port) in u]


async def test_context_errors_do_not_tell_ports_apart(client: httpx.AsyncClient, internal: Internal) -> None:
    """Loopback is allow-listed here: a closed port, a 404, an oversized answer and a redirect read alike."""
    closed = f"http://127.0.0.1:{closed_port()}/ctx.jsonld"
    details = []
    for url in (closed, f"{internal.url}/missing", f"{internal.url}/big", f"{internal.url}/redirect?to=/missing"):
        r = await client.get(E, params={"type": "X"}, headers=link(url))
        assert r.status_code == 503, r.text
        details.append(r.json()["detail"].replace(url, "URL"))
    assert details == ["could not fetch @context URL"] * 4


async def test_anonymous_callers_never_make_the_server_fetch(client: httpx.AsyncClient, anon_client: httpx.AsyncClient,
                                                             internal: Internal) -> None:
    url = f"{internal.url}/ctx.jsonld"  # loopback is allow-listed in the tests: only the caller differs
    r = await anon_client.get(E, params={"type": "X"}, headers=link(url))
    assert r.status_code == 503 and r.json()["type"] == ERR + "LdContextNotAvailable"
    assert "without a token" in r.json()["detail"]
    r = await anon_client.post("/ngsi-ld/v1/entityOperations/query",
                               json={"type": "Query", "entities": [{"type": "X"}]}, headers=JSON | link(url))
    assert r.status_code == 503
    r = await anon_client.post("/ngsi-ld/v1/entityOperations/query",
                               json={"type": "Query", "entities": [{"type": "X"}], "@context": [url]},
                               headers={"Content-Type": "application/ld+json"})
    assert r.status_code == 503
    assert internal.hits == []
    # Nothing to read back either.
    assert (await anon_client.get(f"/ngsi-ld/v1/jsonldContexts/{url}")).status_code == 404
    # Once an authenticated caller has made it cached, anonymous callers may use it.
    assert (await client.get(E, params={"type": "level"}, headers=link(url))).status_code == 200
    r = await anon_client.get(E, params={"type": "level"}, headers=link(url))
    assert r.status_code == 200 and len(internal.hits) == 1


# ------------------------------------------------------------------ subscriptions


async def test_subscription_endpoints_on_internal_addresses_are_refused(client: httpx.AsyncClient, strict: Outbound,
                                                                        receiver: Receiver) -> None:
    port = receiver.server.server_address[1]
    for uri in (receiver.url, f"http://0x7f000001:{port}/notify", f"http://[::1]:{port}/notify",
                "http://10.0.0.8/notify", "http://169.254.169.254/latest/meta-data", "https://192.168.0.1/x",
                "mqtt://127.0.0.1:1883/topic", f"http://localhost:{port}/notify"):
        r = await client.post(S, json=subscription(uri), headers=JSON)
        assert r.status_code == 400, (uri, r.text)
        problem = r.json()
        assert problem["type"] == ERR + "BadRequestData"
        assert "notification.endpoint.uri" in problem["detail"] and "CITYOS_OUTBOUND_ALLOW" in problem["detail"]
    assert (await client.get(S)).json() == []
    # A name that does not resolve yet is accepted (its receiver may not be up); delivery checks it.
    r = await client.post(S, json=subscription("http://receiver.invalid/notify"), headers=JSON)
    assert r.status_code == 201, r.text
    # A public endpoint is accepted; changing it to an internal one is refused and changes nothing.
    r = await client.post(S, json=subscription("http://8.8.8.8:9/notify", id="urn:ngsi-ld:Subscription:pub"),
                          headers=JSON)
    assert r.status_code == 201, r.text
    r = await client.patch(f"{S}/urn:ngsi-ld:Subscription:pub",
                           json={"notification": {"endpoint": {"uri": receiver.url}}}, headers=JSON)
    assert r.status_code == 400 and "loopback" in r.json()["detail"]
    got = (await client.get(f"{S}/urn:ngsi-ld:Subscription:pub")).json()
    assert got["notification"]["endpoint"]["uri"] == "http://8.8.8.8:9/notify"


async def test_delivery_checks_the_endpoint_again(app: Any, client: httpx.AsyncClient, receiver: Receiver,
                                                  fast_notify: None) -> None:
    """Allowed when created, refused when delivered (the policy or the DNS answer changed): nothing is sent."""
    r = await client.post(S, json=subscription(receiver.url, id="urn:ngsi-ld:Subscription:later"), headers=JSON)
    assert r.status_code == 201
    outbound: Outbound = app.state.outbound
    saved, outbound.allow = outbound.allow, ()
    try:
        await client.post(E, json=air(1), headers=JSON)
        status = await _wait_failed(client, "urn:ngsi-ld:Subscription:later")
    finally:
        outbound.allow = saved
    assert status["lastErrorReason"] == REFUSED
    assert receiver.received == []


async def test_delivery_failures_do_not_reveal_port_state(client: httpx.AsyncClient, fast_notify: None,
                                                          internal: Internal) -> None:
    """A closed port and an open port that never answers HTTP read alike in lastErrorReason."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        closed = f"http://127.0.0.1:{closed_port()}/notify"
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}/notify"
        for n, uri in enumerate((closed, mute)):
            r = await client.post(S, json=subscription(uri, id=f"urn:ngsi-ld:Subscription:p{n}"), headers=JSON)
            assert r.status_code == 201
        await client.post(E, json=air(1), headers=JSON)
        reasons = [(await _wait_failed(client, f"urn:ngsi-ld:Subscription:p{n}"))["lastErrorReason"] for n in (0, 1)]
    finally:
        silent.close()
    assert reasons == [UNREACHABLE, UNREACHABLE]


async def _wait_failed(client: httpx.AsyncClient, sub_id: str) -> dict[str, Any]:
    status: dict[str, Any] = {}
    for _ in range(300):
        status = (await client.get(f"{S}/{sub_id}")).json()["notification"]
        if status.get("lastErrorReason"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(status)


# ------------------------------------------------------------------ OIDC


async def test_oidc_keys_are_fetched_only_from_allowed_hosts() -> None:
    """The configured issuer is reachable (the operator chose it); a jwks_uri it names elsewhere is checked."""
    from cityos.security.tokens import InvalidToken, OidcTrust

    victim = Internal()  # an internal service the discovery document points at

    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = orjson.dumps({"issuer": idp_url, "jwks_uri": f"{victim.url}/ctx.jsonld"})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    idp = ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    idp_url = f"http://127.0.0.1:{idp.server_address[1]}"
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    try:
        trust = OidcTrust(idp_url, "cityos-app", refetch_interval=0.0)
        with pytest.raises(InvalidToken, match="cannot be reached"):
            await trust.key_for("any")
        assert victim.hits == []
    finally:
        idp.shutdown()
        idp.server_close()
        victim.httpd.shutdown()
        victim.httpd.server_close()


# ------------------------------------------------------------------ TLS


def _tls_pair(tmp: Any, name: str) -> tuple[Any, Any]:
    """A throw-away CA and a server certificate for `name`, as (client context, server context)."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "server.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return client, server


async def test_tls_is_verified_against_the_name_not_the_address(internal: Internal, tmp_path: Any) -> None:
    """The guard connects to the checked IP, yet TLS still checks the certificate against the URL's name."""
    client_tls, server_tls = _tls_pair(tmp_path, "svc.invalid")
    internal.httpd.socket = server_tls.wrap_socket(internal.httpd.socket, server_side=True)

    async def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("127.0.0.1")]

    guard = Outbound(parse_allow_list("127.0.0.1/32"), tls=client_tls, _resolver=resolver)
    answer = await guard.get(f"https://svc.invalid:{internal.port}/ctx.jsonld")
    assert answer.status == 200 and orjson.loads(answer.content) == CTX
    with pytest.raises(OutboundError):  # another name at the same address: the certificate does not match
        await guard.get(f"https://other.invalid:{internal.port}/ctx.jsonld")
    assert [path for path, _host in internal.hits] == ["/ctx.jsonld"]


async def test_a_notification_receiver_answering_with_a_big_page_still_took_it(client: httpx.AsyncClient,
                                                                               internal: Internal) -> None:
    """Only the status of a receiver's answer counts: 2 MB of it are not read, and not a failure."""
    r = await client.post(S, json=subscription(f"{internal.url}/big", id="urn:ngsi-ld:Subscription:big"),
                          headers=JSON)
    assert r.status_code == 201
    await client.post(E, json=air(1), headers=JSON)
    status: dict[str, Any] = {}
    for _ in range(200):
        status = (await client.get(f"{S}/urn:ngsi-ld:Subscription:big")).json()["notification"]
        if status.get("timesSent") or status.get("timesFailed"):
            break
        await asyncio.sleep(0.05)
    assert status["timesSent"] == 1 and status["timesFailed"] == 0, status
    assert [path for path, _host in internal.hits] == ["/big"]
