"""The simulator's one point of contact with the platform: everything it knows about the IoT and hub APIs.

When the IoT domain changes its provisioning API, its broker plugin or its statistics, this file
is the only one in `cityos.sim` that has to follow.

- Provisioning: `POST /api/iot/devices/bulk` (a JSON array of devices → `{"created": [{name, token}],
  "errors": [...]}`); a device that already exists gets a fresh token from `POST /api/iot/devices/{name}/token`
  (tokens are stored hashed, so the only way to learn one again is to rotate it; the simulator is
  the device's firmware, so it may).
- The city goes to the hub with `POST /ngsi-ld/v1/entityOperations/upsert`.
- Authentication: a bearer token given as is (`token=`), or an OAuth 2.0 client (`client_id=`,
  `client_secret=`; RFC 6749 client_credentials at `POST /auth/token`), whose access token is
  fetched on first use and again before it expires or after a 401. `cityos demo` creates such a
  client (role operator: hub writes and device management) each time it starts.
- The embedded broker for `cityos demo` is amqtt with the IoT domain's auth/topic plugin and its
  topic-mapping broker class (`cityos.iot.ingest`).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import httpx

from cityos.sim.city import City
from cityos.sim.devices import Deployment
from cityos.sim.entities import city_entities

UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
TOKEN_PATH = "/auth/token"  # noqa: S105 - the OAuth token endpoint, not a secret
BULK = "/api/iot/devices/bulk"
CITY_BATCH = 500
PROVISION_BATCH = 1000

# Which city department owns each kind of device: the registry and the cockpit group by it.
DEPARTMENTS = {
    "air-quality": "environment", "water-quality": "environment", "noise": "environment",
    "traffic-flow": "transport", "parking-spot": "transport", "streetlight": "urban-management",
    "smoke": "fire-rescue", "water-level": "water-authority", "smart-meter": "energy",
    "waste-bin": "sanitation", "wearable": "civil-affairs",
}


def gateway_profile(profiles: dict[str, Any]) -> str:
    """The profile a gateway is registered with: `gateway` once the IoT domain defines one.

    Until then a smart meter: every gateway cabinet has one, so the gateway's own entity is not a lie.
    """
    return "gateway" if "gateway" in profiles else "smart-meter"


@dataclass
class PlatformStats:
    devices: int = 0
    online: int = 0
    offline: int = 0
    low_battery: int = 0
    dead_letters: int = 0
    ok: bool = False


class ClientCredentials(httpx.Auth):
    """OAuth 2.0 client_credentials: a bearer token fetched when needed, renewed before it expires."""

    requires_response_body = True

    def __init__(self, client_id: str, client_secret: str, token_path: str = TOKEN_PATH) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_path = token_path
        self.token: str | None = None
        self.renew_at = 0.0

    def _token_request(self, request: httpx.Request) -> httpx.Request:
        url = request.url.copy_with(path=self.token_path, query=None)
        basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return httpx.Request("POST", url, data={"grant_type": "client_credentials"},
                             headers={"Authorization": f"Basic {basic}"})

    async def async_auth_flow(self, request: httpx.Request) -> Any:
        for attempt in range(2):
            if self.token is None or time.monotonic() >= self.renew_at or attempt:
                response = yield self._token_request(request)
                await response.aread()
                if response.status_code != 200:
                    raise RuntimeError(f"the platform refused the simulator's client credentials: "
                                       f"{response.status_code} {response.text[:200]}")
                body = response.json()
                self.token = str(body["access_token"])
                # Renew at 80 % of the lifetime, so a token never expires in flight.
                self.renew_at = time.monotonic() + 0.8 * float(body.get("expires_in", 300))
            request.headers["Authorization"] = f"Bearer {self.token}"
            response = yield request
            if response.status_code != 401:
                return


class PlatformClient:
    def __init__(self, api: str, *, token: str | None = None, tenant: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if tenant:
            headers["NGSILD-Tenant"] = tenant
        self.http = httpx.AsyncClient(base_url=api.rstrip("/"), headers=headers, timeout=timeout)
        if client_id and client_secret:
            self.use_client(client_id, client_secret)

    def use_client(self, client_id: str, client_secret: str) -> None:
        """Authenticate as this OAuth client from now on (client_credentials grant)."""
        self.http.headers.pop("Authorization", None)
        self.http.auth = ClientCredentials(client_id, client_secret)

    async def close(self) -> None:
        await self.http.aclose()

    async def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                if (await self.http.get("/health", timeout=2.0, auth=None)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API at {self.http.base_url} did not answer within {within:.0f} s")
            await asyncio.sleep(0.1)

    async def publish_city(self, city: City) -> int:
        entities = city_entities(city)
        for start in range(0, len(entities), CITY_BATCH):
            r = await self.http.post(UPSERT, json=entities[start:start + CITY_BATCH],
                                     headers={"Content-Type": "application/json"})
            if r.status_code not in (201, 204):
                raise RuntimeError(f"publishing the city failed: {r.status_code} {r.text[:300]}")
        return len(entities)

    async def provision(self, deployment: Deployment, city: City) -> dict[str, str]:
        """Register every device (and gateway); returns the tokens of those that hold MQTT connections."""
        rows: list[dict[str, Any]] = []
        gw_profile = gateway_profile(deployment.profiles)
        for g in deployment.gateways:
            centre = city.district(g.district_id).polygon.representative_point()
            rows.append({"name": g.name, "profile": gw_profile, "gateway": True, "lon": round(centre.x, 6),
                         "lat": round(centre.y, 6), "district": city.district(g.district_id).name,
                         "department": "it-operations"})
        for d in deployment.devices:
            rows.append({"name": d.name, "profile": d.profile, "lon": d.lon, "lat": d.lat,
                         "district": city.district(d.district_id).name, "department": DEPARTMENTS.get(d.profile),
                         "firmware": "sim-1.0", **({"gatewayName": d.gateway} if d.gateway else {})})
        wanted = {g.name for g in deployment.gateways} | {d.name for d in deployment.direct}
        tokens: dict[str, str] = {}
        existing: list[str] = []
        for start in range(0, len(rows), PROVISION_BATCH):
            chunk = rows[start:start + PROVISION_BATCH]
            r = await self.http.post(BULK, json=chunk)
            if r.status_code not in (201, 207):
                raise RuntimeError(f"provisioning failed: {r.status_code} {r.text[:300]}")
            body = r.json()
            for created in body.get("created", []):
                if created.get("name") in wanted:
                    tokens[created["name"]] = created["token"]
            for error in body.get("errors", []):
                row = chunk[int(error["row"])] if 0 <= int(error["row"]) < len(chunk) else None
                problem = error.get("error", {})
                if row is not None and "AlreadyExists" in str(problem.get("type", "")):
                    existing.append(row["name"])
                else:
                    raise RuntimeError(f"provisioning refused {row and row['name']}: {problem}")
        for name in existing:
            if name in wanted:
                r = await self.http.post(f"/api/iot/devices/{name}/token")
                r.raise_for_status()
                tokens[name] = r.json()["token"]
        missing = wanted - set(tokens)
        if missing:
            raise RuntimeError(f"no token for {sorted(missing)[:5]}")
        return tokens

    async def stats(self) -> PlatformStats:
        """What the platform itself says: device health and dead letters, from the IoT API."""
        try:
            health = (await self.http.get("/api/iot/health", timeout=5.0)).json()
            letters = (await self.http.get("/api/iot/dead-letters", params={"status": "", "limit": 1},
                                           timeout=5.0)).json()
        except (httpx.HTTPError, ValueError):
            return PlatformStats()
        by_status = health.get("byStatus", {})
        return PlatformStats(devices=int(health.get("devices", 0)), online=int(by_status.get("active", 0)),
                             offline=int(by_status.get("offline", 0)), low_battery=int(health.get("lowBattery", 0)),
                             dead_letters=int(letters.get("total", 0)), ok=True)


# ---------------------------------------------------------------------- embedded broker


def free_port(preferred: int, host: str = "127.0.0.1", udp: bool = False, taken: Collection[int] = ()) -> int:
    """`preferred` if nothing listens there, else any free port the kernel picks (TCP, or UDP); never one of
    `taken`: ports chosen a moment ago and not bound yet, which the kernel may hand out again once closed (the
    demo's broker and API then fought over one port)."""
    for port in (preferred, *[0] * 20):
        if port in taken and port != 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
            if sys.platform != "win32" and not udp:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            chosen = int(s.getsockname()[1])
            if chosen not in taken:
                return chosen
    raise OSError("no free port")


class EmbeddedBroker:
    """amqtt with the IoT domain's token authentication and ThingsBoard topic mapping."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._broker: Any = None
        self.plugin: Any = None
        self._unwatch: Any = None

    def config(self) -> dict[str, Any]:
        from cityos.iot import ingest

        plugin_path = self._register_plugin(ingest)
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 5000}},
            "plugins": {plugin_path: {}},
        }

    def _register_plugin(self, ingest: Any) -> str:
        # amqtt imports plugins by dotted path, and the mapping broker must consult the very plugin class
        # that authenticated a session (it holds the client → device map). The IoT module builds both
        # once (cached); should that ever change, bind a mapping broker to the plugin amqtt will load.
        plugin = ingest.amqtt_plugin_class()
        if ingest.amqtt_plugin_class() is plugin:
            self._broker_cls = ingest.mapping_broker_class()
        else:
            ingest.CityosBrokerPlugin = plugin
            self._broker_cls = ingest.mapping_broker(plugin, ingest.map_device_topic)
        self.plugin = plugin
        return "cityos.iot.ingest.CityosBrokerPlugin"

    async def start(self, service: Any) -> None:
        config = self.config()
        self._broker = self._broker_cls(config)
        await self._broker.start()
        if service is not None:
            self.attach(service)

    def attach(self, service: Any) -> None:
        """Authenticate devices against this IoT service from now on, and follow its token changes."""
        self.plugin.service = service
        if self._unwatch is not None:
            self._unwatch()
        self._unwatch = self._broker.watch_credentials(service)

    async def stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None


def embedded_ingest_worker(service: Any, url: str, client_id: str = "cityos-demo-ingest", batch_max: int = 5,
                           kinds: str = "all") -> Any:
    """The IoT domain's ingest worker, speaking MQTT 3.1.1 to the embedded amqtt broker.

    `cityos.iot.ingest.IngestWorker` connects with MQTT 5 (session expiry, receive maximum) and a
    `$share/...` subscription; amqtt 0.12 speaks only 3.1.1 and has no shared subscriptions, so
    the demo runs one unshared worker over 3.1.1 with a persistent session (clean_session=False,
    so QoS 1 messages still wait in the broker while it is away). Batching, commit-then-acknowledge
    and dead-lettering are the IoT domain's own code; only the connection differs.

    Batches stay small because amqtt gives a subscriber 5 s to acknowledge a QoS 1 message and
    then drops it for good; the demo's throttle keeps the backlog short for the same reason.

    `kinds`: "all" the devices' messages; "readings" all but RPC answers; "rpc" only RPC answers, so that
    a worker of their own acknowledges phase commands in time while readings queue (`--traffic sumo`).
    """
    import os

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from cityos.iot.ingest import IngestWorker

    class Mqtt311IngestWorker(IngestWorker):
        def __init__(self) -> None:
            super().__init__(service, url, client_id, shared=False, batch_max=batch_max)
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                      clean_session=False, manual_ack=True)
            self.client.username_pw_set(os.environ.get("CITYOS_INGEST_USERNAME", "cityos-ingest"))
            self.client.on_connect = self._on_connect
            self.client.on_message = self._on_message
            self.client.on_disconnect = self._on_disconnect
            self.client.reconnect_delay_set(min_delay=1, max_delay=2)
            answers = [t for t in self.topics if t.endswith("/rpc/response/+")]
            if kinds == "rpc":
                self.topics = answers
            elif kinds == "readings":
                self.topics = [t for t in self.topics if t not in answers]

        def _connect(self) -> None:
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
            self.client.loop_start()

    return Mqtt311IngestWorker()


def embedded_command_sender(service: Any, url: str) -> Any:
    """The IoT domain's RPC sender for the embedded amqtt broker: MQTT 3.1.1, as the platform's own client
    (username `CITYOS_INGEST_USERNAME`), which the broker plugin lets publish any device's RPC request."""
    import os

    import paho.mqtt.client as mqtt

    from cityos.iot.commands import CommandSender

    return CommandSender(service, url, protocol=mqtt.MQTTv311,
                         username=os.environ.get("CITYOS_INGEST_USERNAME", "cityos-ingest"))
