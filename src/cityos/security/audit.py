"""The audit trail: append-only, SHA-256 hash-chained, searchable with masked values.

Each record's hash is ``sha256(canonical JSON of its fields + the previous record's hash)``;
canonical JSON is orjson with sorted keys, the timestamp an ISO 8601 string with microseconds,
the detail object itself stored as the canonical text that was hashed. ``verify`` walks the chain
and reports the first altered, inserted or deleted record, and compares the end of the chain with
the chain head.

Appends are serialised so that concurrent writers keep one chain: every append transaction
first locks the single-row chain head (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite a write
to the head row takes the database write lock at once). Within a process, `AuditLog.record` hands
records to one writer task that appends whatever has queued up in one transaction (group commit);
`record` returns only after that commit (durable before acknowledged).

Limits, honestly: an unkeyed chain proves integrity against anyone who cannot rewrite the whole
tail *and* the head. Anchor the head hash elsewhere (a log shipper, a notary) for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Select, and_, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cityos.core import clock
from cityos.security.masking import mask_json_text, mask_text
from cityos.security.models import GENESIS_HASH, audit, audit_head
from cityos.security.policy import Principal

log = logging.getLogger(__name__)

OUTCOMES = ("success", "failure", "denied", "error")


def ts_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class AuditEvent:
    action: str
    resource: str = ""
    outcome: str = "success"
    actor: str = "anonymous"
    actor_kind: str = "anonymous"
    role: str = "anonymous"
    tenant: str = ""
    ip: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None

    @classmethod
    def of(cls, principal: Principal | None, action: str, resource: str = "", outcome: str = "success",
           ip: str = "", tenant: str | None = None, **detail: Any) -> AuditEvent:
        if principal is None:
            return cls(action, resource, outcome, ip=ip, tenant=tenant or "", detail=detail)
        return cls(action, resource, outcome, actor=principal.username or principal.id, actor_kind=principal.kind,
                   role=principal.role, tenant=principal.tenant if tenant is None else tenant, ip=ip, detail=detail)


HASHED = ("seq", "ts", "actor", "actor_kind", "role", "tenant", "action", "resource", "outcome", "ip", "detail",
          "prev_hash")


COLUMNS = (*HASHED, "hash")
_PG_INSERT = (f"INSERT INTO sec_audit ({', '.join(COLUMNS)}) "
              f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))})")


def canonical(row: Any) -> bytes:
    """The bytes hashed for a record: every column but `hash`, keys sorted."""
    return orjson.dumps({k: row[k] for k in HASHED}, option=orjson.OPT_SORT_KEYS)


def record_hash(row: Any) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def _row(event: AuditEvent, seq: int, prev: str) -> dict[str, Any]:
    row = {"seq": seq, "ts": ts_text(event.at or clock.now()), "actor": event.actor[:256],
           "actor_kind": event.actor_kind[:16], "role": event.role[:32], "tenant": event.tenant[:256],
           "action": event.action[:128], "resource": event.resource[:1024], "outcome": event.outcome[:16],
           "ip": event.ip[:64], "detail": orjson.dumps(event.detail, option=orjson.OPT_SORT_KEYS,
                                                        default=str).decode(),
           "prev_hash": prev}
    row["hash"] = record_hash(row)
    return row


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    head_seq: int
    problem: str | None = None  # altered | inserted | deleted
    seq: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    resource: str | None = None
    outcome: str | None = None
    tenant: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 100
    offset: int = 0


class AuditLog:
    def __init__(self, engine: AsyncEngine, batch_max: int = 2000, write_lock: asyncio.Lock | None = None) -> None:
        self.engine = engine
        self.batch_max = batch_max
        self._sqlite = engine.dialect.name == "sqlite"
        # On SQLite: the process's write lock (shared with the hub's store), so writers never collide.
        self._lock = write_lock or asyncio.Lock()
        self._queue: asyncio.Queue[tuple[AuditEvent, asyncio.Future[int]]] | None = None
        self._writer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ writing

    async def _lock_head(self, conn: AsyncConnection) -> tuple[int, str]:
        if self._sqlite:
            # The first statement writes: SQLite takes the write lock now, not at commit.
            await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq))
            stmt = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        else:
            stmt = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
        head = (await conn.execute(stmt)).first()
        if head is None:
            # The head row went missing (a wiped table): restart from the newest record.
            last = (await conn.execute(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc())
                                       .limit(1))).first()
            seq, digest = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
            dialect_insert = sqlite_insert if self._sqlite else pg_insert
            await conn.execute(dialect_insert(audit_head).values(id=1, seq=seq, hash=digest)
                               .on_conflict_do_nothing(index_elements=["id"]))
            head = (await conn.execute(stmt)).first()
            assert head is not None
        return int(head[0]), str(head[1])

    async def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append `events` in one transaction; returns their sequence numbers."""
        if not events:
            return []
        async with contextlib.AsyncExitStack() as stack:
            if self._sqlite:
                await stack.enter_async_context(self._lock)
            conn = await stack.enter_async_context(self.engine.begin())
            seq, prev = await self._lock_head(conn)
            rows = []
            for event in events:
                seq += 1
                row = _row(event, seq, prev)
                prev = row["hash"]
                rows.append(row)
            if self._sqlite:
                await conn.execute(insert(audit), rows)
            else:
                # asyncpg's pipelined executemany on the transaction's own connection: same
                # transaction, a fraction of SQLAlchemy's per-row overhead.
                raw = await conn.get_raw_connection()
                await raw.driver_connection.executemany(  # type: ignore[union-attr]
                    _PG_INSERT, [tuple(row[c] for c in COLUMNS) for row in rows])
            await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
        return [row["seq"] for row in rows]

    async def start(self) -> None:
        if self._writer is None:
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._write_loop(), name="audit-writer")

    async def stop(self) -> None:
        if self._writer is None or self._queue is None:
            return
        writer, self._writer = self._writer, None
        await self._queue.put((AuditEvent("__stop__"), asyncio.get_running_loop().create_future()))
        with contextlib.suppress(asyncio.CancelledError):
            await writer

    async def _write_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        stopping = False
        while not stopping:
            batch = [await queue.get()]
            while len(batch) < self.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            real = [(e, f) for e, f in batch if e.action != "__stop__"]
            stopping = len(real) != len(batch)
            if not real:
                continue
            try:
                seqs = await self.append_many([e for e, _ in real])
            except Exception as exc:  # handed to every waiter; the loop keeps running
                log.exception("audit append failed")
                for _, fut in real:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), seq in zip(real, seqs, strict=True):
                if not fut.done():
                    fut.set_result(seq)

    def submit(self, event: AuditEvent) -> None:
        """Queue one record without waiting for its commit (callers that may hold a write lock)."""
        if self._writer is None or self._queue is None:
            asyncio.get_running_loop().create_task(self.append_many([event]))
            return
        self._queue.put_nowait((event, asyncio.get_running_loop().create_future()))

    async def record(self, event: AuditEvent) -> int:
        """Append one record; returns once it is committed."""
        if self._writer is None or self._queue is None:
            return (await self.append_many([event]))[0]
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, fut))
        return await fut

    # ------------------------------------------------------------------ reading

    def _filtered(self, q: AuditQuery) -> Select[Any]:
        c = audit.c
        conds = []
        if q.actor is not None:
            conds.append(c.actor == q.actor)
        if q.action is not None:
            conds.append(c.action == q.action if not q.action.endswith("*") else c.action.startswith(q.action[:-1],
                                                                                                     autoescape=True))
        if q.resource is not None:
            conds.append(c.resource == q.resource)
        if q.outcome is not None:
            conds.append(c.outcome == q.outcome)
        if q.tenant is not None:
            conds.append(c.tenant == q.tenant)
        if q.since is not None:
            conds.append(c.ts >= q.since)
        if q.until is not None:
            conds.append(c.ts < q.until)
        return select(audit).where(and_(True, *conds))

    async def search(self, q: AuditQuery, masked: bool = True) -> list[dict[str, Any]]:
        stmt = self._filtered(q).order_by(audit.c.seq.desc()).limit(q.limit).offset(q.offset)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [present(dict(r), masked) for r in rows]

    async def stream(self, q: AuditQuery, masked: bool = True, chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        after = 0
        while True:
            stmt = self._filtered(q).where(audit.c.seq > after).order_by(audit.c.seq).limit(chunk)
            async with self.engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
            if not rows:
                return
            for r in rows:
                yield present(dict(r), masked)
            after = int(rows[-1]["seq"])

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(audit))).scalar_one())

    async def verify(self, chunk: int = 5000) -> VerifyReport:
        """Walk the chain; report the first altered, inserted or deleted record."""
        prev1, prev2 = GENESIS_HASH, None  # hashes of the last two records seen
        last_seq, checked, after = 0, 0, -1
        async with self.engine.connect() as conn:
            head = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                       .where(audit_head.c.id == 1))).first()
            head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            while True:
                rows = (await conn.execute(select(audit).where(audit.c.seq > after).order_by(audit.c.seq)
                                           .limit(chunk))).mappings().all()
                if not rows:
                    break
                for r in rows:
                    row = dict(r)
                    seq = int(row["seq"])
                    checked += 1
                    if record_hash(row) != row["hash"]:
                        return VerifyReport(False, checked, head_seq, "altered", seq,
                                            "the record's content does not match its hash")
                    if row["prev_hash"] != prev1:
                        if prev2 is not None and row["prev_hash"] == prev2:
                            return VerifyReport(False, checked, head_seq, "inserted", last_seq,
                                                "this record is not part of the chain")
                        if seq > last_seq + 1:
                            return VerifyReport(False, checked, head_seq, "deleted", last_seq + 1,
                                                f"records {last_seq + 1}..{seq - 1} are missing")
                        return VerifyReport(False, checked, head_seq, "altered", last_seq,
                                            "the record was rewritten (its hash no longer links to the next)")
                    if seq != last_seq + 1:
                        return VerifyReport(False, checked, head_seq, "inserted", seq,
                                            "sequence numbers are not contiguous")
                    prev2, prev1, last_seq = prev1, row["hash"], seq
                after = last_seq
        if head_seq > last_seq:
            return VerifyReport(False, checked, head_seq, "deleted", last_seq + 1,
                                f"records {last_seq + 1}..{head_seq} are missing from the end")
        if head_seq < last_seq or (head_seq and head_hash != prev1):
            return VerifyReport(False, checked, head_seq, "inserted", head_seq + 1,
                                "records after the chain head were added outside the audit log")
        return VerifyReport(True, checked, head_seq)


def present(row: dict[str, Any], masked: bool) -> dict[str, Any]:
    """A record as shown to people: detail parsed; ID and phone numbers masked when `masked`."""
    out = {k: row[k] for k in ("seq", "ts", "actor", "actor_kind", "role", "tenant", "action", "resource",
                                "outcome", "ip", "prev_hash", "hash")}
    try:
        detail = orjson.loads(row["detail"])
    except orjson.JSONDecodeError:
        detail = row["detail"]
    out["detail"] = mask_json_text(detail) if masked else detail
    if masked:
        out["resource"] = mask_text(out["resource"])
        out["actor"] = mask_text(out["actor"])
    return out


async def purge_for_tests(engine: AsyncEngine) -> None:
    """Empty the audit trail (tests only). PostgreSQL: bypasses the append-only trigger as superuser."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(audit.delete())
        await conn.execute(audit_head.delete())
        await conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS_HASH))
