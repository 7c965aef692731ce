"""The server side of device RPC: the `iot_rpc_requests` rows and their states.

`IotService` takes these methods in (one registry of a tenant's devices): the MQTT sender
(`commands.py`) stores, publishes and marks requests, the ingest records a device's answer
(`_rpc_answer`, `_record_answers`, in the ingest's transaction), and the health loop times out the requests past
their deadline. Request states: queued → sent (delivered for one-way) → succeeded | failed | timed_out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.db import write_transaction
from cityos.core.errors import ResourceNotFound
from cityos.iot.models import Device, RpcIn, device_id, device_name, devices, rpc_requests

if TYPE_CHECKING:
    from cityos.hub.service import HubService
    from cityos.iot.messages import Envelope


OPEN_STATES = ("queued", "sent", "delivered")  # a request not answered, failed or timed out yet


class AnswerSignal:
    """Wakes, in this process, whoever awaits devices' answers as soon as an ingest commits some (the signal
    control loop's watcher), instead of their polling the database every few milliseconds."""

    def __init__(self) -> None:
        self._next = asyncio.Event()

    def upcoming(self) -> asyncio.Event:
        """Take it before reading the statuses: a commit while they are read has set it already."""
        return self._next

    def committed(self) -> None:
        self._next.set()
        self._next = asyncio.Event()


