"""How long Ctrl-C (SIGINT) takes to stop `cityos demo`, against `cityos serve` stopped the same way.

Starts each in its own temporary data folder on free ports, waits until /health answers and then
`--warm` seconds more (the demo is then ingesting and its loops are busy), sends SIGINT and times
the exit. Prints one JSON line: seconds to exit, exit codes, whether a traceback was printed, and the
ratio demo/serve (the baseline is measured in the same run, on the same machine load).

    uv run --frozen python bench/demo_sigint_bench.py --warm 60 --devices 2000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "cityos.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(port: int, process: subprocess.Popen[bytes], seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"exited early with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("no /health answer")


def stop_time(command: list[str], env: dict[str, str], port: int, warm: float, log: Path) -> dict[str, object]:
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        started = wait_healthy(port, process, 600)
        time.sleep(warm)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    return {"seconds": round(took, 2), "exit_code": code, "traceback": "Traceback" in output,
            "start_seconds": round(started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=float, default=60.0)
    parser.add_argument("--devices", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
        serve_port = free_port()
        serve_env = {**base, "CITYOS_DATABASE_URL": f"sqlite:///{root / 'serve.db'}",
                     "CITYOS_DATA_DIR": str(root / "serve-data"), "CITYOS_INGEST_WORKERS": "0",
                     "CITYOS_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
        subprocess.run([*CLI, "db", "upgrade"], env=serve_env, check=True, capture_output=True)
        serve = stop_time([*CLI, "serve", "--host", "127.0.0.1", "--port", str(serve_port), "--no-migrate"],
                          serve_env, serve_port, args.warm, root / "serve.log")
        demo_port = free_port()
        demo = stop_time([*CLI, "demo", "--port", str(demo_port), "--mqtt-port", str(free_port()),
                          "--devices", str(args.devices), "--data-dir", str(root / "demo")],
                         {**base, "COLUMNS": "200"}, demo_port, args.warm, root / "demo.out")
    load = os.getloadavg()[0]
    print(json.dumps({"bench": "demo_sigint", "devices": args.devices, "warm_seconds": args.warm,
                      "load_1min": round(load, 1), "serve": serve, "demo": demo,
                      "ratio": round(float(demo["seconds"]) / max(float(serve["seconds"]), 0.01), 2)}))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
