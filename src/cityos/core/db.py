"""The database engine: one SQLAlchemy Core code path over SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import orjson
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cityos.config import Settings, async_url

# Domains add SQLite scalar functions here (e.g. exact geometry predicates) so that their
# queries keep one SQL shape on both databases.
SQLITE_FUNCTIONS: list[tuple[str, int, Callable[..., Any]]] = []


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def register_sqlite_function(name: str, nargs: int, fn: Callable[..., Any]) -> None:
    if all(existing[0] != name for existing in SQLITE_FUNCTIONS):
        SQLITE_FUNCTIONS.append((name, nargs, fn))


def _configure_sqlite(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()
    # SQLAlchemy's aiosqlite adapter awaits the driver's create_function for us.
    for name, nargs, fn in SQLITE_FUNCTIONS:
        dbapi_conn.create_function(name, nargs, fn, deterministic=True)


def create_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.database_url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, json_serializer=json_dumps, json_deserializer=orjson.loads,
                                     pool_size=settings.db_pool_size, max_overflow=0)
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        return engine
    return create_async_engine(
        url,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        # The same ceiling as pool_size N plus N overflow, but every connection is kept once opened:
        # overflow connections are closed on release, so a burst above N paid a connect (and the
        # re-preparing of the hot statements) per checkout (127 new sessions in 20 s at concurrency 32).
        pool_size=2 * settings.db_pool_size,
        max_overflow=0,
        # No pre-ping: with asyncpg it costs three round trips per checkout. Recycling connections and
        # the pool's invalidation on a failed statement cover database restarts instead.
        pool_recycle=1800,
        # PostgreSQL's JIT spends seconds compiling the JSON-path predicates of q queries that run in
        # milliseconds without it.
        connect_args={"server_settings": {"jit": "off"}},
    )


class WriterLock(asyncio.Lock):
    """The process's SQLite writer lock: first come, first served, except that an urgent writer (a signal's
    phase command on its way to the lamps) goes before every writer still waiting. Ordinary writers queue
    behind each other (the readings' ingest commits back to back), and a command behind them waited seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._ordinary: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._held

    async def acquire(self, urgent: bool = False) -> Literal[True]:
        if not self._held and not self._urgent and not self._ordinary:
            self._held = True
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._ordinary
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._hand_on()  # handed the lock just as it was cancelled: the next writer has it
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(turn)
            raise
        return True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("Lock is not acquired.")
        self._hand_on()

    def _hand_on(self) -> None:
        for queue in (self._urgent, self._ordinary):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # the lock passes on held
                    return
        self._held = False

    @contextlib.asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        await self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()

    def turn(self, urgent: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """The lock taken in turn, or ahead of the ordinary writers waiting when `urgent`."""
        return self.urgent() if urgent else self


@contextlib.asynccontextmanager
async def write_transaction(engine: AsyncEngine, sqlite_lock: asyncio.Lock,
                            urgent: bool = False) -> AsyncIterator[AsyncConnection]:
    """A write transaction; on SQLite serialised by the process's write lock (one writer per file, and
    a transaction that waited on SQLite's own lock would hold the event loop's other writers up). An
    `urgent` one goes before the writers waiting (when the lock is the process's `WriterLock`)."""
    if engine.dialect.name == "sqlite":
        turn = sqlite_lock.turn(urgent) if isinstance(sqlite_lock, WriterLock) else sqlite_lock
        async with turn, engine.begin() as conn:
            yield conn
    else:
        async with engine.begin() as conn:
            yield conn


class WritingService:
    """A domain service over `engine` whose writes go through `write_transaction` with the process's
    SQLite writer lock (`write_lock_of(app)`)."""

    def __init__(self, engine: AsyncEngine, write_lock: asyncio.Lock) -> None:
        self.engine = engine
        self._lock = write_lock

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine, self._lock) as conn:
            yield conn


def write_lock_of(app: Any) -> asyncio.Lock:
    """The process's SQLite writer lock that every domain's `write_transaction` shares (set at start-up)."""
    lock: asyncio.Lock = app.state.write_lock
    return lock


def dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    """INSERT with the connection's dialect's ON CONFLICT clauses (PostgreSQL and SQLite spell them alike)."""
    if conn.dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"
