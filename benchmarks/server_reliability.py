"""Reliability and throughput of the central server on loopback: concurrency, crash safety, bad input, scale-out.

Run:  .venv/bin/python benchmarks/server_reliability.py [--uploads 200] [--pulls 300] [--kill-rounds 2]

For each configuration (SQLite and PostgreSQL, 1 and 4 server processes on one port):

1. ``uploads`` bundles are uploaded by as many threads at the same time;
   every upload must be acknowledged and present, byte for byte, in the queue
   (uploads per second, p50/p99 latency, lost).
2. ``pulls`` verified pulls (signed statement + download + sha256) from
   ``devices`` threads: zero lost or corrupted; pulls per second, p50/p99.
3. ``kill-rounds`` times, the server (every process of it) is SIGKILLed in the
   middle of a wave of uploads and restarted: the registry must be consistent
   (database integrity, every row's blob present, every blob's bytes hashing to
   its name, no temp file left) and every upload acknowledged before the kill
   must be there.
4. Four admins racing to consolidate the queue from its front consume every
   entry exactly once: stalled entries (left queued) and entries consumed twice
   must both be 0.
5. Bad inputs (truncated, bit-flipped, NaN weights, oversized, wrong token)
   are each rejected and the server keeps serving.

PostgreSQL runs on a throwaway local cluster (tests/pg_support.py); without
PostgreSQL installed its configurations are skipped and say why. Everything runs
on 127.0.0.1 with bounded loops. Writes
``benchmarks/results/server-reliability/server-reliability.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pg_support import PostgresCluster, why_unavailable  # noqa: E402
from test_server_support import ServerProc, make_central  # noqa: E402

from central.server.registry import Registry  # noqa: E402
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
        "uploads_per_s": round(len(acked) / wall, 1),
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


def check_consistency(data_dir: Path, database_url: str | None) -> dict:
    """Integrity of the registry as found on disk and in its database (read-only)."""
    reg = Registry(data_dir, database_url)
    try:
        integrity = reg.db.integrity_check()
        rows = reg.referenced_blobs()
    finally:
        reg.close()
    blobs = {p.name: p for p in (data_dir / "blobs").rglob("*") if p.is_file()}
    missing = [r for r in rows if r not in blobs]
    bad_hash = [n for n, p in blobs.items() if hashlib.sha256(p.read_bytes()).hexdigest() != n]
    unreferenced = [n for n in blobs if n not in rows]
    tmp_left = [p.name for p in (data_dir / "tmp").iterdir()]
    return {"database_integrity": integrity, "rows_with_blobs": len(rows), "missing_blobs": len(missing),
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
                    os.killpg(server.proc.pid, signal.SIGKILL)  # every server process at once
        except (CentralUnreachable, CentralError, httpx.HTTPError):
            with lock:
                failed += 1

    with ThreadPoolExecutor(len(bundles)) as ex:
        list(ex.map(one, range(len(bundles))))
    server.kill()  # reaps it; kills it if the kill threshold was never reached
    # Unacknowledged writes may have left temp files or an orphan blob: look before restarting.
    at_kill = check_consistency(server.data_dir, server.database_url)
    t0 = time.perf_counter()
    server.start(timeout=240)
    restart_s = time.perf_counter() - t0
    with server.admin() as c:
        present = {u["bundle_id"] for u in c.get("/v1/admin/queue", params={"status": "all"}).json()}
    return {"in_flight": len(bundles), "acknowledged_before_kill": len(acked), "failed_or_cut": failed,
            "acknowledged_missing_after_restart": len(set(acked) - present),
            "on_disk_at_kill": at_kill, "restart_to_healthy_s": round(restart_s, 2),
            "consistency_after_restart": check_consistency(server.data_dir, server.database_url)}


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


def drain_queue(server: ServerProc, body: bytes, admins: int = 4, take: int = 10) -> dict:
    """``admins`` threads consolidate the queue from its front until it is empty, racing each other."""
    won: list[list[int]] = []
    refused: Counter = Counter()
    lock = threading.Lock()
    with server.admin() as c:
        before = [u["id"] for u in c.get("/v1/admin/queue").json()]

    def admin() -> None:
        with server.admin() as c:
            while front := [u["id"] for u in c.get("/v1/admin/queue").json()[:take]]:
                cur = c.get("/v1/versions/current").json()["version"]
                r = c.post("/v1/admin/versions", content=body,
                           params={"consolidates": ",".join(map(str, front)), "expected_current": cur})
                with lock:
                    if r.status_code == 201:
                        won.append(front)
                    else:
                        refused[r.status_code] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(admins) as ex:
        for f in [ex.submit(admin) for _ in range(admins)]:
            f.result()
    wall = time.perf_counter() - t0
    consumed = Counter(uid for front in won for uid in front)
    with server.admin() as c:
        stalled = len(c.get("/v1/admin/queue").json())
    return {"queued_before": len(before), "admins": admins, "versions_published": len(won),
            "consumed": len(consumed), "consumed_twice": sum(1 for n in consumed.values() if n > 1),
            "stalled": stalled, "refused_by_status": dict(refused), "wall_s": round(wall, 2)}


def run_config(tmp: Path, name: str, database_url: str | None, workers: int, base: Path, main_wave: list[bytes],
               kill_waves: list[list[bytes]], args, max_mb: int) -> dict:
    """One server configuration through every check; returns its results."""
    # No kit formats: this measures the registry and HTTP path, not the exporter.
    server = ServerProc(tmp / name, args=["--max-upload-mb", str(max_mb), "--kit-formats", ""],
                        database_url=database_url, workers=workers)
    t0 = time.perf_counter()
    server.start(timeout=240)
    out: dict = {"database": "postgresql" if database_url else "sqlite", "workers": workers,
                 "start_to_healthy_s": round(time.perf_counter() - t0, 2)}
    try:
        with server.admin() as c:
            c.post("/v1/admin/versions", content=base.read_bytes()).raise_for_status()
        tokens = enrol_devices(server, len(main_wave), "dev")
        with server.admin() as c:
            enr = c.post("/v1/admin/devices", json={"name": "probe"}).json()["token"]
        public_key = httpx.post(server.url + "/v1/enroll", json={"token": enr}).json()["public_key"]
        out["concurrent_uploads"] = concurrent_uploads(server, tokens, main_wave)
        out["pulls"] = concurrent_pulls(server, tokens[: args.devices], args.pulls, public_key)
        out["sigkill_rounds"] = [
            crash_during_uploads(server, tokens, wave, kill_after=max(1, len(wave) // 3)) for wave in kill_waves
        ]
        out["drain_queue"] = drain_queue(server, base.read_bytes())
        out["bad_inputs"] = bad_inputs(server, tokens[0], main_wave[0], max_mb * 1024 * 1024)
        out["final_consistency"] = check_consistency(server.data_dir, database_url)
    finally:
        server.stop()
    rounds = out["sigkill_rounds"]
    out["lost_uploads"] = out["concurrent_uploads"]["lost"] + sum(r["acknowledged_missing_after_restart"] for r in rounds)
    out["stalled_queue_items"] = out["drain_queue"]["stalled"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=200, help="concurrent uploads (one thread each)")
    ap.add_argument("--devices", type=int, default=50, help="threads for the verified pulls")
    ap.add_argument("--pulls", type=int, default=300)
    ap.add_argument("--kill-rounds", type=int, default=2)
    ap.add_argument("--kill-wave", type=int, default=60, help="uploads in flight in each SIGKILL round")
    ap.add_argument("--workers", default="1,4", help="server process counts to compare")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--width", type=int, default=32, help="cnn-s width of the bundles (32: ~0.4 MB)")
    ap.add_argument("--out", type=Path, default=RESULTS / "server-reliability")
    args = ap.parse_args()
    max_mb = 8
    workers = [int(w) for w in args.workers.split(",")]
    databases = [d.strip() for d in args.databases.split(",")]
    configs, skipped = [], {}
    cluster = None
    with tempfile.TemporaryDirectory(prefix="central-rel-") as tmp:
        tmp = Path(tmp)
        base = tmp / "central-0.safetensors"
        make_central(base, width=args.width)
        n_dev = max(args.uploads, args.kill_wave)
        main_wave = device_bundles(base, tmp, args.uploads, 0)
        kill_waves = [device_bundles(base, tmp, args.kill_wave, 1000 * (r + 1)) for r in range(args.kill_rounds)]
        assert n_dev >= args.kill_wave
        try:
            for db in databases:
                if db == "postgresql" and (reason := why_unavailable()):
                    skipped[db] = reason
                    continue
                for w in workers:
                    url = None
                    if db == "postgresql":
                        cluster = cluster or PostgresCluster().start()
                        url = cluster.new_database("bench")
                    name = f"{db}-{w}"
                    print(f"== {name}", flush=True)
                    configs.append(run_config(tmp, name, url, w, base, main_wave, kill_waves, args, max_mb))
        finally:
            if cluster is not None:
                cluster.stop()
    result = {
        "command": "python benchmarks/server_reliability.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "cpu_model": cpu_model()},
        "server": "uvicorn on loopback 127.0.0.1; SQLite WAL synchronous=FULL or PostgreSQL 15 (local cluster, "
                  "fsync on); blobs fsynced; the benchmark's clients run on the same CPUs",
        "configs": configs, "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render_md(result))
    print(render_md(result))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")


def render_md(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Central server reliability and scale-out (loopback)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, Python {m['python']}, {m['platform']}  ",
        f"Server: {r['server']}",
        "",
        "## Summary",
        "",
        "| database | processes | uploads/s | upload p99 ms | verified pulls/s | pull p99 ms | lost uploads | "
        "stalled queue items | consumed twice | restart to healthy s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["configs"]:
        u, p, d = c["concurrent_uploads"], c["pulls"], c["drain_queue"]
        restarts = ", ".join(str(k["restart_to_healthy_s"]) for k in c["sigkill_rounds"])
        lines.append(f"| {c['database']} | {c['workers']} | {u['uploads_per_s']} | {u['latency_ms']['p99']} | "
                     f"{p['pulls_per_s']} | {p['latency_ms']['p99']} | {c['lost_uploads']} | "
                     f"{c['stalled_queue_items']} | {d['consumed_twice']} | {restarts} |")
    for db, reason in r["skipped"].items():
        lines.append(f"| {db} | - | skipped: {reason} | | | | | | | |")
    for c in r["configs"]:
        lines += ["", f"## {c['database']}, {c['workers']} server process(es)", "", "| check | result |", "|---|---|"]
        u, p, d, b = c["concurrent_uploads"], c["pulls"], c["drain_queue"], c["bad_inputs"]
        lines += [
            f"| {u['uploads']} concurrent uploads ({u['bundle_bytes']} B each) | {u['acknowledged']} acknowledged, "
            f"{u['lost']} lost, {u['corrupted']} corrupted, {u['n_errors']} errors, p50 {u['latency_ms']['p50']} ms, "
            f"p99 {u['latency_ms']['p99']} ms, wall {u['wall_s']} s, {u['uploads_per_s']} uploads/s |",
            f"| {p['pulls']} verified pulls from {p['threads']} threads | {p['ok']} ok, {p['lost']} lost, "
            f"{p['corrupted']} corrupted, p50 {p['latency_ms']['p50']} ms, p99 {p['latency_ms']['p99']} ms, "
            f"{p['pulls_per_s']} pulls/s |",
        ]
        for i, k in enumerate(c["sigkill_rounds"], 1):
            a, f = k["on_disk_at_kill"], k["consistency_after_restart"]
            lines += [
                f"| SIGKILL round {i}: {k['in_flight']} uploads in flight | {k['acknowledged_before_kill']} acknowledged "
                f"before the kill, {k['acknowledged_missing_after_restart']} of them missing after restart; restart to "
                f"healthy {k['restart_to_healthy_s']} s |",
                f"| round {i}, on disk right after the kill | {a['temp_files_left']} temp files, {a['unreferenced_blobs']} "
                f"complete but unreferenced blobs (removed on restart), {a['blobs_not_matching_their_name']} blobs not "
                f"matching their sha256 |",
                f"| round {i}, registry after restart | integrity {f['database_integrity']}, {f['missing_blobs']} missing "
                f"blobs, {f['blobs_not_matching_their_name']} not matching their sha256, {f['unreferenced_blobs']} "
                f"unreferenced, {f['temp_files_left']} temp files |",
            ]
        lines.append(
            f"| {d['admins']} admins draining {d['queued_before']} queued uploads from the front | {d['consumed']} "
            f"consumed into {d['versions_published']} versions, {d['consumed_twice']} consumed twice, {d['stalled']} "
            f"stalled; refusals {d['refused_by_status'] or 'none'}; {d['wall_s']} s |")
        for name in ("truncated", "bit_flipped", "nan_weights", "oversized", "wrong_token"):
            lines.append(f"| bad input: {name} | HTTP {b[name]['status']}: {b[name]['detail']} |")
        lines.append(f"| serving after bad input | healthz {b['healthz_after']}, pull {b['pull_after']} |")
        fc = c["final_consistency"]
        lines.append(f"| final registry | integrity {fc['database_integrity']}, {fc['rows_with_blobs']} rows with blobs, "
                     f"{fc['missing_blobs']} missing, {fc['unreferenced_blobs']} unreferenced, "
                     f"{fc['temp_files_left']} temp files |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
