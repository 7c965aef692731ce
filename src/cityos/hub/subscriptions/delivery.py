"""Transports for notifications: HTTP(S) POST through the outbound guard, MQTT publish with aiomqtt.

A transport belongs to one endpoint worker, so a slow or dead endpoint holds only its own
connection. Every failure becomes a DeliveryError with a short reason for `lastErrorReason`. That
reason is generic ("could not be reached") and the socket-level cause goes to the log only: a
"connection refused" against "timed out" would tell a subscriber which ports are open behind the
server. Both transports connect only to addresses the outbound policy admits, checked at each
connection (DNS may have changed since the subscription was created).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson

from cityos.core.mqtt import settle_disconnect
from cityos.core.outbound import DEFAULT_PORTS, Outbound, OutboundError, OutboundRefused
from cityos.hub.jsonld import CORE_CONTEXT_URL
from cityos.hub.subscriptions.service import Compiled

JSON = "application/json"
JSON_LD = "application/ld+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
NOTIFICATION_ID_HEADER = "NGSILD-Notification-Id"


log = logging.getLogger("cityos.hub.notify")
UNREACHABLE = "the endpoint could not be reached or did not answer in time"
REFUSED = "the endpoint is not an allowed destination (outbound policy)"


class DeliveryError(Exception):
    """The endpoint did not take the notification; the reason goes to lastErrorReason."""


def _failed(uri: str, exc: Exception) -> DeliveryError:
    """The caller-facing reason, with the real cause logged here."""
    log.warning("notification to %s: %s", uri[:120], exc.reason if isinstance(exc, OutboundError) else repr(exc))
    return DeliveryError(REFUSED if isinstance(exc, OutboundRefused) else UNREACHABLE)


@dataclass
class Message:
    uri: str
    body: dict[str, Any]
    headers: dict[str, str]
    qos: int = 0


def build_message(sub: Compiled, body: dict[str, Any], tenant: str) -> Message:
    """Headers per the subscription's endpoint: media type, @context Link, receiverInfo, dedup id."""
    endpoint = sub.params["endpoint"]
    accept = endpoint.get("accept", JSON)
    headers = {"Content-Type": accept, NOTIFICATION_ID_HEADER: str(body["id"])}
    if accept == JSON:
        link = sub.ctx.link_url if isinstance(sub.ctx.source, str) else _first_url(sub.ctx.source)
        headers["Link"] = f'<{link}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    for pair in endpoint.get("receiverInfo", []):
        headers[pair["key"]] = pair["value"]
    qos = next((int(p["value"]) for p in endpoint.get("notifierInfo", []) if p["key"] == "MQTT-QoS"), 0)
    return Message(endpoint["uri"], body, headers, qos)


def _first_url(source: Any) -> str:
    """A Link header carries a URL only: the first URL of a list @context, else the core context."""
    if isinstance(source, list):
        return next((item for item in source if isinstance(item, str)), CORE_CONTEXT_URL)
    return CORE_CONTEXT_URL


class Transport(Protocol):
    async def send(self, message: Message) -> None: ...

    async def close(self) -> None: ...


class HttpTransport:
    # An endpoint's answer is not read beyond this (only its status counts): a receiver that answers
    # with a big page still took the notification.
    MAX_ANSWER = 64 * 1024

    def __init__(self, outbound: Outbound, timeout: float, connections: int) -> None:
        self.client = outbound.client(timeout=timeout, connections=connections)

    async def send(self, message: Message) -> None:
        try:
            response = await self.client.request("POST", message.uri, content=orjson.dumps(message.body),
                                                 headers=message.headers, max_bytes=self.MAX_ANSWER, truncate=True)
        except OutboundError as exc:
            raise _failed(message.uri, exc) from exc
        if not 200 <= response.status < 300:
            raise DeliveryError(f"HTTP {response.status} from the endpoint")

    async def close(self) -> None:
        await self.client.aclose()


class MqttTransport:
    """One connected client per endpoint, reconnected after a failure.

    The MQTT message is the NGSI-LD MQTT binding's envelope: {"metadata": headers, "body": notification}.
    """

    def __init__(self, uri: str, outbound: Outbound, timeout: float) -> None:
        parts = urlsplit(uri)
        self.uri = uri
        self.outbound = outbound
        self.secure = parts.scheme == "mqtts"
        self.host = parts.hostname or ""
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.topic = unquote(parts.path.lstrip("/"))
        self.timeout = timeout
        self.client: aiomqtt.Client | None = None

    async def _connected(self) -> aiomqtt.Client:
        if self.client is None:
            # Connect to the address the policy checked, not to the name (no rebinding in between);
            # TLS still verifies the certificate against the name.
            address = str((await self.outbound.admit(self.host, self.port))[0])
            client = aiomqtt.Client(address, self.port, username=self.username, password=self.password,
                                    timeout=self.timeout,
                                    tls_context=_named_tls(self.host) if self.secure else None)
            await asyncio.wait_for(client.__aenter__(), self.timeout)
            self.client = client
        return self.client

    async def send(self, message: Message) -> None:
        envelope = {"metadata": message.headers, "body": message.body}
        try:
            client = await self._connected()
            await client.publish(self.topic, orjson.dumps(envelope), qos=message.qos, timeout=self.timeout)
        except (aiomqtt.MqttError, OSError, TimeoutError, OutboundError) as exc:
            await self.close()
            raise _failed(self.uri, exc) from exc

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await asyncio.wait_for(client.__aexit__(None, None, None), 2)
            settle_disconnect(client)


class _NamedTls(ssl.SSLContext):
    """A TLS client context that verifies the server as `name` whatever address the socket was opened to
    (paho passes the host it connects to, here the checked IP, as the server name)."""

    name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self.name
        return super().wrap_socket(sock, *args, **kwargs)


def _named_tls(name: str) -> ssl.SSLContext:
    context = _NamedTls(ssl.PROTOCOL_TLS_CLIENT)  # certificate and host name checks on
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.name = name
    return context


def transport_for(uri: str, outbound: Outbound, timeout: float, connections: int = 8) -> Transport:
    if uri.startswith(("mqtt://", "mqtts://")):
        return MqttTransport(uri, outbound, timeout)
    return HttpTransport(outbound, timeout, max(1, connections))
