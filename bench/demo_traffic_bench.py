"""CPU cost of `cityos demo --traffic sumo` against the same demo without it (same run, same machine).

    uv run python bench/demo_traffic_bench.py                  # 60 s warm-up, then 120 s measured, each mode
    uv run python bench/demo_traffic_bench.py --warmup 90 --seconds 180

Each mode starts `cityos demo` as a subprocess in a fresh data folder (--devices 200, no history replay,
CITYOS_DEMO_RESIDENTS=0 so the population load does not blur the figure), waits --warmup seconds, reads
the process's CPU time (user + system, /proc/<pid>/stat: libsumo runs inside the process) over --seconds
of wall time, then sends SIGINT and times the exit. One JSON line on stdout: CPU in cores (1.0 = one core
busy) per mode and the difference, which is what the SUMO traffic costs; plus, for sumo, the phase
commands the platform sent in the window and how many were acknowledged.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def commands(db: Path) -> tuple[int, int]:
    try:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT count(*), sum(rpc_status = 'succeeded') FROM traffic_phase_commands "
                               "WHERE outcome = 'applied'").fetchone()
    except sqlite3.Error:
        return 0, 0
    return int(row[0] or 0), int(row[1] or 0)


def run(mode: str, warmup: float, seconds: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"cityos-bench-{mode}-"))
    env = {**os.environ, "CITYOS_DEMO_RESIDENTS": "0", "CITYOS_DEMO_TRAFFIC": mode}
    env.pop("CITYOS_DATABASE_URL", None)
    env.pop("CITYOS_TRAFFIC_CONTROL_SECONDS", None)
    proc = subprocess.Popen([sys.executable, "-m", "cityos.cli", "demo", "--devices", "200", "--history-hours", "0",
                             "--port", "0", "--mqtt-port", "0", "--data-dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(warmup)
        db = folder / "cityos-demo.db"
        before, sent_before = cpu_seconds(proc.pid), commands(db)
        began = time.monotonic()
        time.sleep(seconds)
        used, wall, sent_after = cpu_seconds(proc.pid) - before, time.monotonic() - began, commands(db)
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        return {"mode": mode, "cores": round(used / wall, 3), "exitCode": code,
                "exitSeconds": round(time.monotonic() - asked, 1),
                "phaseCommands": sent_after[0] - sent_before[0], "acknowledged": sent_after[1] - sent_before[1]}
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    baseline = run("synthetic", args.warmup, args.seconds)
    print(f"synthetic: {baseline}", file=sys.stderr)
    sumo = run("sumo", args.warmup, args.seconds)
    print(f"sumo: {sumo}", file=sys.stderr)
    print(json.dumps({"bench": "demo_traffic", "loadBefore": round(load, 2), "baseline": baseline, "sumo": sumo,
                      "sumoCostCores": round(sumo["cores"] - baseline["cores"], 3)}))


if __name__ == "__main__":
    main()
