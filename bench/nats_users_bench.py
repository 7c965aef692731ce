"""What NATS 2.9 pays for the device users CityOS generates (cityos.iot.nats_mqtt), per N devices.

    uv run --frozen python bench/nats_users_bench.py --devices 100000

Renders N device users (one bcrypt reused: parsing, not hashing, is measured), then on a nats-server
started here (loopback ports, temporary folder; never the shared 4222): the CPU seconds of
`nats-server -t` (parse and check the config), the running server's resident memory, and the CPU
seconds of one reload (SIGHUP) until its log says "Reloaded server configuration". Baseline in the same
run: the same server with no device users. One JSON line on stdout; nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cityos.iot.nats_mqtt import NatsMqttSettings, nats_password_hash, render
from own_services import free_port, wait_for_port


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(devices: int, folder: Path) -> dict[str, float]:
    secret = nats_password_hash("x" * 27)
    settings = NatsMqttSettings(folder / "users.conf", None, "cityos", secret)
    started = time.perf_counter()
    (folder / "users.conf").write_text(render(settings, [(f"aq-{i:07d}", secret) for i in range(devices)]))
    render_s = time.perf_counter() - started
    port, mqtt_port = free_port(), free_port()
    conf = folder / "nats.conf"
    conf.write_text(f'server_name: bench\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: "{folder / "js"}" }}\n'
                    f'mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\ninclude "users.conf"\n')
    before = children_cpu()
    subprocess.run(["nats-server", "-c", str(conf), "-t"], check=True, capture_output=True)
    parse_cpu = children_cpu() - before
    log = folder / "nats.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=sink, stderr=sink)
    try:
        if not wait_for_port(port, 300):
            raise RuntimeError("nats-server did not start")
        rss = rss_kib(server.pid)
        cpu = process_cpu(server.pid)
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 300
        while "Reloaded server configuration" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        reload_cpu = process_cpu(server.pid) - cpu
    finally:
        server.terminate()
        server.wait(30)
    return {"devices": devices, "file_mb": round((folder / "users.conf").stat().st_size / 1e6, 1),
            "render_s": round(render_s, 2), "parse_cpu_s": round(parse_cpu, 2), "rss_mb": round(rss / 1024),
            "reload_cpu_s": round(reload_cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cityos-nats-users-") as base, \
            tempfile.TemporaryDirectory(prefix="cityos-nats-users-") as users:
        baseline = measure(0, Path(base))
        result = measure(args.devices, Path(users))
    print(json.dumps({"bench": "nats_users", "baseline": baseline, **result,
                      "load": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
