"""The audit trail: append-only, SHA-256 hash-chained, searchable with masked values.

Each record's hash is ``sha256(canonical JSON of its fields + the previous record's hash)``;
canonical JSON is orjson with sorted keys, the timestamp an ISO 8601 string with microseconds,
the detail object itself stored as the canonical text that was hashed. ``verify`` walks the chain
and reports the first altered, inserted or deleted record, and compares the end of the chain with
the chain head.

Appends are serialised so that concurrent writers keep one chain. On SQLite every append
transaction first writes the single-row chain head, which takes the database write lock at once.
On PostgreSQL each `AuditLog` remembers the head it last committed and chains a batch in Python
from it; the batch is then written together with a compare-and-set of the head row (``UPDATE …
WHERE seq = <expected> AND hash = <expected>``, which row-locks the head until commit, as ``SELECT
… FOR UPDATE`` does): one statement (head update + multi-row ``INSERT … SELECT FROM unnest``) for
small batches, ``COPY`` inside the same kind of transaction for large ones. If the head has moved
(another process appended, a repair), nothing is written and the batch is re-chained under
``SELECT … FOR UPDATE`` of the head. Within a process, `AuditLog.record` hands records to one
writer task that appends whatever has queued up as one batch (group commit); `record` returns only
after that commit (durable before acknowledged); `submit` does not wait, and `stop` commits
everything still queued.

Limits, honestly: an unkeyed chain proves integrity against anyone who cannot rewrite the whole
tail *and* the head. `cityos.security.audit_anchor` therefore signs checkpoints of the head (Ed25519)
into an append-only file outside the database (and the log), and `verify(anchor=…)` reports a
chain that no longer reaches or extends the latest checkpoint as ``truncated``.

Crash between a change and its audit record: administrative writes append their records with
`append_in`, in the change's own transaction; busy paths (entity writes, telemetry, submissions) use
`record` after their commit, so the chain's head is not a lock every write of the platform waits on.
A domain can find what a crash lost at start with `recorded` (submissions:
`ServiceDesk.reconcile_audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
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
from cityos.core.requestid import current_request_id
from cityos.security.masking import mask_json_text, mask_text
from cityos.security.models import GENESIS_HASH, audit, audit_head
from cityos.security.policy import Principal

log = logging.getLogger(__name__)

OUTCOMES = ("success", "failure", "denied", "error")


def ts_text(moment: datetime) -> str:
    # Same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") for years 1000..9999, at a fraction of the cost.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


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
        request_id = current_request_id()
        if request_id and "requestId" not in detail:
            detail["requestId"] = request_id  # ties the record to the request's log lines and error answer
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


def _rows(events: Sequence[AuditEvent], seq: int, prev: str) -> list[tuple[Any, ...]]:
    """The records for `events` chained after (`seq`, `prev`), as tuples in `COLUMNS` order.

    Same bytes hashed as `_row`/`record_hash`: the dict is built with its keys already in sorted
    order, so orjson needs no OPT_SORT_KEYS for it (the detail object is still sorted)."""
    out = []
    sha256, dumps, sort_keys, now = hashlib.sha256, orjson.dumps, orjson.OPT_SORT_KEYS, clock.now
    for event in events:
        seq += 1
        at = event.at or now()
        ts = at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        detail = dumps(event.detail, option=sort_keys, default=str).decode()
        actor, actor_kind, role, tenant = event.actor[:256], event.actor_kind[:16], event.role[:32], event.tenant[:256]
        action, resource, outcome, ip = event.action[:128], event.resource[:1024], event.outcome[:16], event.ip[:64]
        # keys in sorted order (see _SORTED_HASHED)
        digest = sha256(dumps({"action": action, "actor": actor, "actor_kind": actor_kind, "detail": detail,
                               "ip": ip, "outcome": outcome, "prev_hash": prev, "resource": resource,
                               "role": role, "seq": seq, "tenant": tenant, "ts": ts})).hexdigest()
        out.append((seq, ts, actor, actor_kind, role, tenant, action, resource, outcome, ip, detail, prev, digest))
        prev = digest
    return out


_SORTED_HASHED = ("action", "actor", "actor_kind", "detail", "ip", "outcome", "prev_hash", "resource", "role", "seq",
                  "tenant", "ts")
assert tuple(sorted(HASHED)) == _SORTED_HASHED
assert COLUMNS == ("seq", "ts", "actor", "actor_kind", "role", "tenant", "action", "resource", "outcome", "ip",
                   "detail", "prev_hash", "hash")

# PostgreSQL, one statement, one round trip, its own (implicit) transaction: move the chain head
# from (seq, hash) = ($3, $4) to ($1, $2) -- which row-locks it, like SELECT ... FOR UPDATE, until
# commit -- and insert the records only if that compare-and-set matched. A head moved by another
# process (or rewritten by hand) matches no row, nothing is inserted ("INSERT 0 0"), and the
# caller falls back to locking and re-reading the head.
_PG_CAS_INSERT = (
    "WITH head AS (UPDATE sec_audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 AND hash = $4 "
    "RETURNING id) "
    f"INSERT INTO sec_audit ({', '.join(COLUMNS)}) SELECT u.* FROM unnest($5::bigint[], "
    + ", ".join(f"${i}::text[]" for i in range(6, 6 + len(COLUMNS) - 1))
    + ") AS u WHERE EXISTS (SELECT FROM head)")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# From this many records, COPY instead of a multi-row INSERT (see `AuditLog._copy_cas`).
COPY_MIN = 128
_PG_LOCK_HEAD = "SELECT seq, hash FROM sec_audit_head WHERE id = 1 FOR UPDATE"
_PG_SET_HEAD = "UPDATE sec_audit_head SET seq = $1, hash = $2 WHERE id = 1"


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    head_seq: int
    problem: str | None = None  # altered | inserted | deleted | truncated | checkpoint
    seq: int | None = None
    detail: str = ""
    checkpoint: int | None = None  # seq of the signed checkpoint the chain was checked against

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
        self._pending: list[tuple[AuditEvent, asyncio.Future[int] | None]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._writer: asyncio.Task[None] | None = None
        self._direct: set[asyncio.Task[list[int]]] = set()
        # PostgreSQL: the chain head as of this process's last committed append (a hint, checked by
        # compare-and-set on every write; None = read it under lock).
        self._head: tuple[int, str] | None = None
        self._pg_lock = asyncio.Lock()  # one append at a time per AuditLog (the database serialises processes)

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
        if not self._sqlite:
            return await self._append_pg(events)
        async with self._lock, self.engine.begin() as conn:
            return await self._chain_into(conn, events)

    async def _chain_into(self, conn: AsyncConnection, events: Sequence[AuditEvent]) -> list[int]:
        """Lock the head in `conn`'s transaction, insert the chained records, move the head."""
        seq, prev = await self._lock_head(conn)
        rows = []
        for event in events:
            seq += 1
            row = _row(event, seq, prev)
            prev = row["hash"]
            rows.append(row)
        await conn.execute(insert(audit), rows)
        await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=prev))
        return [row["seq"] for row in rows]

    async def append_in(self, conn: AsyncConnection, events: Sequence[AuditEvent]) -> list[int]:
        """Append `events` inside the caller's transaction `conn`: the records commit if and only if
        the caller's change does, so a crash between the two cannot lose them.

        The chain head stays locked until the caller commits (a row lock on PostgreSQL; on SQLite the
        caller already holds the write lock, which is why the caller must write through the process's
        shared write lock). Meant for low-volume administrative writes; busy paths use `record`
        (group commit after the change's own commit)."""
        if not events:
            return []
        self._head = None  # this process's hint is stale once the caller commits
        return await self._chain_into(conn, events)

    async def _append_pg(self, events: Sequence[AuditEvent]) -> list[int]:
        """PostgreSQL: chain the batch in Python from the head as last seen by this process and
        write it with ONE statement (`_PG_CAS_INSERT`: head compare-and-set + multi-row insert,
        committed as one implicit transaction). Only when the head is unknown or has moved (another
        process appended; a repair) does it take the slow path: lock the head row FOR UPDATE,
        re-read it, re-chain, insert, move the head, commit."""
        async with self._pg_lock, self.engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            head, self._head = self._head, None  # forgotten unless this append is known to have committed
            if head is not None:
                rows = _rows(events, *head)
                if len(rows) >= COPY_MIN:
                    done = await self._copy_cas(conn, raw, rows, head)
                else:
                    status = await raw.execute(_PG_CAS_INSERT, rows[-1][0], rows[-1][-1], head[0], head[1],
                                               *(list(col) for col in zip(*rows, strict=True)))
                    if status not in (f"INSERT 0 {len(rows)}", "INSERT 0 0"):  # cannot happen: all or nothing
                        raise RuntimeError(f"audit append: unexpected status {status!r}")
                    done = status != "INSERT 0 0"
                if done:
                    self._head = (rows[-1][0], rows[-1][-1])
                    return [row[0] for row in rows]
            async with raw.transaction():
                locked = await raw.fetchrow(_PG_LOCK_HEAD)
                if locked is None:
                    # The head row went missing (a wiped table): restart from the newest record.
                    last = await raw.fetchrow("SELECT seq, hash FROM sec_audit ORDER BY seq DESC LIMIT 1")
                    await raw.execute("INSERT INTO sec_audit_head (id, seq, hash) VALUES (1, $1, $2) "
                                      "ON CONFLICT (id) DO NOTHING", *(last or (0, GENESIS_HASH)))
                    locked = await raw.fetchrow(_PG_LOCK_HEAD)
                rows = _rows(events, int(locked[0]), str(locked[1]))
                if len(rows) >= COPY_MIN:
                    await raw.copy_records_to_table("sec_audit", records=rows, columns=COLUMNS)
                else:
                    await raw.executemany(_PG_INSERT, rows)
                await raw.execute(_PG_SET_HEAD, rows[-1][0], rows[-1][-1])
            self._head = (rows[-1][0], rows[-1][-1])
            return [row[0] for row in rows]

    @staticmethod
    async def _copy_cas(conn: AsyncConnection, raw: Any, rows: list[tuple[Any, ...]], head: tuple[int, str]) -> bool:
        """Large batches: the same compare-and-set of the head, then COPY (a fraction of the
        server's per-row cost of an INSERT), in one explicit transaction of three round trips.
        False (rolled back, nothing written) when the head has moved."""
        seq, digest = rows[-1][0], rows[-1][-1]
        if not (_HEX64.fullmatch(head[1]) and _HEX64.fullmatch(digest)):
            return False  # never inline text that is not a hash into SQL: take the locked path
        try:
            status = await raw.execute(  # one simple-protocol round trip; integers and hex digits only
                f"BEGIN; UPDATE sec_audit_head SET seq = {int(seq)}, hash = '{digest}' "
                f"WHERE id = 1 AND seq = {int(head[0])} AND hash = '{head[1]}'")
            if status != "UPDATE 1":
                await raw.execute("ROLLBACK")
                return False
            await raw.copy_records_to_table("sec_audit", records=rows, columns=COLUMNS)
            await raw.execute("COMMIT")
            return True
        except BaseException:
            try:
                if raw.is_in_transaction():
                    await raw.execute("ROLLBACK")
            except BaseException:
                await conn.invalidate()  # never return a connection with an open transaction to the pool
            raise

    async def start(self) -> None:
        if self._writer is None:
            self._pending = []
            self._stopping = False
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write_loop(), name="audit-writer")

    async def stop(self) -> None:
        """Commit everything queued so far (awaited or not), then stop the writer task."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None  # from now on, appends go straight to the database
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await writer

    async def _write_loop(self) -> None:
        # A plain list and an Event rather than an asyncio.Queue: a producer's cost is one append;
        # the writer takes up to `batch_max` records at a time, as many as queued while it wrote.
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[:self.batch_max]
            del self._pending[:self.batch_max]
            try:
                seqs = await self.append_many([e for e, _ in batch])
            except Exception as exc:  # handed to every waiter; the loop keeps running
                log.exception("audit append failed (%d records)", len(batch))
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), seq in zip(batch, seqs, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(seq)

    def submit(self, event: AuditEvent) -> None:
        """Queue one record without waiting for its commit (callers that may hold a write lock).
        Committed by the writer's next batch; `stop` commits whatever is still queued."""
        if self._writer is None:
            task = asyncio.get_running_loop().create_task(self.append_many([event]))
            self._direct.add(task)  # a strong reference until it is done
            task.add_done_callback(self._direct.discard)
            return
        self._pending.append((event, None))
        self._wake.set()

    async def record(self, event: AuditEvent) -> int:
        """Append one record; returns once it is committed."""
        if self._writer is None:
            return (await self.append_many([event]))[0]
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((event, fut))
        self._wake.set()
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

    async def recorded(self, action: str, resources: Sequence[str], since: datetime) -> set[str]:
        """Those of `resources` that have an `action` record at or after `since` (for reconciliation)."""
        found: set[str] = set()
        wanted = list(dict.fromkeys(resources))
        async with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                rows = await conn.execute(select(audit.c.resource).where(
                    audit.c.action == action, audit.c.ts >= ts_text(since), audit.c.resource.in_(wanted[i:i + 500])))
                found.update(str(r[0]) for r in rows)
        return found

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(audit))).scalar_one())

    async def verify(self, chunk: int = 5000, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Walk the chain; report the first altered, inserted or deleted record.

        `anchor` = (seq, hash) of a trusted checkpoint kept outside the database (see
        `cityos.security.audit_anchor`): the chain must still hold that record with that hash,
        otherwise its tail was cut off (and perhaps re-grown): problem ``truncated``."""
        prev1, prev2 = GENESIS_HASH, None  # hashes of the last two records seen
        last_seq, checked, after = 0, 0, -1
        anchored: str | None = None  # the hash found at the anchor's seq
        async with self.engine.connect() as conn:
            head = (await conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                       .where(audit_head.c.id == 1))).first()
            head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            sha256, dumps = hashlib.sha256, orjson.dumps
            columns = [audit.c[c] for c in COLUMNS]
            while True:
                rows = (await conn.execute(select(*columns).where(audit.c.seq > after).order_by(audit.c.seq)
                                           .limit(chunk))).all()
                if not rows:
                    break
                for (seq, ts, actor, actor_kind, role, tenant, action, resource, outcome, ip, detail, prev_hash,
                     digest) in rows:
                    checked += 1
                    # = record_hash(row): the canonical dict, built with its keys in sorted order
                    if sha256(dumps({"action": action, "actor": actor, "actor_kind": actor_kind, "detail": detail,
                                     "ip": ip, "outcome": outcome, "prev_hash": prev_hash, "resource": resource,
                                     "role": role, "seq": seq, "tenant": tenant, "ts": ts})).hexdigest() != digest:
                        return VerifyReport(False, checked, head_seq, "altered", seq,
                                            "the record's content does not match its hash")
                    if prev_hash != prev1:
                        if prev2 is not None and prev_hash == prev2:
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
                    prev2, prev1, last_seq = prev1, digest, seq
                    if anchor is not None and seq == anchor[0]:
                        anchored = digest
                after = last_seq
        if anchor is not None and anchor[0] > 0:
            if last_seq < anchor[0]:
                return VerifyReport(False, checked, head_seq, "truncated", last_seq + 1,
                                    f"records {last_seq + 1}..{anchor[0]} were in the chain at the last checkpoint "
                                    "and are missing now")
            if anchored != anchor[1]:
                return VerifyReport(False, checked, head_seq, "truncated", anchor[0],
                                    f"record {anchor[0]} no longer has the hash of the last checkpoint: the chain "
                                    "does not extend the checkpointed head (its tail was cut off and re-written)")
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
