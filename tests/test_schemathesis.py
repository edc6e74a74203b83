"""Property-based API testing with schemathesis against a REAL server process on 127.0.0.1.

Every operation of the OpenAPI spec gets a bounded number of generated requests (valid and
not: boundary values, wrong types, random bodies) with the admin's token, and the upload
route with a device's; the answers must never be 5xx and must match the spec (status codes
and bodies). A fixed seed and deterministic generation, so a failure reproduces.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_server_support import ServerProc, central, enrol, make_central

MAX_EXAMPLES = 10
# The fuzzing phase runs until its time budget: seconds per run, so the file stays under a minute.
BUDGET_S = {"admin": 18, "device": 6}
CHECKS = "not_a_server_error,response_schema_conformance"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("schemathesis")
    # No kits: a generated rebuild request must not start an export in the background.
    s = ServerProc(work / "central-data", args=["--kit-formats", "", "--max-upload-mb", "1"])
    s.start()
    base = work / "central-0.safetensors"
    make_central(base)
    assert central(s, "publish", str(base)).returncode == 0
    home = work / "agent"
    enrol(s, home, "schema-pi")
    s.device_token = json.loads((home / "enrollment.json").read_text())["token"]
    s.work = work
    yield s
    s.stop()


def schemathesis_run(server: ServerProc, token: str, budget_s: int, *select: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "--checks", CHECKS,
           "--max-examples", str(MAX_EXAMPLES), "--seed", "1", "--generation-deterministic",
           "--phases", "examples,coverage,fuzzing", "--max-time", str(budget_s), "--request-timeout", "30",
           "--header", f"Authorization: Bearer {token}", "--no-color", "--workers", "1", *select]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=server.work)


@pytest.mark.parametrize("who", ["admin", "device"])
def test_every_operation_answers_within_its_spec(server, who):
    if who == "admin":  # the admin may call every route but the upload, which is a device's
        r = schemathesis_run(server, server.admin_token, BUDGET_S[who], "--exclude-path", "/v1/uploads")
    else:
        r = schemathesis_run(server, server.device_token, BUDGET_S[who], "--include-path", "/v1/uploads")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
