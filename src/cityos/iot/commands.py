"""Server-side RPC to devices (ThingsBoard's `v1/devices/me/rpc/request/{id}` convention).

`POST /api/iot/devices/{id}/rpc` stores the request (status `queued`), publishes
`{"method": ..., "params": ...}` with QoS 1 to `cityos/devices/<name>/rpc/request/<id>` (the
broker maps it to the device's `v1/devices/me/rpc/request/<id>`) and marks it `sent` when the
broker acknowledges it (`delivered` for a one-way request: no answer will come). The device
answers on `v1/devices/me/rpc/response/<id>`; the ingest worker records `succeeded` (or `failed`
when the answer has an "error" member). The health loop marks requests past their timeout
`timed_out`. A publish that fails marks the request `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cityos.iot.models import RpcIn
from cityos.iot.service import IotService

log = logging.getLogger("cityos.iot.commands")


def wait_for_publishes(infos: Sequence[mqtt.MQTTMessageInfo], timeout: float) -> None:
    """Wait until the broker acknowledged every message or `timeout` seconds have passed (an info that cannot
    be waited for, a message paho never queued, is left unpublished)."""
    deadline = time.monotonic() + timeout
    for info in infos:
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(max(0.001, deadline - time.monotonic()))


class CommandSender:
    def __init__(self, service: IotService, url: str | None, prefix: str | None = None, *,
                 protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5, username: str | None = None) -> None:
        """`protocol` and `username`: MQTT 3.1.1 and the platform's username for the demo's embedded broker."""
        self.service = service
        self.url = url
        self.prefix = prefix or os.environ.get("CITYOS_IOT_TOPIC_PREFIX", "cityos/devices")
        self.protocol, self.username = protocol, username
        self._client: mqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> mqtt.Client:
        from cityos.iot.ingest import broker_address

        async with self._lock:
            if self._client is None:
                assert self.url is not None
                host, port = broker_address(self.url)
                client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                     client_id=f"cityos-rpc-{socket.gethostname()}-{os.getpid()}",
                                     protocol=self.protocol)
                if self.username:
                    client.username_pw_set(self.username)
                client.reconnect_delay_set(1, 2)
                await asyncio.to_thread(client.connect, host, port, 30)
                client.loop_start()
                self._client = client
            return self._client

    async def send(self, ident: str, spec: RpcIn) -> dict[str, Any]:
        sent = (await self.send_many([(ident, spec)]))[0]
        if isinstance(sent, Exception):
            raise sent
        stored = await self.service.get_rpc(sent["id"])
        if stored["status"] == "queued":
            # The mark skipped a row the device's answer was being committed on (`set_rpc_statuses`): that answer
            # supersedes it, and until then the request is what this send made it, not still waiting to go.
            stored["status"] = sent["status"]
        return stored

    async def send_many(self, requests: Sequence[tuple[str, RpcIn]]) -> list[dict[str, Any] | Exception]:
        """Send many requests with one transaction to store them and one to mark them sent (or failed), in
        order: {"id", "status"} each, or the error of a request that could not be stored (unknown device)."""
        created = await self.service.create_rpcs(requests)
        stored = [(request, spec) for request, (_, spec) in zip(created, requests, strict=True)
                  if isinstance(request, dict)]
        status: dict[int, str] = {}
        if self.url is None:
            await self._fail(status, [r for r, _ in stored], "MQTT is not configured (CITYOS_MQTT_URL)")
        elif stored:
            try:
                client = await self._connected()
                published = [(request, spec, client.publish(
                    f"{self.prefix}/{request['device']}/rpc/request/{request['id']}",
                    orjson.dumps({"method": spec.method, "params": spec.params}), qos=1))
                    for request, spec in stored]
                timeout = max(max(spec.timeout for _, spec in stored) / 1000, 1.0)
                await asyncio.to_thread(wait_for_publishes, [info for _, _, info in published], timeout)
            except Exception as exc:  # the broker is away: no request can have reached its device
                log.warning("RPC to %d devices failed: %s", len(stored), exc)
                await self._fail(status, [r for r, _ in stored], f"publish failed: {exc}"[:500])
            else:
                await self._mark_published(status, published)
        return [request if isinstance(request, Exception) else {"id": request["id"], "status": status[request["id"]]}
                for request in created]

    async def _mark_published(self, status: dict[int, str],
                              published: list[tuple[dict[str, Any], RpcIn, mqtt.MQTTMessageInfo]]) -> None:
        """Record what the broker took (`sent`, `delivered` for one-way) and what it did not (`failed`). The
        requests are out whatever happens here: a record that fails (the database busy or away) is tried
        once more, then left to the answers
        (which move a `queued` request on too) and to the expiry, never raised to the caller as unsent."""
        lost = [request for request, _, info in published if not info.is_published()]
        marks: list[tuple[str, list[int], str | None]] = [
            ("failed", [r["id"] for r in lost], "publish failed: the broker did not acknowledge the request")]
        for oneway in (False, True):
            marks.append(("delivered" if oneway else "sent", [request["id"] for request, spec, info in published
                                                              if info.is_published() and bool(spec.oneway) == oneway],
                          None))
        for state, ids, why in marks:
            status.update(dict.fromkeys(ids, state))
            for attempt in (1, 2):
                try:
                    await self.service.set_rpc_statuses(ids, state, why)
                    break
                except Exception:
                    if attempt == 2:
                        log.exception("RPC %s…: %d requests %s, their status not recorded", ids[:3], len(ids), state)

    async def _fail(self, status: dict[int, str], requests: list[dict[str, Any]], why: str) -> None:
        if requests:
            log.warning("RPC %s failed: %s", [r["id"] for r in requests[:5]], why)
            await self.service.set_rpc_statuses([r["id"] for r in requests], "failed", why)
            status.update(dict.fromkeys((r["id"] for r in requests), "failed"))

    async def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
