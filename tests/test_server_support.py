"""Helpers for the server and client tests: a real server process on 127.0.0.1, CLI runners, a kit builder hook.

Not a test module (no tests inside); named ``test_server_*`` because those are the test files this part owns.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("CENTRAL_ADMIN_TOKEN", None)
    env.update(extra)
    return env


class ServerProc:
    """``python -m central.server serve`` as a child process; restartable on the same port and data dir.

    ``database_url`` None: the embedded SQLite file; ``workers`` > 1: that many processes on the port.
    It runs in its own process group, so :meth:`kill` reaches every worker.
    """

    def __init__(self, data_dir: Path, port: int | None = None, args: list[str] | None = None,
                 database_url: str | None = None, workers: int = 1):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.args = list(args or [])
        self.database_url = database_url
        self.workers = workers
        if database_url:
            self.args += ["--database-url", database_url]
        if workers != 1:
            self.args += ["--workers", str(workers)]
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProc:
        cmd = [sys.executable, "-m", "central.server", "serve", "--data-dir", str(self.data_dir),
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *self.args]
        self.proc = subprocess.Popen(cmd, env=env_with(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become healthy in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server and all its workers at once (a crash, not a stop)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=60)


def run_cli(module: str, *args: str, home: Path | None = None, server: ServerProc | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` (the real CLI) and return the finished process."""
    extra = {}
    if home is not None:
        extra["EDGE_AGENT_HOME"] = str(home)
    if server is not None:
        extra["CENTRAL_SERVER"] = server.url
        extra["CENTRAL_ADMIN_TOKEN"] = server.admin_token
    env = env_with(**extra)
    if server is None:
        env.pop("CENTRAL_ADMIN_TOKEN", None)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def agent(home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("edge_agent.client", *args, home=home)


def central(server: ServerProc, *args: str) -> subprocess.CompletedProcess:
    return run_cli("central.server", *args, server=server)


def enrol(server: ServerProc, home: Path, name: str) -> None:
    r = central(server, "devices", "add", name, "--json")
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["token"]
    r = agent(home, "enroll", "--server", server.url, "--token", token)
    assert r.returncode == 0, r.stderr


def make_central(path: Path, width: int = 4, extra: dict | None = None, seed: int = 0) -> str:
    """A tiny random cnn-s central bundle over the 10 digits (8x8 grey); returns its id."""
    from central.init import init_central

    if extra is None:
        return init_central("cnn-s", [str(i) for i in range(10)], path, input_shape=(1, 8, 8), seed=seed, width=width)
    from edge_agent.bundle import load_bundle, new_manifest, save_bundle

    init_central("cnn-s", [str(i) for i in range(10)], path, input_shape=(1, 8, 8), seed=seed, width=width)
    b = load_bundle(path)
    m = new_manifest(b.model, b.labels, b.input_spec, method="init", extra={**b.manifest.extra, **extra})
    return save_bundle(b.model, m, path)


def kit_builder(bundle_path: Path, fmt: str, out_dir: Path) -> None:
    """The real exporter, unless the bundle's manifest asks (tests only) for a failing or a broken kit."""
    from central.server.kits import export_kit
    from edge_agent.bundle import read_manifest

    hint = read_manifest(Path(bundle_path).read_bytes()).extra.get("test_kit")
    if hint == "fail":
        raise RuntimeError("export unavailable (test)")
    export_kit(bundle_path, fmt, out_dir)
    if hint == "break":
        # Checksums stay right (manifest.json is not in its own file list), the smoke inference fails:
        # the model gives 10 logits but the kit claims 11 labels.
        mpath = Path(out_dir) / "manifest.json"
        m = json.loads(mpath.read_text())
        m["labels"] = list(m["labels"]) + ["extra"]
        mpath.write_text(json.dumps(m))


def crafted_upload(base: Path, seed: int = 0, edit_tensors=None, **changes) -> bytes:
    """A device-like bundle derived from ``base`` with manifest fields replaced by ``changes``.

    Written with safetensors directly (checksum right, no checks on save), so it can
    hold what ``save_bundle`` refuses. A ``labels`` change of another length gets a head of that size.
    """
    import hashlib

    import torch
    from safetensors.torch import save as st_save

    from edge_agent.bundle import _data_section, load_bundle, new_manifest
    from edge_agent.models import create_model

    b = load_bundle(base)
    labels = changes.pop("labels", b.labels)
    model = b.model
    if len(labels) != len(b.labels):
        model = create_model(b.manifest.arch, len(labels), **b.manifest.arch_config)
        body = {k: v for k, v in b.model.state_dict().items() if not k.startswith("head.")}
        model.load_state_dict(body, strict=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.head.bias.add_(torch.randn_like(model.head.bias) * 0.01)
    m = new_manifest(model, labels, b.input_spec, trained_classes=["0"], parents=[b.id], method="train")
    for k, v in changes.items():
        setattr(m, k, v)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if edit_tensors is not None:
        edit_tensors(tensors)
    m.weights_sha256 = hashlib.sha256(_data_section(st_save(tensors))).hexdigest()
    return st_save(tensors, metadata={"manifest": m.to_json()})


def _huge_bias(tensors: dict) -> None:
    tensors["head.bias"][0] = 3e38  # finite in float32, but consolidating it overflows


def unconsolidatable_uploads(base: Path) -> dict[str, tuple[bytes, str]]:
    """Well-formed uploads derived from ``base`` that ``central consolidate`` refuses: name -> (bytes, field named)."""
    from edge_agent.bundle import load_bundle

    b = load_bundle(base)
    return {
        "a label with a newline": (crafted_upload(base, 1, labels=[*b.labels[:-1], b.labels[-1] + "\n"]), "label"),
        "no trained classes": (crafted_upload(base, 2, trained_classes=[]), "trained_classes"),
        "non-integer class_support": (crafted_upload(base, 3, extra={"class_support": {"0": "many"}}), "extra.class_support"),
        "extra not an object": (crafted_upload(base, 4, extra=["class_support"]), "extra"),
        "finite weights of 3e38": (crafted_upload(base, 5, edit_tensors=_huge_bias), "weights"),
    }


def wide_claim_upload(base: Path, width: int = 2500) -> bytes:
    """The tensors of a ``base``-sized model under a manifest claiming ``width``: costly if built before comparing."""
    from edge_agent.bundle import load_bundle

    cfg = load_bundle(base).manifest.arch_config
    return crafted_upload(base, 6, arch_config={**cfg, "width": width})


def refusal(base: Path, data: bytes) -> str:
    """The message the consolidation rule (:mod:`edge_agent.compat`) gives for ``data`` against the central ``base``."""
    from safetensors.torch import load as st_load

    from edge_agent.bundle import BundleError, read_manifest
    from edge_agent.compat import check_compatible, check_weights

    try:
        check_compatible(read_manifest(Path(base).read_bytes()), read_manifest(data))
        check_weights(st_load(data))
    except BundleError as e:
        return str(e)
    raise AssertionError("the consolidation rule accepts this bundle")


class RewritingMirror:
    """A mirror in front of a real server that serves GETs of other paths (``rewrite(path) -> path``), as a hostile cache could."""

    def __init__(self, upstream: str, rewrite):
        import http.server
        import threading

        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "range")}
                r = httpx.get(upstream + rewrite(self.path), headers=headers, timeout=60)
                mirror.served.append(self.path)
                self.send_response(r.status_code)
                for k in ("content-type", "content-range"):
                    if k in r.headers:
                        self.send_header(k, r.headers[k])
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args):
                pass

        self.served: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def peak_rss_mb(pid: int) -> float:
    """The highest resident set size process ``pid`` has had (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
