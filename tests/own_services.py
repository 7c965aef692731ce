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
