"""Servers that tests start for themselves on free ports (never the machine's shared ones)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class OwnMosquitto:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"persistence true\npersistence_location {workdir}/\nlistener {self.port} 127.0.0.1\n"
                             "allow_anonymous true\n"
                             # what deploy/iot.md asks for: Mosquitto's default (1000) drops QoS 1 messages
                             # beyond it while the ingest session is away
                             "max_queued_messages 1000000\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # mosquitto saves its persistence file on SIGTERM
            self.proc.wait(10)

    def restart(self, down_seconds: float = 1.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def own_mosquitto() -> Iterator[OwnMosquitto]:
    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="cityos-mosq-"))
    if os.geteuid() == 0:
        # mosquitto started as root drops to the mosquitto user, which must be able to write its database
        with contextlib.suppress(LookupError):
            shutil.chown(workdir, "mosquitto")
    broker = OwnMosquitto(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()  # always leave no broker of ours behind
        shutil.rmtree(workdir, ignore_errors=True)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A PostgreSQL 15 cluster of the test's own (initdb in a temporary folder, run as the postgres user)."""

    def __init__(self, workdir: Path, name: str = "data") -> None:
        self.dir = workdir / name
        self.port = free_port()
        self.log = workdir / f"{name}.log"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def init(self, settings: str = "") -> None:
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if settings:
            with (self.dir / "postgresql.conf").open("a") as conf:
                conf.write(settings)
        self.start()

    def clone_as_standby(self, primary: OwnPostgres, settings: str = "") -> None:
        """A streaming replica of `primary` (pg_basebackup -R writes standby.signal and primary_conninfo).
        `settings` are appended to the copied postgresql.conf (they apply once it is promoted)."""
        self._as_postgres(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                          "postgres", "-D", str(self.dir), "-R", "-X", "stream", "-c", "fast")
        if settings:
            with (self.dir / "postgresql.conf").open("a") as conf:
                conf.write(settings)
        self.start()

    def promote(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "promote")

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-w", "-o",
                          f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-m", mode, "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not (PG_BIN / "initdb").exists() or not shutil.which("runuser") or os.geteuid() != 0:
        pytest.skip("needs PostgreSQL 15 binaries and root (to run them as postgres)")
    workdir = Path(tempfile.mkdtemp(prefix="cityos-pg-"))
    shutil.chown(workdir, "postgres")
    pg = OwnPostgres(workdir)
    pg.init()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)
