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
import logging
import os
import socket
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cityos.iot.models import RpcIn
from cityos.iot.service import IotService

log = logging.getLogger("cityos.iot.commands")


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
        request = await self.service.create_rpc(ident, spec)
        rpc_id = request["id"]
        if self.url is None:
            await self.service.set_rpc_status(rpc_id, "failed", "MQTT is not configured (CITYOS_MQTT_URL)")
            return await self.service.get_rpc(rpc_id)
        topic = f"{self.prefix}/{request['device']}/rpc/request/{rpc_id}"
        body = orjson.dumps({"method": spec.method, "params": spec.params})
        try:
            client = await self._connected()
            info = client.publish(topic, body, qos=1)
            await asyncio.to_thread(info.wait_for_publish, max(spec.timeout / 1000, 1.0))
            if not info.is_published():
                raise TimeoutError("the broker did not acknowledge the request")
        except Exception as exc:  # the broker is away: the request cannot have reached the device
            log.warning("RPC %s to %s failed: %s", rpc_id, ident, exc)
            await self.service.set_rpc_status(rpc_id, "failed", f"publish failed: {exc}"[:500])
            return await self.service.get_rpc(rpc_id)
        await self.service.set_rpc_status(rpc_id, "delivered" if spec.oneway else "sent")
        return await self.service.get_rpc(rpc_id)

    async def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
