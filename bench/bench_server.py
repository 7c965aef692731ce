"""Shared helpers for the HTTP benchmarks (bench/hub_bench.py, bench/services_bench.py).

- a real CityOS server process: `free_port` to pick a port, `launch` to start it and wait until it
  answers, `stop_server` to stop it and its workers;
- `RawHttp`, a minimal HTTP/1.1 keep-alive client that costs the benchmark far less CPU per request
  than httpx (client, server and database share a 2-core machine);
- `CpuMeter`, the CPU used by the server's process tree, PostgreSQL and this process, from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# A body this large is written after the request head rather than copied onto it.
_COPY_BODY_BELOW = 64 * 1024
# Words in the process title of a PostgreSQL backend serving a connection (or an autovacuum worker).
_BACKEND_WORDS = (" idle", " SELECT", " INSERT", " UPDATE", " DELETE", " COPY", " BEGIN", " COMMIT", " VACUUM",
                  " ANALYZE", "127.0.0.1", "[local]", "autovacuum worker")


# ------------------------------------------------------------------------------------ the server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(command: list[str], env: dict[str, str], log_path: Path, port: int,
           timeout: float = 90.0) -> subprocess.Popen[bytes]:
    """Start `command` in its own process group (output to `log_path`) and wait for GET /health → 200."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"server did not answer /health:\n{log_path.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the whole group (uvicorn and its workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------ the HTTP client


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client: one connection, one request at a time.

    Per request it costs a small fraction of httpx's CPU, which matters on a 2-core machine where the
    client shares the CPU with the server and the database. The `headers` given here go with every
    request (e.g. a bearer token), those given to `request` with that request only. An answer may have a
    Content-Length or be chunked.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        fixed = [f"Host: {host}:{port}\r\n", *(f"{k}: {v}\r\n" for k, v in (headers or {}).items())]
        self._fixed_headers = "".join(fixed).encode()

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        reused = self.writer is not None
        try:
            return await self._request(method, path, body, headers)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            # The server may close an idle keep-alive connection (uvicorn: after 5 s); retry once on a
            # fresh one, as any HTTP client does, but only if nothing at all came back.
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            return await self._request(method, path, body, headers)

    async def _request(self, method: str, path: str, body: bytes | None,
                       headers: dict[str, str] | None) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        reader, writer = self.reader, self.writer
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._fixed_headers]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode())
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        try:
            if body is not None and len(body) >= _COPY_BODY_BELOW:
                writer.write(b"".join(head))
                writer.write(body)
            else:
                writer.write(b"".join(head) + (body or b""))
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length, chunked, close = 0, False, False
            for line in raw.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    data = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    parts.append(data[:-2])
                payload = b"".join(parts)
            else:
                payload = await reader.readexactly(length) if length else b""
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# ------------------------------------------------------------------------------------ CPU use


class CpuMeter:
    """CPU seconds used so far, from /proc, by: the server (the process `server_pid` and its descendants);
    PostgreSQL, i.e. the backends serving `database` (None: none) and, with `shared_postgres`, also
    PostgreSQL's background processes that serve every database (checkpointer, walwriter, ...); this
    process ("client"); and the whole machine ("busy").

    A `snapshot()` holds two views, for the two ways of comparing snapshots:

    - per process, "procs": pid -> (kind, its own user + system CPU), for `cores(before, after)`: each
      process's CPU in between, in cores, plus "other", the machine's busy time minus ours (so it also
      counts processes that came and went, e.g. other people's test runs);
    - totals to subtract directly: "server" (and "server_sys", its kernel part) and "postgres", which
      include the CPU of the children a process has reaped (e.g. a worker uvicorn replaced), so that it
      does not vanish from the sum; "client", this process's `time.process_time()`; and "server_pids",
      the server's processes at the time.
    """

    def __init__(self, server_pid: int | None, database: str | None, *, shared_postgres: bool = False) -> None:
        self.server_pid = server_pid
        self.database = database
        self.shared_postgres = shared_postgres
        self.tick = os.sysconf("SC_CLK_TCK")

    def _classify(self, pid: int, comm: str, me: int, server: set[int]) -> str | None:
        if pid == me:
            return "client"
        if pid in server:
            return "server"
        if comm != "postgres":
            return None
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        # A backend's title reads "postgres: user database host(port) activity", NUL-padded.
        if self.database and f" {self.database} " in title:
            return "postgres"
        if self.shared_postgres and not any(word in title for word in _BACKEND_WORDS):
            return "postgres"
        return None

    def snapshot(self) -> dict[str, Any]:
        stats: dict[int, tuple[int, str, list[int]]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                raw = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            comm = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2:].split()
            # ppid; utime, stime, cutime, cstime (cutime + cstime: the CPU of children it has reaped)
            stats[int(name)] = (int(fields[1]), comm, [int(x) for x in fields[11:15]])
        server: set[int] = set()
        if self.server_pid is not None:
            server.add(self.server_pid)
            grew = True
            while grew:
                grew = False
                for pid, (ppid, *_rest) in stats.items():
                    if ppid in server and pid not in server:
                        server.add(pid)
                        grew = True
        me = os.getpid()
        procs: dict[int, tuple[str, float]] = {}
        totals = {"server": 0.0, "server_sys": 0.0, "postgres": 0.0}
        for pid, (_ppid, comm, (utime, stime, cutime, cstime)) in stats.items():
            kind = self._classify(pid, comm, me, server)
            if kind is None:
                continue
            procs[pid] = (kind, (utime + stime) / self.tick)
            if kind != "client":
                totals[kind] += (utime + stime + cutime + cstime) / self.tick
                if kind == "server":
                    totals["server_sys"] += (stime + cstime) / self.tick
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / self.tick
        return {"procs": procs, "busy": busy, "t": time.perf_counter(), **totals, "client": time.process_time(),
                "server_pids": frozenset(server)}

    @staticmethod
    def cores(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
        """Per-process CPU between two snapshots, in cores, by kind; "other" and the wall time besides."""
        wall = after["t"] - before["t"]
        used = {"client": 0.0, "server": 0.0, "postgres": 0.0}
        for pid, (kind, cpu) in after["procs"].items():
            previous = before["procs"].get(pid)
            used[kind] += cpu - (previous[1] if previous and previous[0] == kind else 0.0)
        busy = after["busy"] - before["busy"]
        out = {k: round(v / wall, 2) for k, v in used.items()}
        out["other"] = round(max(0.0, busy - sum(used.values())) / wall, 2)
        out["wall_s"] = round(wall, 1)
        return out

    async def wait_quiet(self, max_wait: float, threshold: float = 0.3) -> float:
        """Wait (at most max_wait s) until processes other than ours use < threshold cores; return the last level."""
        deadline = time.perf_counter() + max_wait
        while True:
            before = self.snapshot()
            await asyncio.sleep(1.0)
            other = self.cores(before, self.snapshot())["other"]
            if other < threshold or time.perf_counter() >= deadline:
                return other
