"""The IoT domain's logic: registry, provisioning, tokens, payload validation and mapping, dead letters.

`IotService` is one object per tenant for its callers, composed of one part per responsibility, each in
its own module: ingestion (`ingestion.py`: `ingest`, device reports, replays), readings (`readings.py`:
profile checks, 一数一源, quality, hub items), the registry (`registry.py`: profiles, provisioning, tokens,
broker hooks, health), the RPC request store (`rpc_requests.py`) and the dead letters' reading
(`dead_letter_reader.py`). Settings, topics, envelopes and reports are in `messages.py`.

No HTTP and no MQTT here: `ingest(envelopes)` takes already-received messages (from the MQTT
worker, the HTTP device API or a replay), and commits, in ONE transaction:

- the readings, through `cityos.hub.observations.upsert_observations` (newest observedAt wins,
  every reading in history, duplicates stored once);
- the Device entities' status/battery/last-seen changes;
- the registry rows (last seen, status, battery, data-quality state);
- a dead letter for every message or reading that could not be used, with its reason.

Only after that commit may a caller acknowledge the messages. Events (`iot.device.alarm`,
`iot.device.online`, `iot.data.quality`) go on the event bus after the commit, through a bounded
background publisher (`self.events`), so slow handlers never hold up the acknowledgements.

Python API for in-process callers (the simulator):

    iot = app.state.iot                                # an IotService
    device_id, token = await iot.provision(DeviceIn(name="aq-1", profile="air-quality", lon=110.3, lat=20.0,
                                                     district="Meilan", department="EPB"))
    result = await iot.provision_many([DeviceIn(...), ...])   # BulkResult: .created [{row,id,name,token}], .errors
    report = await iot.ingest([Envelope.telemetry("aq-1", b'{"pm25": 12}')])
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from cityos.iot.dead_letter_reader import DeadLetterReader
from cityos.iot.ingestion import IotIngestion
from cityos.iot.messages import BulkResult, Envelope, IngestReport, IotSettings, Rejection
from cityos.iot.rpc_requests import RpcRequests


class IotService(IotIngestion, RpcRequests, DeadLetterReader):
    """The IoT domain's logic for one tenant (see the module docstring)."""


__all__ = ["BulkResult", "Envelope", "IngestReport", "IntegrityError", "IotService", "IotSettings", "Rejection"]
