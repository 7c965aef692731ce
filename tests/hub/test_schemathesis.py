"""API fuzzing with schemathesis against a real server process, as each kind of caller.

No input may cause a 5xx, and the fuzzing must get past the access checks: run without a token,
most requests stop at 401 and the handlers behind them are never exercised. So every operation is
fuzzed as an anonymous caller, a citizen, an official, an operator and a sys_admin (real signed
tokens), and for each role the operations that answered something other than 401/403 are counted
from schemathesis's HAR report. A privileged role that reaches too few operations fails the test
(a broken token, a new blanket refusal), as does any 5xx.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from auth_tokens import LONG_AGO, LONG_TTL

# Examples per operation and role: five roles × ~165 operations; keep the whole test to a few minutes.
MAX_EXAMPLES = 4
# role → (claims, the least share of all operations that must answer something other than 401/403 at
# least once, the least share of all responses that must be other than 401/403). Measured on both
# databases with MAX_EXAMPLES = 4: operations reached anonymous 35%, citizen 51%, official 61%, operator
# 69%, sys_admin 87%; responses past the access check citizen 47%, official 64%, operator 73%,
# sys_admin 93%. The thresholds sit below that so the random inputs of a run do not fail it, while a
# broken token or a new blanket refusal does.
ROLES: dict[str, tuple[dict[str, Any] | None, float, float]] = {
    "anonymous": (None, 0.25, 0.0),
    "citizen": ({"role": "citizen"}, 0.40, 0.35),
    "official": ({"role": "official", "dep": "transport", "deps": ["transport"]}, 0.50, 0.50),
    "operator": ({"role": "operator"}, 0.55, 0.55),
    "sys_admin": ({"role": "sys_admin"}, 0.75, 0.80),
}
METHODS = ("get", "put", "post", "patch", "delete")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def data_dir_for_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-data")


@pytest.fixture(scope="module")
def live_server(database_url: str, data_dir_for_server: Path) -> Iterator[str]:
    port = _free_port()
    # Its own data dir: the token-signing key the tokens below are minted with, uploads made by the fuzzer.
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_DATA_DIR": str(data_dir_for_server)}
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


def _token(data_dir: Path, claims: dict[str, Any]) -> str:
    """A token the server accepts: signed with the key in its data dir (made by whichever side starts first)."""
    from cityos.security.settings import SecuritySettings
    from cityos.security.tokens import TokenIssuer, load_signing_keys

    settings = SecuritySettings(data_dir=data_dir)
    issuer = TokenIssuer(settings, load_signing_keys(settings))
    subject = uuid.uuid4().hex
    full = {"kind": "user", "usr": f"fuzz-{claims['role']}-{subject[:6]}", "tnt": "", "dep": None, "deps": [],
            "dis": [], "sid": uuid.uuid4().hex, "mfa": True, **claims}
    token, _jti, _ttl = issuer.issue(subject, full, ttl=LONG_TTL, now=LONG_AGO)
    return str(token)


def _operations(base: str) -> list[tuple[str, re.Pattern[str]]]:
    spec = httpx.get(f"{base}/openapi.json", timeout=30).json()
    out = []
    for path, item in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        out += [(f"{method.upper()} {path}", pattern) for method in item if method in METHODS]
    return out


def _reached(har: Path, operations: list[tuple[str, re.Pattern[str]]]) -> tuple[set[str], dict[int, int]]:
    """Operations that answered at least once with something other than 401/403; counts per status."""
    entries = orjson.loads(har.read_bytes())["log"]["entries"]
    reached: set[str] = set()
    statuses: dict[int, int] = {}
    for entry in entries:
        status = int(entry["response"]["status"])
        statuses[status] = statuses.get(status, 0) + 1
        if status in (401, 403):
            continue
        method, path = entry["request"]["method"].upper(), urlsplit(entry["request"]["url"]).path
        # The most specific template first: /entities/{id}/attrs before /entities/{id}.
        for name, pattern in sorted(operations, key=lambda op: -len(op[0])):
            if name.startswith(method + " ") and pattern.match(path):
                reached.add(name)
                break
    return reached, statuses


def _failure_report(stdout: str, har: Path) -> str:
    """What a failed run found: its FAILURES section and the 5xx requests of its HAR (the list of
    mismatched operations that ends schemathesis's output would push them out of a tail)."""
    start = stdout.find("FAILURES")
    end = stdout.find("WARNINGS", start) if start >= 0 else -1
    failures = stdout[start:end if end > start else start + 6000] if start >= 0 else stdout[-3000:]
    server_errors = []
    if har.exists():
        for entry in orjson.loads(har.read_bytes())["log"]["entries"]:
            if int(entry["response"]["status"]) >= 500:
                request = entry["request"]
                body = (request.get("postData") or {}).get("text", "")[:500]
                server_errors.append(f"{request['method']} {request['url']} {body}")
    return failures[:8000] + "\n5xx requests:\n" + "\n".join(server_errors[:10])


@pytest.mark.parametrize("role", list(ROLES))
def test_no_input_causes_a_server_error(live_server: str, data_dir_for_server: Path, tmp_path: Path,
                                        role: str) -> None:
    """schemathesis's own CLI fuzzes every operation as `role`; it exits non-zero on any 5xx."""
    claims, least_operations, least_responses = ROLES[role]
    har = tmp_path / f"{role}.har"
    auth = ["-H", f"Authorization: Bearer {_token(data_dir_for_server, claims)}"] if claims else []
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{live_server}/openapi.json", "--checks",
         "not_a_server_error", "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,fuzzing", "--no-color",
         "--suppress-health-check", "all", "--request-timeout", "30", "--report", "har",
         "--report-har-path", str(har), *auth],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, _failure_report(result.stdout, har) + result.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested is not None and int(tested.group(1)) >= 20, result.stdout[-2000:]
    operations = _operations(live_server)
    reached, statuses = _reached(har, operations)
    share = len(reached) / len(operations)
    total = sum(statuses.values())
    past_auth = sum(n for status, n in statuses.items() if status not in (401, 403)) / total
    summary = (f"{role}: {len(reached)}/{len(operations)} operations reached ({share:.0%}), "
               f"{past_auth:.0%} of {total} responses past the access check; statuses {statuses}")
    print(summary)
    assert not any(status >= 500 for status in statuses), summary
    assert share >= least_operations, summary + f"; not reached: {sorted({n for n, _ in operations} - reached)}"
    assert past_auth >= least_responses, summary
