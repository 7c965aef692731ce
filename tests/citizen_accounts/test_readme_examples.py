"""The README's NGSI-LD API examples, run as written against a real `cityos serve`.

The fenced ``bash`` blocks of the section "The NGSI-LD API" (with its temporal and subscription
parts) are taken from a fresh read of README.md and run, in order, in one bash with `set -euo
pipefail`. Only the port is changed (the README says: use the port the server printed), and `curl`
is made to fail on an HTTP error status (`--fail-with-body`), so a 401 or 400 fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from web_harness import CLI, free_port, running_server, server_env

ROOT = Path(__file__).resolve().parents[2]


def api_examples(readme: str) -> list[str]:
    section = readme.split("\n## The NGSI-LD API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_readme_api_examples_run_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None or shutil.which("uv", path=f"{os.environ['HOME']}/.local/bin:"
                                                  f"{os.environ.get('PATH', '')}") is None:
        pytest.skip("the README's commands need curl and uv")
    blocks = api_examples((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 3 and "client add" in blocks[0] and "curl -g" in blocks[0]
    port = free_port()
    env = {**server_env(tmp_path, port), "CITYOS_WEB": "0", "CITYOS_OUTBOUND_ALLOW": "127.0.0.1:9000"}
    subprocess.run([*CLI, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=300)
    script = "\n".join(["set -euo pipefail",
                        'curl() { command curl -sS --fail-with-body "$@"; echo; }',
                        *(block.replace("localhost:8000", f"localhost:{port}") for block in blocks)])
    with running_server(env, port, tmp_path / "server.log", start_timeout=180, poll_interval=0.5):
        shell_env = {**env, "PATH": f"{os.environ['HOME']}/.local/bin:{env.get('PATH', '')}"}
        run = subprocess.run(["bash", "-c", script], cwd=ROOT, env=shell_env, capture_output=True, text=True,
                             timeout=240)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        # The GET of the example found the entity the POST made, and the subscription was created.
        assert '"id":"urn:ngsi-ld:AirQualityObserved:school-7"' in run.stdout.replace(" ", "")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            # The anonymous rule as the README states it.
            assert http.get("/ngsi-ld/v1/entities", params={"type": "AirQualityObserved"}).status_code == 200
            assert http.post("/ngsi-ld/v1/entities", json={"id": "urn:x:1", "type": "T"}).status_code == 401
            assert http.get("/ngsi-ld/v1/subscriptions").status_code == 401
            assert http.get("/auth/clients").status_code == 401