class RpcRequests:
    """Mixed into `IotService`, whose engine and tenant it uses."""

    engine: AsyncEngine
    tenant: str
    hub: HubService
    answer_signal: AnswerSignal

    @asynccontextmanager
    async def _rpc_write(self, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction on the process's SQLite writer lock, as the readings' ingest takes it: outside
        it, SQLite's own busy wait loses to the ingest's back-to-back commits (a control round's commands
        waited seconds) and a deferred transaction's lock upgrade can fail outright. New requests are
        `urgent`: they go out only once stored, ahead of any readings waiting to be written."""
        async with write_transaction(self.engine, self.hub.store.write_lock, urgent) as conn:
            yield conn

    async def create_rpc(self, ident: str, spec: RpcIn) -> dict[str, Any]:
        created = (await self.create_rpcs([(ident, spec)]))[0]
        if isinstance(created, ResourceNotFound):
            raise created
        return created

    async def create_rpcs(self, requests: Sequence[tuple[str, RpcIn]]) -> list[dict[str, Any] | ResourceNotFound]:
        """Store many RPC requests (status `queued`) in one transaction, in order; a device that is not
        registered gets ResourceNotFound in its place."""
        names = [device_name(ident) for ident, _ in requests]
        now = clock.now()
        async with self._rpc_write(urgent=True) as conn:
            known = set((await conn.execute(select(devices.c.name).where(
                devices.c.tenant == self.tenant, devices.c.name.in_(sorted(set(names)))))).scalars())
            rows = [{"tenant": self.tenant, "device": name, "method": spec.method, "params": spec.params,
                     "oneway": 1 if spec.oneway else 0, "status": "queued", "created_at": now,
                     "expires_at": now + timedelta(milliseconds=spec.timeout), "updated_at": now}
                    for (_, spec), name in zip(requests, names, strict=True) if name in known]
            ids: list[int] = []
            if rows:  # one multi-row INSERT (SQLAlchemy's insertmanyvalues), the ids in the rows' order
                result = await conn.execute(insert(rpc_requests).returning(rpc_requests.c.id,
                                                                           sort_by_parameter_order=True), rows)
                ids = [int(i) for i in result.scalars()]
        stored = iter(zip(rows, ids, strict=True))
        out: list[dict[str, Any] | ResourceNotFound] = []
        for (ident, _), name in zip(requests, names, strict=True):
            if name not in known:
                out.append(ResourceNotFound(f"device {ident!r} not found"))
                continue
            row, rpc_id = next(stored)
            out.append({**row, "id": rpc_id})
        return out

    async def set_rpc_status(self, rpc_id: int, status: str, error: str | None = None) -> None:
        await self.set_rpc_statuses([rpc_id], status, error)

    async def set_rpc_statuses(self, rpc_ids: Sequence[int], status: str, error: str | None = None) -> None:
        """Move the requests still open to `status`, in one statement (a request already answered keeps its
        answer: `sent` never overwrites `succeeded`).

        On PostgreSQL a row locked at this moment is skipped: the only other writer of a fresh request is the
        ingest recording its device's answer, which supersedes this mark. Waiting for it instead deadlocked
        (the answers' lane and a round's marks lock the same rows in different orders)."""
        if not rpc_ids:
            return
        open_states = ("queued", "sent") if status in ("sent", "delivered") else OPEN_STATES
        still_open = (select(rpc_requests.c.id).where(rpc_requests.c.id.in_(list(rpc_ids)),
                                                       rpc_requests.c.status.in_(open_states))
                      .with_for_update(skip_locked=True))
        async with self._rpc_write() as conn:
            await conn.execute(update(rpc_requests).where(rpc_requests.c.id.in_(still_open.scalar_subquery()))
                               .values(status=status, error=error, updated_at=clock.now()))

    async def get_rpc(self, rpc_id: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(rpc_requests).where(rpc_requests.c.tenant == self.tenant,
                                                                 rpc_requests.c.id == rpc_id))).first()
        if row is None:
            raise ResourceNotFound(f"RPC request {rpc_id} not found")
        return {"id": row.id, "device": device_id(row.device), "method": row.method, "params": row.params,
                "oneway": bool(row.oneway), "status": row.status, "response": row.response, "error": row.error,
                "createdAt": clock.iso(as_utc(row.created_at)), "expiresAt": clock.iso(as_utc(row.expires_at))}

    async def rpc_statuses(self, rpc_ids: Sequence[int]) -> dict[int, str]:
        """{id: status} of the tenant's RPC requests among `rpc_ids` (unknown ids left out), in one query
        per 1,000 ids: for callers that wait for many answers at once (the signal control loop)."""
        found: dict[int, str] = {}
        ids = list(rpc_ids)
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), 1000):
                rows = await conn.execute(select(rpc_requests.c.id, rpc_requests.c.status).where(
                    rpc_requests.c.tenant == self.tenant, rpc_requests.c.id.in_(ids[start:start + 1000])))
                found.update({int(row.id): str(row.status) for row in rows})
        return found

    @staticmethod
    def _rpc_answer(device: Device, env: Envelope, doc: Any) -> dict[str, Any] | None:
        """The row update a device's answer makes (recorded with the batch's others by `_record_answers`)."""
        if env.rpc_id is None:
            return None
        failed = isinstance(doc, dict) and "error" in doc
        return {"a_id": env.rpc_id, "a_device": device.name, "status": "failed" if failed else "succeeded",
                "response": doc, "error": str(doc.get("error"))[:500] if failed else None, "updated_at": clock.now()}

    async def _record_answers(self, conn: AsyncConnection, answers: list[dict[str, Any]]) -> None:
        """All of a batch's answers in one statement, in id order: a control round's 500 answers were 500
        round trips, and two transactions locking the same requests lock them in the same order."""
        if not answers:
            return
        still_open = or_(*(rpc_requests.c.status == state for state in OPEN_STATES))  # IN cannot be executemany'd
        await conn.execute(update(rpc_requests).where(
            rpc_requests.c.id == bindparam("a_id"), rpc_requests.c.device == bindparam("a_device"), still_open)
            .values(status=bindparam("status"), response=bindparam("response"), error=bindparam("error"),
                    updated_at=bindparam("updated_at")), sorted(answers, key=_by_request))

    async def expire_rpcs(self) -> int:
        async with self._rpc_write() as conn:
            result = await conn.execute(update(rpc_requests).where(
                rpc_requests.c.status.in_(OPEN_STATES), rpc_requests.c.oneway == 0,
                rpc_requests.c.expires_at < clock.now()).values(status="timed_out", updated_at=clock.now()))
            return int(result.rowcount or 0)


def _by_request(answer: Mapping[str, Any]) -> int:
    return int(answer["a_id"])
