"""NATS servers with JetStream that tests and benchmarks start for themselves: Debian's `nats-server`,
on free loopback ports, with their storage in a temporary folder (never the machine's shared 4222)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from own_services import free_port, wait_for_port


class NatsNode:
    def __init__(self, name: str, workdir: Path, port: int, cluster_port: int, routes: list[int]) -> None:
        self.name, self.port, self.cluster_port = name, port, cluster_port
        self.conf = workdir / f"{name}.conf"
        store = workdir / name
        lines = [f"server_name: {name}", f"listen: 127.0.0.1:{port}",
                 f'jetstream {{ store_dir: "{store}" }}']
        if routes:
            urls = ", ".join(f"nats-route://127.0.0.1:{r}" for r in routes)
            lines.append(f"cluster {{ name: cityos-test, listen: 127.0.0.1:{cluster_port}, routes: [{urls}] }}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return  # running already (a test that meant to kill it failed first)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["nats-server", "-c", str(self.conf)], stdout=log, stderr=log)
        if not wait_for_port(self.port, 15):
            raise RuntimeError(f"nats-server {self.name} did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the node dies as a machine would, with no chance to hand over."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class NatsCluster:
    """`size` nodes; with size 1, a plain JetStream server."""

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cityos-nats-"))
        ports = [free_port() for _ in range(size)]
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [NatsNode(f"n{i}", self.dir, ports[i], cluster_ports[i],
                               cluster_ports if size > 1 else []) for i in range(size)]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        time.sleep(0.5 if len(self.nodes) > 1 else 0)  # routes connect; JetStream elects its meta leader
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
