"""``central demo --via-server``: the whole loop through a real server on 127.0.0.1.

Read top to bottom: start ``central serve``, publish central-0, enrol one agent
per device, let the agents pull, train and upload *concurrently as separate
processes* (each has its own ``EDGE_AGENT_HOME``), consolidate the queue (DAC),
repeat with the next devices (which pull the new version), then pull an int8
artifact kit on a device and evaluate the final central version.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from central.evaluate_cli import evaluate_path
from central.init import init_central
from central.methods import ConsolidationConfig
from edge_agent.data.digits import write_split_digits

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoError(RuntimeError):
    """A step of the server demo failed; the message names it."""


def _run(args: list[str], env: dict, log, what: str) -> str:
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise DemoError(f"{what} failed ({p.returncode}): {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
    return p.stdout


def run_server_demo(
    out: Path,
    rounds: tuple[tuple[str, ...], ...] = (("dev1", "dev2", "dev3"), ("dev4", "dev5")),
    epochs: int = 30,
    steps: int | None = None,  # None: ConsolidationConfig's image default (KIND_DEFAULTS)
    kit_format: str = "onnx-int8",
    log=print,
) -> dict:
    t0 = time.perf_counter()
    steps = ConsolidationConfig(steps=steps).for_input("image").steps  # Split-Digits: an image model
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    write_split_digits(data)
    central0 = out / "central-0.safetensors"
    init_central("cnn-s", [str(i) for i in range(10)], central0, (1, 16, 16))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_dir = out / "server"
    env = {**os.environ, "CENTRAL_SERVER": url, "EDGE_PROGRESS": "0"}
    server = subprocess.Popen(
        [str(BIN / "central"), "serve", "--data-dir", str(server_dir), "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=open(out / "server.log", "w"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
    )
    report: dict = {"server": url, "rounds": []}
    try:
        _wait_healthy(url, server)
        env["CENTRAL_ADMIN_TOKEN"] = (server_dir / "admin-token").read_text().strip()
        _run([str(BIN / "central"), "publish", str(central0)], env, log, "publish central-0")
        log(f"server up at {url}; published central-0")
        for r, devices in enumerate(rounds, start=1):
            agents = {}
            for dev in devices:
                tok = json.loads(_run([str(BIN / "central"), "devices", "add", dev, "--json"], env, log, f"enrol {dev}"))
                home = out / "agents" / dev
                aenv = {**env, "EDGE_AGENT_HOME": str(home)}
                _run([str(BIN / "edge-agent"), "enroll", "--server", url, "--token", tok["token"], "--force"], aenv, log, f"{dev} enroll")
                agents[dev] = aenv
            log(f"round {r}: agents {', '.join(devices)} pull, train and upload concurrently")
            procs = {
                dev: subprocess.Popen(
                    [str(BIN / "edge-agent"), "run", "--data", str(data / dev), "--epochs", str(epochs)],
                    env=aenv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for dev, aenv in agents.items()
            }
            for dev, p in procs.items():
                _, err = p.communicate(timeout=1800)
                if p.returncode != 0:
                    raise DemoError(f"agent {dev} failed ({p.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}")
            queue = json.loads(_run([str(BIN / "central"), "queue", "--json"], env, log, "queue"))
            log(f"round {r}: {len(queue)} uploads queued; consolidating (DAC, {steps} steps each)")
            res = json.loads(
                _run([str(BIN / "central"), "consolidate", "--from-queue", "--steps", str(steps), "--json"], env, log,
                     "consolidate --from-queue")
            )
            log(f"round {r}: published version {res['version']} knowing classes {', '.join(res['trained_classes'])}")
            report["rounds"].append({"devices": list(devices), "queued": len(queue), **res})
        last = agents[rounds[-1][-1]]
        _run([str(BIN / "edge-agent"), "sync"], last, log, "sync")
        kit = _run([str(BIN / "edge-agent"), "pull-kit", "--format", kit_format, "--wait", "600"], last, log, "pull-kit")
        log(kit.strip().splitlines()[-1] if kit.strip() else "kit installed")
        from edge_agent.client.state import AgentHome

        model = AgentHome(Path(last["EDGE_AGENT_HOME"])).current_model()
        final = evaluate_path(Path(model), data / "test")
        report["final"] = {"version": report["rounds"][-1]["version"], "accuracy": final["accuracy"], "n": final["n"]}
        log(f"final central version: accuracy {final['accuracy']:.3f} on {final['n']} test images (all 10 classes)")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    report["wall_seconds"] = time.perf_counter() - t0
    (out / "server-demo.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoError("the server exited at start: see server.log")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise DemoError(f"the server did not become healthy within {timeout:.0f} s")
