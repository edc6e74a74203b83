"""Reliability of the central server on loopback: concurrency, crash safety, bad input.

Run:  .venv/bin/python benchmarks/server_reliability.py [--devices 50] [--pulls 500]

1. ``devices`` agents upload distinct fine-tuned bundles at the same time;
   every upload must be acknowledged and present, byte for byte, in the queue.
2. ``pulls`` verified pulls (signed statement + download + sha256) from
   ``devices`` threads: zero lost or corrupted; p50/p99 latency.
3. The server is SIGKILLed in the middle of a second wave of uploads and
   restarted: the registry must be consistent (SQLite integrity check, every
   row's blob present, every blob's bytes hashing to its name, no temp file
   left) and every upload acknowledged before the kill must be there.
4. Bad inputs (truncated, bit-flipped, NaN weights, oversized, wrong token)
   are each rejected and the server keeps serving.

Everything runs on 127.0.0.1 with bounded loops. Writes
``benchmarks/results/server-reliability/server-reliability.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from test_server_support import ServerProc, make_central  # noqa: E402

from edge_agent.bundle import load_bundle, new_manifest, save_bundle  # noqa: E402
from edge_agent.client.http import CentralClient, CentralError, CentralUnreachable  # noqa: E402
from edge_agent.client.trust import MODEL_FORMAT, verify_release  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "server-reliability"


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``, in the values' unit."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def device_bundles(base: Path, out_dir: Path, n: int, offset: int) -> list[bytes]:
    """``n`` distinct bundles fine-tuned (nudged) from ``base``, as a device would upload."""
    b = load_bundle(base)
    out = []
    for i in range(n):
        torch.manual_seed(offset + i)
        model = load_bundle(base).model
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        m = new_manifest(model, b.labels, b.input_spec, trained_classes=["0"], parents=[b.id], method="train")
        path = out_dir / f"dev-{offset + i}.safetensors"
        save_bundle(model, m, path)
        out.append(path.read_bytes())
    return out


def enrol_devices(server: ServerProc, n: int, prefix: str) -> list[str]:
    tokens = []
    with server.admin() as c:
        for i in range(n):
            enr = c.post("/v1/admin/devices", json={"name": f"{prefix}-{i}"}).json()["token"]
            tokens.append(httpx.post(server.url + "/v1/enroll", json={"token": enr}).json()["token"])
    return tokens


def concurrent_uploads(server: ServerProc, tokens: list[str], bundles: list[bytes]) -> dict:
    lat, acked, errors = [], [], []
    lock = threading.Lock()

    def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            with CentralClient(server.url, tokens[i], retries=3) as c:
                row, _dup = c.upload_bundle(bundles[i])
            with lock:
                lat.append(time.perf_counter() - t0)
                acked.append(row["bundle_id"])
        except Exception as e:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(bundles)) as ex:
        list(ex.map(one, range(len(bundles))))
    wall = time.perf_counter() - t0
    with server.admin() as c:
        queued = {u["bundle_id"] for u in c.get("/v1/admin/queue").json()}
        # Byte-for-byte: what the admin reads back hashes to the id the device computed.
        corrupted = 0
        for u in c.get("/v1/admin/queue").json():
            if hashlib.sha256(c.get(f"/v1/admin/uploads/{u['id']}/blob").content).hexdigest() != u["bundle_id"]:
                corrupted += 1
    expected = {hashlib.sha256(b).hexdigest() for b in bundles}
    return {
        "uploads": len(bundles), "acknowledged": len(acked), "errors": errors[:5], "n_errors": len(errors),
        "lost": len(expected - queued), "corrupted": corrupted, "wall_s": round(wall, 3),
        "latency_ms": {"p50": round(pct(lat, 50) * 1000, 1), "p99": round(pct(lat, 99) * 1000, 1),
                       "max": round(max(lat) * 1000, 1)} if lat else None,
        "bundle_bytes": len(bundles[0]),
    }


def concurrent_pulls(server: ServerProc, tokens: list[str], n: int, public_key: str) -> dict:
    lat, bad, errors = [], [], []
    lock = threading.Lock()

    def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            with CentralClient(server.url, tokens[i % len(tokens)], retries=3) as c:
                rel = c.get_json("/v1/versions/current")
                st = verify_release(rel, public_key, "model", fmt=MODEL_FORMAT)
                body = c.request("GET", f"/v1/blobs/{st.sha256}").content
            ok = hashlib.sha256(body).hexdigest() == st.sha256
            with lock:
                lat.append(time.perf_counter() - t0)
                if not ok:
                    bad.append(i)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(tokens)) as ex:
        list(ex.map(one, range(n)))
    wall = time.perf_counter() - t0
    return {"pulls": n, "threads": len(tokens), "ok": len(lat) - len(bad), "corrupted": len(bad),
            "lost": n - len(lat), "errors": errors[:5], "wall_s": round(wall, 3),
            "pulls_per_s": round(n / wall, 1),
            "latency_ms": {"p50": round(pct(lat, 50) * 1000, 1), "p99": round(pct(lat, 99) * 1000, 1),
                           "max": round(max(lat) * 1000, 1)} if lat else None}


def check_consistency(data_dir: Path) -> dict:
    """Integrity of the registry as found on disk (run while the server is up, read-only)."""
    db = sqlite3.connect(f"file:{data_dir / 'registry.sqlite'}?mode=ro", uri=True)
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    rows = [r[0] for r in db.execute("SELECT bundle_id FROM uploads UNION SELECT bundle_id FROM versions "
                                     "UNION SELECT blob_id FROM kits WHERE blob_id IS NOT NULL")]
    db.close()
    blobs = {p.name: p for p in (data_dir / "blobs").rglob("*") if p.is_file()}
    missing = [r for r in rows if r not in blobs]
    bad_hash = [n for n, p in blobs.items() if hashlib.sha256(p.read_bytes()).hexdigest() != n]
    unreferenced = [n for n in blobs if n not in set(rows)]
    tmp_left = [p.name for p in (data_dir / "tmp").iterdir()]
    return {"sqlite_integrity": integrity, "rows_with_blobs": len(rows), "missing_blobs": len(missing),
            "blobs_not_matching_their_name": len(bad_hash), "unreferenced_blobs": len(unreferenced),
            "temp_files_left": len(tmp_left)}


def crash_during_uploads(server: ServerProc, tokens: list[str], bundles: list[bytes], kill_after: int) -> dict:
    """Upload ``bundles`` concurrently and SIGKILL the server once ``kill_after`` were acknowledged."""
    acked: list[str] = []
    failed = 0
    lock = threading.Lock()
    killed = threading.Event()

    def one(i: int) -> None:
        nonlocal failed
        try:
            # No retries: after the kill nothing is listening, and we want to know exactly what was acknowledged.
            with CentralClient(server.url, tokens[i], retries=0, timeout=30) as c:
                row, _ = c.upload_bundle(bundles[i])
            with lock:
                acked.append(row["bundle_id"])
                if len(acked) >= kill_after and not killed.is_set():
                    killed.set()
                    os.kill(server.proc.pid, signal.SIGKILL)
        except (CentralUnreachable, CentralError, httpx.HTTPError):
            with lock:
                failed += 1

    with ThreadPoolExecutor(len(bundles)) as ex:
        list(ex.map(one, range(len(bundles))))
    if not killed.is_set():
        os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.proc = None
    # Unacknowledged writes may have left temp files or an orphan blob: look before restarting.
    at_kill = check_consistency(server.data_dir)
    t0 = time.perf_counter()
    server.start()
    restart_s = time.perf_counter() - t0
    with server.admin() as c:
        present = {u["bundle_id"] for u in c.get("/v1/admin/queue", params={"status": "all"}).json()}
    return {"in_flight": len(bundles), "acknowledged_before_kill": len(acked), "failed_or_cut": failed,
            "acknowledged_missing_after_restart": len(set(acked) - present),
            "on_disk_at_kill": at_kill, "restart_to_healthy_s": round(restart_s, 2),
            "consistency_after_restart": check_consistency(server.data_dir)}


def bad_inputs(server: ServerProc, token: str, good: bytes, max_bytes: int) -> dict:
    from test_server import _nan_bundle  # the same poisoned bundle the tests use

    flipped = bytearray(good)
    flipped[-10] ^= 1
    base = server.data_dir.parent / "central-0.safetensors"
    cases = {"truncated": good[: len(good) // 2], "bit_flipped": bytes(flipped), "nan_weights": _nan_bundle(base),
             "oversized": b"\0" * (max_bytes + 1)}
    out = {}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for name, body in cases.items():
            r = c.post("/v1/uploads", content=body)
            out[name] = {"status": r.status_code, "detail": r.json().get("detail")}
        r = httpx.post(server.url + "/v1/uploads", content=good, headers={"Authorization": "Bearer dev_forged"})
        out["wrong_token"] = {"status": r.status_code, "detail": r.json().get("detail")}
        out["healthz_after"] = c.get("/healthz").status_code
        out["pull_after"] = c.get("/v1/versions/current").status_code
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--pulls", type=int, default=500)
    ap.add_argument("--width", type=int, default=32, help="cnn-s width of the bundles (32: ~0.4 MB)")
    ap.add_argument("--out", type=Path, default=RESULTS / "server-reliability")
    args = ap.parse_args()
    max_mb = 8
    with tempfile.TemporaryDirectory(prefix="central-rel-") as tmp:
        tmp = Path(tmp)
        base = tmp / "central-0.safetensors"
        make_central(base, width=args.width)
        # No kit formats: this measures the registry and HTTP path, not the exporter.
        server = ServerProc(tmp / "data", args=["--max-upload-mb", str(max_mb), "--kit-formats", ""]).start()
        try:
            with server.admin() as c:
                c.post("/v1/admin/versions", content=base.read_bytes()).raise_for_status()
            tokens = enrol_devices(server, args.devices, "dev")
            with server.admin() as c:
                enr = c.post("/v1/admin/devices", json={"name": "probe"}).json()["token"]
            public_key = httpx.post(server.url + "/v1/enroll", json={"token": enr}).json()["public_key"]
            wave1 = device_bundles(base, tmp, args.devices, 0)
            wave2 = device_bundles(base, tmp, args.devices, 1000)
            t_uploads = concurrent_uploads(server, tokens, wave1)
            t_pulls = concurrent_pulls(server, tokens, args.pulls, public_key)
            t_crash = crash_during_uploads(server, tokens, wave2, kill_after=max(1, args.devices // 3))
            t_bad = bad_inputs(server, tokens[0], wave1[0], max_mb * 1024 * 1024)
            t_final = check_consistency(server.data_dir)
        finally:
            server.stop()
    result = {
        "command": "python benchmarks/server_reliability.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "server": "1 uvicorn worker, SQLite WAL synchronous=FULL, blobs fsynced, loopback 127.0.0.1",
        "concurrent_uploads": t_uploads, "pulls": t_pulls, "sigkill_during_uploads": t_crash,
        "bad_inputs": t_bad, "final_consistency": t_final,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render_md(result))
    print(json.dumps(result, indent=2))


def render_md(r: dict) -> str:
    u, p, k, b = r["concurrent_uploads"], r["pulls"], r["sigkill_during_uploads"], r["bad_inputs"]
    c = k["consistency_after_restart"]
    lines = [
        "# Central server reliability (loopback)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, {r['machine']['platform']}  ",
        f"Server: {r['server']}",
        "",
        "| check | result |",
        "|---|---|",
        f"| {u['uploads']} concurrent uploads ({u['bundle_bytes']} B each) | {u['acknowledged']} acknowledged, "
        f"{u['lost']} lost, {u['corrupted']} corrupted, p50 {u['latency_ms']['p50']} ms, p99 {u['latency_ms']['p99']} ms, "
        f"wall {u['wall_s']} s |",
        f"| {p['pulls']} verified pulls from {p['threads']} threads | {p['ok']} ok, {p['lost']} lost, "
        f"{p['corrupted']} corrupted, p50 {p['latency_ms']['p50']} ms, p99 {p['latency_ms']['p99']} ms, "
        f"{p['pulls_per_s']} pulls/s |",
        f"| SIGKILL during {k['in_flight']} uploads | {k['acknowledged_before_kill']} acknowledged before the kill, "
        f"{k['acknowledged_missing_after_restart']} of them missing after restart; restart to healthy "
        f"{k['restart_to_healthy_s']} s |",
        f"| on disk right after the kill | {k['on_disk_at_kill']['temp_files_left']} temp files, "
        f"{k['on_disk_at_kill']['unreferenced_blobs']} complete but unreferenced blobs (removed on restart), "
        f"{k['on_disk_at_kill']['blobs_not_matching_their_name']} blobs not matching their sha256 |",
        f"| registry after restart | integrity {c['sqlite_integrity']}, {c['missing_blobs']} missing blobs, "
        f"{c['blobs_not_matching_their_name']} blobs not matching their sha256, {c['unreferenced_blobs']} unreferenced, "
        f"{c['temp_files_left']} temp files |",
    ]
    for name in ("truncated", "bit_flipped", "nan_weights", "oversized", "wrong_token"):
        lines.append(f"| bad input: {name} | HTTP {b[name]['status']}: {b[name]['detail']} |")
    lines.append(f"| serving after bad input | healthz {b['healthz_after']}, pull {b['pull_after']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
