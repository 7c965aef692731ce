"""Lineage (血缘): OpenLineage run events (openlineage-python's event model) for each pipeline step that
writes the catalogue, kept in our database and served as a graph per dataset.

Jobs: `cityos.data.harvest` (hub entity type / IoT reading history → catalogue datasets, one run per
type and harvest), `cityos.data.register` (a department's upload → its dataset), `cityos.data.quality`
(dataset → its quality score). Each version of a dataset records the run that produced it.
Sending the same events to an external OpenLineage endpoint (Marquez) is not built yet.
"""

from __future__ import annotations

import uuid
from typing import Any

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.serde import Serde
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.db import write_transaction
from cityos.data.models import lineage_events

PRODUCER = "https://github.com/cityos/cityos/tree/main/src/cityos/data"
NAMESPACE = "cityos"
MAX_EVENTS = 5000


class Lineage:
    def __init__(self, engine: AsyncEngine, lock: Any) -> None:
        self.engine = engine
        self.lock = lock

    async def emit(self, tenant: str, job: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]],
                   run_id: str | None = None) -> str:
        run_id = run_id or str(uuid.uuid4())
        now = clock.now()
        event = RunEvent(eventType=RunState.COMPLETE, eventTime=now.isoformat(), run=Run(runId=run_id),
                         job=Job(namespace=f"{NAMESPACE}/{tenant or 'default'}", name=job), producer=PRODUCER,
                         inputs=[InputDataset(namespace=ns, name=name) for ns, name in inputs],
                         outputs=[OutputDataset(namespace=ns, name=name) for ns, name in outputs])
        async with write_transaction(self.engine, self.lock) as conn:
            await conn.execute(insert(lineage_events).values(
                tenant=tenant, run_id=run_id, job=job, event_type="COMPLETE", event_time=now,
                inputs=[f"{ns}:{name}" for ns, name in inputs], outputs=[f"{ns}:{name}" for ns, name in outputs],
                event=Serde.to_dict(event)))
        return run_id

    async def graph(self, tenant: str, node: str) -> dict[str, Any]:
        """Upstream and downstream of `node` ("namespace:name"), two steps each way, with the runs."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(lineage_events).where(lineage_events.c.tenant == tenant)
                                        .order_by(lineage_events.c.id.desc()).limit(MAX_EVENTS))).all()
        edges: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in found:
            for source in row.inputs:
                for target in row.outputs:
                    edges.setdefault((source, target, row.job), {
                        "from": source, "to": target, "job": row.job, "runId": row.run_id,
                        "at": clock.iso(clock.as_utc(row.event_time))})
        upstream, downstream = self._walk(edges, node, up=True), self._walk(edges, node, up=False)
        nodes = sorted({node, *(e["from"] for e in upstream + downstream), *(e["to"] for e in upstream + downstream)})
        return {"node": node, "nodes": nodes, "upstream": upstream, "downstream": downstream}

    @staticmethod
    def _walk(edges: dict[tuple[str, str, str], dict[str, Any]], start: str, up: bool) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        frontier = {start}
        for _step in range(2):
            step = [e for e in edges.values() if (e["to"] if up else e["from"]) in frontier]
            seen += [e for e in step if e not in seen]
            frontier = {e["from"] if up else e["to"] for e in step}
        return seen
