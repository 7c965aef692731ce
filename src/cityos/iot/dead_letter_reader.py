"""Reading the dead letters: the messages and readings the ingest could not use, with their reasons.

`IotService` takes these methods in; it writes the letters in the ingest's transaction and replays them
(`IotService.replay`) through the ingest.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cityos.core import clock
from cityos.core.clock import as_utc
from cityos.core.errors import ResourceNotFound
from cityos.iot.models import dead_letters, device_name, devices


class DeadLetterReader:
    """Mixed into `IotService`, whose engine and tenant it uses."""

    engine: AsyncEngine
    tenant: str

    async def list_dead_letters(self, *, status: str | None = "pending", device: str | None = None,
                                reason: str | None = None, limit: int = 100, offset: int = 0,
                                department: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """`department`: only letters of that department's devices (letters of no known device are tenant-wide)."""
        conds = [dead_letters.c.tenant == self.tenant]
        if department is not None:
            conds.append(dead_letters.c.device.in_(select(devices.c.name).where(
                devices.c.tenant == self.tenant, devices.c.department == department)))
        if status:
            conds.append(dead_letters.c.status == status)
        if device:
            conds.append(dead_letters.c.device == device_name(device))
        if reason:
            conds.append(dead_letters.c.reason == reason)
        async with self.engine.connect() as conn:
            count = select(func.count()).select_from(dead_letters).where(and_(*conds))
            total = (await conn.execute(count)).scalar_one()
            rows = await conn.execute(select(dead_letters).where(and_(*conds)).order_by(dead_letters.c.id)
                                      .limit(limit).offset(offset))
            return [_dead_letter_out(r) for r in rows], int(total)

    async def get_dead_letter(self, letter_id: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(dead_letters).where(dead_letters.c.tenant == self.tenant,
                                                                 dead_letters.c.id == letter_id))).first()
        if row is None:
            raise ResourceNotFound(f"dead letter {letter_id} not found")
        return _dead_letter_out(row)


def _dead_letter_out(row: Any) -> dict[str, Any]:
    raw = bytes(row.payload)
    try:
        payload: Any = orjson.loads(raw)
        text = None
    except orjson.JSONDecodeError:
        payload, text = None, raw.decode("utf-8", "replace")
    return {"id": row.id, "receivedAt": clock.iso(as_utc(row.received_at)), "source": row.source, "kind": row.kind,
            "topic": row.topic, "device": row.device, "reason": row.reason, "detail": row.detail, "payload": payload,
            "payloadText": text, "status": row.status,
            "replayedAt": clock.iso(as_utc(row.replayed_at)) if row.replayed_at else None}
