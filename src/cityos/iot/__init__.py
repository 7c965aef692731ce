"""IoT: device registry, provisioning, MQTT/HTTP ingestion (ThingsBoard device API), device health, RPC.

Modules: `models` (tables, profiles, schemas), `service` (IotService: the logic, no HTTP),
`api` (routers), `ingest` (MQTT workers), `health` (scheduled loop), `commands` (server-side RPC).
Device profiles are in `profiles.json`.

How devices are authenticated on MQTT, honestly:

- A subscriber cannot see who published a message, so the platform never trusts a bare
  `v1/devices/me/telemetry` it receives. Devices connect with username = access token (as with
  ThingsBoard) and the BROKER authenticates them and maps their topics:
  `v1/devices/me/<x>` → `cityos/devices/<device name>/<x>` and `v1/gateway/<x>` →
  `cityos/devices/<gateway name>/gateway/<x>`. Ingest workers subscribe only to the mapped topics
  (`$share/cityos/cityos/devices/+/...`), so the name in the topic is the authenticated identity.
- Production (deploy/iot.md): EMQX with HTTP authentication and authorization calling
  `POST /api/iot/mqtt/auth` and `/api/iot/mqtt/acl` (the auth answer carries
  `client_attrs.device`, used by a topic-rewrite rule), or Mosquitto with mosquitto-go-auth's HTTP
  backend and the ACL allowing each device only its own `cityos/devices/<name>/...` topics
  (firmware then publishes to the mapped topic, or a bridge rule rewrites).
- Demo (embedded amqtt): `cityos.iot.ingest.mapping_broker_class()` + `amqtt_plugin_class()`
  check tokens against the registry and rewrite the topics inside the broker.
- Tests run against a stock Mosquitto (anonymous, no plugin), so they publish the mapped form
  directly; on such a broker anyone could publish for any device: do not run production that way.

Entities in the hub: `urn:ngsi-ld:Device:<name>` (type Device: name, deviceCategory, deviceProfile,
deviceState, batteryLevel, dateLastValueReported, location, district, department, firmwareVersion,
isGateway, refGateway) and the observed entity `urn:ngsi-ld:<profile.entityType>:<name>` (readings as
Properties with observedAt and unitCode, location, district, refDevice). Profiles whose entityType
is Device keep their readings on the Device entity itself.
"""
