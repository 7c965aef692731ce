"""API fuzzing with schemathesis against a real server process: no input may cause a 5xx."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(database_url: str) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos.cli", "serve", "--port", str(port), "--no-migrate", "--log-level", "error"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"server did not start: {process.stderr.read().decode() if process.stderr else ''}")
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_no_input_causes_a_server_error(live_server: str) -> None:
    """schemathesis's own CLI fuzzes every operation; it exits non-zero on any 5xx."""
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{live_server}/openapi.json", "--checks",
         "not_a_server_error", "--max-examples", "15", "--phases", "examples,fuzzing", "--no-color",
         "--suppress-health-check", "all",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested is not None and int(tested.group(1)) >= 20, result.stdout[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-2000:]
