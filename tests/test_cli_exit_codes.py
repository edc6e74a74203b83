"""The exit codes of docs/cli.md, each from a real failure: one line ``error: ...``, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from central.cli import app as central_app
from edge_agent.cli import app as agent_app
from edge_agent.cli_support import EXIT_CODE_OF_ERROR, exit_code_of
from edge_agent.client.http import CentralClient
from edge_agent.client.state import AgentHome, Enrollment


def invoke(app, args: list[str], **env: str):
    return CliRunner().invoke(app, args, env={"EDGE_DCL_TRACEBACK": "", **env})


def one_line_error(r, code: int, needle: str, prefix: str = "error:") -> None:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and needle in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enrolled_home(tmp_path, server: str):
    home = tmp_path / "agent"
    AgentHome(home).save_enrollment(Enrollment(server=server, device="test-pi", token="dev_x", public_key="A" * 44))
    return home


@pytest.fixture
def central_says(monkeypatch):
    """A stand-in central on 127.0.0.1 answering every GET with one (status, JSON body)."""
    answer: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status, body = answer["reply"]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def says(status: int, body) -> str:
        answer["reply"] = (status, body)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield says
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------------------------------------ 2


def test_infer_on_a_missing_kit_folder_is_bad_input(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    r = invoke(agent_app, ["infer", str(tmp_path / "no-kit"), str(tmp_path / "x.png")])
    one_line_error(r, 2, "no-kit")


def test_status_when_not_enrolled_is_bad_input(tmp_path):
    r = invoke(agent_app, ["status"], EDGE_AGENT_HOME=str(tmp_path))
    one_line_error(r, 2, "not enrolled")


def test_a_bad_option_value_is_bad_input(tmp_path):
    # Our own check (ValueError) and click's usage error both exit 2.
    r = invoke(central_app, ["demo", "--out", str(tmp_path / "d"), "--modality", "video"])
    one_line_error(r, 2, "--modality must be image or audio")
    r = invoke(agent_app, ["infer", str(tmp_path), str(tmp_path), "--top-k", "0"])
    assert r.exit_code == 2


def test_a_missing_extra_inside_a_command_is_2(tmp_path, monkeypatch):
    import edge_agent.runtime

    def no_runtime(*a, **k):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(edge_agent.runtime, "infer", no_runtime)
    r = invoke(agent_app, ["infer", str(tmp_path), str(tmp_path)])
    one_line_error(r, 2, "pip install 'edge-dcl[onnx]'")


# ------------------------------------------------------------------------------------------------ 75


def test_pull_against_a_closed_port_is_a_temporary_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(CentralClient, "_delay", lambda self, attempt: 0.0)  # retries without the backoff sleeps
    home = enrolled_home(tmp_path, f"http://127.0.0.1:{free_port()}")
    r = invoke(agent_app, ["pull"], EDGE_AGENT_HOME=str(home))
    one_line_error(r, 75, "unreachable")


def test_admin_command_against_a_closed_port_is_a_temporary_failure(monkeypatch):
    monkeypatch.setattr(CentralClient, "_delay", lambda self, attempt: 0.0)
    r = invoke(central_app, ["queue", "--server", f"http://127.0.0.1:{free_port()}", "--admin-token", "adm_x"])
    one_line_error(r, 75, "unreachable")


# ------------------------------------------------------------------------------------------------ 1


def test_a_central_that_says_no_is_a_refusal(tmp_path, central_says):
    home = enrolled_home(tmp_path, central_says(401, {"detail": "device token revoked"}))
    r = invoke(agent_app, ["pull"], EDGE_AGENT_HOME=str(home))
    one_line_error(r, 1, "central answered 401: device token revoked")


def test_an_unsigned_release_is_a_refusal_not_bad_input(tmp_path, central_says):
    # TrustError is a ValueError: the table puts it before ValueError.
    home = enrolled_home(tmp_path, central_says(200, {"statement": {}, "signature": ""}))
    r = invoke(agent_app, ["pull"], EDGE_AGENT_HOME=str(home))
    one_line_error(r, 1, "refusing an unsigned model release")


# ------------------------------------------------------------------------------------------------ 130, 70


def test_ctrl_c_is_130(tmp_path, monkeypatch):
    import edge_agent.runtime

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(edge_agent.runtime, "infer", interrupted)
    r = invoke(agent_app, ["infer", str(tmp_path), str(tmp_path)])
    one_line_error(r, 130, "run the same command again", prefix="interrupted")


def test_a_bug_is_one_line_and_70_unless_the_traceback_is_asked_for(tmp_path, monkeypatch):
    import edge_agent.runtime

    def bug(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(edge_agent.runtime, "infer", bug)
    r = invoke(agent_app, ["infer", str(tmp_path), str(tmp_path)])
    one_line_error(r, 70, "internal error, RuntimeError: boom")
    r = invoke(agent_app, ["infer", str(tmp_path), str(tmp_path)], EDGE_DCL_TRACEBACK="1")
    assert isinstance(r.exception, RuntimeError)


# ------------------------------------------------------------------------------------------------ the table


def test_every_error_class_in_the_table_exists_and_maps_to_its_code():
    import importlib

    for where, code in EXIT_CODE_OF_ERROR:
        module, name = where.split(":")
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, BaseException), where
        e = cls.__new__(cls)
        assert exit_code_of(e) == code, where


def test_the_wrapper_imports_no_heavy_module():
    code = "import sys, edge_agent.cli, central.cli; print(sorted(m for m in ('torch', 'httpx', 'cryptography') if m in sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


@pytest.mark.parametrize("app", [agent_app, central_app], ids=["edge-agent", "central"])
def test_version(app):
    r = invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"edge-dcl {version('edge-dcl')}"
