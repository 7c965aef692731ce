"""ThingsBoard's CoAP device API, for NB-IoT devices: `POST coap://host:5683/api/v1/{token}/telemetry`
and `/attributes`.

Constrained NB-IoT modules speak CoAP over UDP rather than MQTT over TCP. The paths, payloads and
token-in-the-path convention are ThingsBoard's, the same as the HTTP device API, and so is
everything behind them (`IotService.device_report`): validation, dead letters, duplicates stored
once. Answers: 2.04 Changed with the JSON summary, 4.00 Bad Request (nothing usable, with the
reason), 4.01 Unauthorized (unknown or revoked token), 4.04 (another path), 4.05 (another method),
4.13 Request Entity Too Large. A confirmable request is answered only after its readings are
committed, so a device that got 2.04 knows they are stored; aiocoap's message-id deduplication
answers a retransmission without ingesting it twice.

Started by the app when CITYOS_COAP_PORT is set; one process per host should set it (a UDP port is
bound once).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import orjson
from aiocoap import Code, Context, Message, resource

from cityos.iot.messages import DeviceCall
from cityos.iot.service import IotService

log = logging.getLogger("cityos.iot.coap")

_CODES = {"ok": Code.CHANGED, "unauthorized": Code.UNAUTHORIZED, "oversize": Code.REQUEST_ENTITY_TOO_LARGE,
          "rejected": Code.BAD_REQUEST}
KINDS = ("telemetry", "attributes")


class DeviceApi(resource.Resource, resource.PathCapable):
    """Everything under /api/v1: the remaining path is `{token}/{kind}`."""

    def __init__(self, service: IotService) -> None:
        super().__init__()
        self.service = service

    async def render(self, request: Message) -> Message:
        path = tuple(request.opt.uri_path)
        if len(path) != 2 or path[1] not in KINDS:
            return Message(code=Code.NOT_FOUND, payload=b"use /api/v1/{token}/telemetry or /attributes")
        if request.code != Code.POST:
            return Message(code=Code.METHOD_NOT_ALLOWED, payload=b"POST only")
        token, kind = path
        call = await self.service.device_report(token, kind, bytes(request.payload), "coap")
        return _answer(call)


def _answer(call: DeviceCall) -> Message:
    body = call.body()  # empty when nothing was ingested (unauthorized, oversize)
    if call.detail:
        body["detail"] = call.detail
    return Message(code=_CODES[call.outcome], payload=orjson.dumps(body),
                   content_format=50)  # application/json


async def start_coap(service: IotService, host: str, port: int) -> Callable[[], Awaitable[None]]:
    """Serve the CoAP device API on (host, port) until the returned function is awaited."""
    site = resource.Site()
    site.add_resource(("api", "v1"), DeviceApi(service))
    context = await Context.create_server_context(site, bind=(host, port))
    log.info("CoAP device API on coap://%s:%d/api/v1/{token}/telemetry", host, port)

    async def stop() -> None:
        await context.shutdown()

    return stop


def coap_address() -> tuple[str, int] | None:
    """CITYOS_COAP_PORT (and CITYOS_COAP_HOST, default 127.0.0.1: open it to devices on purpose), or None."""
    port = os.environ.get("CITYOS_COAP_PORT", "").strip()
    if not port:
        return None
    return os.environ.get("CITYOS_COAP_HOST", "127.0.0.1"), int(port)
