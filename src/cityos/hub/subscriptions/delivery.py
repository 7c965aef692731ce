"""Transports for notifications: HTTP(S) POST with httpx, MQTT publish with aiomqtt.

A transport belongs to one endpoint worker, so a slow or dead endpoint holds only its own
connection. Every failure becomes a DeliveryError with a short reason for `lastErrorReason`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import httpx
import orjson

from cityos.core.mqtt import settle_disconnect
from cityos.hub.jsonld import CORE_CONTEXT_URL
from cityos.hub.subscriptions.service import Compiled

JSON = "application/json"
JSON_LD = "application/ld+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
NOTIFICATION_ID_HEADER = "NGSILD-Notification-Id"


class DeliveryError(Exception):
    """The endpoint did not take the notification; the reason goes to lastErrorReason."""


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
    def __init__(self, timeout: float, connections: int) -> None:
        self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                        limits=httpx.Limits(max_connections=connections,
                                                            max_keepalive_connections=connections))

    async def send(self, message: Message) -> None:
        try:
            response = await self.client.post(message.uri, content=orjson.dumps(message.body),
                                              headers=message.headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"HTTP {response.status_code} from the endpoint")

    async def close(self) -> None:
        await self.client.aclose()


class MqttTransport:
    """One connected client per endpoint, reconnected after a failure.

    The MQTT message is the NGSI-LD MQTT binding's envelope: {"metadata": headers, "body": notification}.
    """

    def __init__(self, uri: str, timeout: float) -> None:
        parts = urlsplit(uri)
        self.secure = parts.scheme == "mqtts"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.secure else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.topic = unquote(parts.path.lstrip("/"))
        self.timeout = timeout
        self.client: aiomqtt.Client | None = None

    async def _connected(self) -> aiomqtt.Client:
        if self.client is None:
            client = aiomqtt.Client(self.host, self.port, username=self.username, password=self.password,
                                    timeout=self.timeout, tls_context=ssl.create_default_context() if self.secure
                                    else None)
            await asyncio.wait_for(client.__aenter__(), self.timeout)
            self.client = client
        return self.client

    async def send(self, message: Message) -> None:
        envelope = {"metadata": message.headers, "body": message.body}
        try:
            client = await self._connected()
            await client.publish(self.topic, orjson.dumps(envelope), qos=message.qos, timeout=self.timeout)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            await self.close()
            raise DeliveryError(f"MQTT {type(exc).__name__}: {str(exc)[:200]}") from exc

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                await asyncio.wait_for(client.__aexit__(None, None, None), 2)
            settle_disconnect(client)


def transport_for(uri: str, timeout: float, connections: int = 8) -> Transport:
    if uri.startswith(("mqtt://", "mqtts://")):
        return MqttTransport(uri, timeout)
    return HttpTransport(timeout, max(1, connections))
