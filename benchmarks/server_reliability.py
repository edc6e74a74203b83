"""Reliability and throughput of the central server on loopback: concurrency, crash safety, bad input, scale-out.

Run:  .venv/bin/python benchmarks/server_reliability.py [--uploads 200] [--pulls 300] [--kill-rounds 2]
      [--disk-wave 60] [--lock-wave 60] [--deliver-deadline 600]

For each configuration (SQLite and PostgreSQL, 1 and 4 server processes on one port):

1. ``uploads`` bundles are uploaded by as many threads at the same time, twice:
   against the server's default upload cap (``central serve
   --max-concurrent-uploads``, 4 per process) and with the cap lifted to the
   wave size (the raw capacity). Each client behaves like the device agent: a
   503/429 is not a loss, the client waits the server's ``Retry-After`` and
   tries again until the upload is acknowledged or ``--deliver-deadline``
   passes. Every upload must be acknowledged and present, byte for byte, in
   the queue (uploads per second, p50/p99 latency from the first try to the
   acknowledgement, 503 answers, lost).
2. ``pulls`` verified pulls (signed statement + download + sha256) from
   ``devices`` threads: zero lost or corrupted; pulls per second, p50/p99.
3. ``kill-rounds`` times, the server (every process of it) is SIGKILLed in the
   middle of a wave of uploads and restarted: the registry must be consistent
   (database integrity, every row's blob present, every blob's bytes hashing to
   its name, no temp file left) and every upload acknowledged before the kill
   must be there. Its clients also wait out 503s; the kill cuts them.
4. Full disk: a server whose data dir is on a ``--disk-mb`` tmpfs (for
   PostgreSQL only the blobs and temp files are there, the cluster is not) gets
   ``disk-wave`` uploads while the disk is filled to the last byte. Each client
   keeps its bundle in a real agent outbox; every one must be answered 507 (or
   503) and keep it, then space is freed and every upload must be delivered,
   with no orphan blob or temp file left. Mounting needs root: without it the
   round is reported as skipped, with the reason.
5. Locked database: ``lock-wave`` uploads; once a quarter are acknowledged,
   another client holds the database locked for the server's lock wait + 3 s
   (SQLite ``BEGIN EXCLUSIVE``; PostgreSQL ``LOCK TABLE uploads IN ACCESS
   EXCLUSIVE MODE``). Writes then answer 503 with ``Retry-After``; every upload
   must be acknowledged afterwards, with no orphan blob.
6. Four admins racing to consolidate the queue from its front consume every
   entry exactly once: stalled entries (left queued) and entries consumed twice
   must both be 0.
7. Bad inputs (truncated, bit-flipped, NaN weights, oversized, wrong token)
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
import random
import signal
import sqlite3
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

from central.server.app import DEFAULT_MAX_CONCURRENT_UPLOADS, RETRY_AFTER_S  # noqa: E402
from central.server.database import SQLITE_BUSY_TIMEOUT_S  # noqa: E402
from central.server.registry import Registry  # noqa: E402
from edge_agent.bundle import load_bundle, new_manifest, save_bundle  # noqa: E402
from edge_agent.client.http import RETRY_AFTER_JITTER, CentralClient, CentralError, CentralUnreachable  # noqa: E402
from edge_agent.client.outbox import Outbox  # noqa: E402
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


class GaveUp(Exception):
    """A client stopped waiting to retry: its deadline passed, or the server was killed."""


class CountingTransport(httpx.HTTPTransport):
    """Counts the answers (by status) and connection failures one client saw."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.status: Counter = Counter()
        self.transport_errors = 0
        self.database_busy = 0  # 503s that name the database (not the upload cap)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            resp = super().handle_request(request)
        except httpx.TransportError:
            self.transport_errors += 1
            raise
        self.status[resp.status_code] += 1
        if resp.status_code == 503:
            resp.read()
            self.database_busy += b"database" in resp.content
        return resp


def deadline_sleep(deadline_s: float, cut: threading.Event | None = None):
    """A client's ``sleep`` that gives up once ``deadline_s`` from now would pass, or as soon as ``cut`` is set."""
    deadline = time.monotonic() + deadline_s

    def sleep(s: float) -> None:
        if time.monotonic() + s > deadline:
            raise GaveUp(f"not delivered within the {deadline_s:g} s deadline")
        if cut is None:
            time.sleep(s)
        elif cut.wait(s):
            raise GaveUp("the server was killed")

    return sleep


def agent_client(url: str, token: str, sleep, timeout: float = 60.0) -> tuple[CentralClient, CountingTransport]:
    """The device's client (backoff, ``Retry-After`` on 503/429); ``sleep`` bounds how long it keeps trying."""
    transport = CountingTransport()
    # Attempts are bounded by ``sleep`` (a deadline or the kill), not by a count.
    return CentralClient(url, token, timeout=timeout, retries=1000, sleep=sleep, transport=transport), transport


def concurrent_uploads(server: ServerProc, tokens: list[str], bundles: list[bytes], deadline_s: float) -> dict:
    lat, acked, errors, tries = [], [], [], []
    status: Counter = Counter()
    transport_errors = 0
    lock = threading.Lock()
    sleep = deadline_sleep(deadline_s)

    def one(i: int) -> None:
        nonlocal transport_errors
        t0 = time.perf_counter()
        c, tr = agent_client(server.url, tokens[i], sleep)
        try:
            with c:
                row, _dup = c.upload_bundle(bundles[i])
            with lock:
                lat.append(time.perf_counter() - t0)
                acked.append(row["bundle_id"])
        except Exception as e:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"{type(e).__name__}: {e}")
        finally:
            with lock:
                status.update(tr.status)
                transport_errors += tr.transport_errors
                tries.append(sum(tr.status.values()) + tr.transport_errors)

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
        "answers_503": status[503], "answers_429": status[429],
        "answers_by_status": {str(k): v for k, v in sorted(status.items())},
        "connection_errors": transport_errors,
        "tries_per_upload": {"mean": round(sum(tries) / len(tries), 2), "max": max(tries)} if tries else None,
        "deliver_deadline_s": deadline_s,
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


def crash_during_uploads(server: ServerProc, tokens: list[str], bundles: list[bytes], kill_after: int,
                         deadline_s: float) -> dict:
    """Upload ``bundles`` concurrently and SIGKILL the server once ``kill_after`` were acknowledged."""
    acked: list[str] = []
    failed = 0
    status: Counter = Counter()
    lock = threading.Lock()
    killed = threading.Event()
    # A client waiting out a 503 or a failed connection is cut by the kill: nothing after it is counted.
    sleep = deadline_sleep(deadline_s, cut=killed)

    def one(i: int) -> None:
        nonlocal failed
        c, tr = agent_client(server.url, tokens[i], sleep, timeout=30)
        try:
            with c:
                row, _ = c.upload_bundle(bundles[i])
            with lock:
                acked.append(row["bundle_id"])
                if len(acked) >= kill_after and not killed.is_set():
                    killed.set()
                    os.killpg(server.proc.pid, signal.SIGKILL)  # every server process at once
        except (CentralUnreachable, CentralError, httpx.HTTPError, GaveUp):
            with lock:
                failed += 1
        finally:
            with lock:
                status.update(tr.status)

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
            "answers_503_before_kill": status[503],
            "acknowledged_missing_after_restart": len(set(acked) - present),
            "on_disk_at_kill": at_kill, "restart_to_healthy_s": round(restart_s, 2),
            "consistency_after_restart": check_consistency(server.data_dir, server.database_url)}


def mount_small_disk(mnt: Path, mb: int) -> str | None:
    """Mount a ``mb`` MB tmpfs on ``mnt``; None when done, else why not (it needs root)."""
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
    except OSError as e:
        return f"cannot run mount: {e}"
    return None if r.returncode == 0 else f"cannot mount a tmpfs: {(r.stderr or r.stdout).strip() or r.returncode}"


def outbox_uploads(server: ServerProc, tokens: list[str], bundles: list[bytes], work: Path, deadline_s: float,
                   tried: threading.Barrier | None = None) -> dict:
    """Each client keeps its bundle in a real agent outbox and delivers it, trying again after each temporary failure.

    A failed try waits ``RETRY_AFTER_S`` plus jitter (the outbox itself would wait 30 s and more; the
    benchmark only compresses the wait). ``tried`` is passed once by every client after its first try.
    """
    acked, errors, kept = [], [], []
    status: Counter = Counter()
    lock = threading.Lock()
    sleep = deadline_sleep(deadline_s)

    def one(i: int) -> None:
        box = Outbox(work / f"outbox-{i}")
        src = work / f"upload-{i}.safetensors"
        src.write_bytes(bundles[i])
        box.add(src)
        c, tr = agent_client(server.url, tokens[i], sleep, timeout=60)
        first = True
        try:
            with c:
                while box.pending():
                    try:
                        box.deliver(c, force=True)
                    except CentralUnreachable:
                        with lock:
                            kept.append(len(box.pending()))
                        if first and tried is not None:
                            tried.wait(timeout=deadline_s)
                        first = False
                        sleep(RETRY_AFTER_S * (1 + random.random() * RETRY_AFTER_JITTER))
                        continue
                    if first and tried is not None:
                        tried.wait(timeout=deadline_s)
                    first = False
            with lock:
                acked.append(hashlib.sha256(bundles[i]).hexdigest())
        except Exception as e:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"{type(e).__name__}: {e}")
            if first and tried is not None:
                tried.abort()
        finally:
            with lock:
                status.update(tr.status)

    with ThreadPoolExecutor(len(bundles)) as ex:
        list(ex.map(one, range(len(bundles))))
    with server.admin() as c:
        queued = {u["bundle_id"] for u in c.get("/v1/admin/queue", params={"status": "all"}).json()}
    expected = {hashlib.sha256(b).hexdigest() for b in bundles}
    return {"uploads": len(bundles), "acknowledged": len(acked), "lost": len(expected - queued),
            "errors": errors[:5], "n_errors": len(errors), "failed_tries_kept_in_outbox": sum(kept),
            "failed_tries": len(kept), "answers_by_status": {str(k): v for k, v in sorted(status.items())}}


def full_disk_round(tmp: Path, name: str, database_url: str | None, workers: int, base: Path, wave: list[bytes],
                    args, max_mb: int) -> dict:
    """A wave of uploads against a server whose data dir is on a tmpfs filled to the last byte, then freed."""
    from test_server_limits import fill  # the helper the full-disk tests use

    mnt = tmp / f"{name}-disk"
    why = mount_small_disk(mnt, args.disk_mb)
    if why:
        return {"skipped": why}
    on_disk = "the data dir (blobs, temp files, SQLite database)" if database_url is None else \
        "the data dir (blobs, temp files); the PostgreSQL cluster is on the ordinary disk"
    try:
        server = ServerProc(mnt / "data", args=["--max-upload-mb", str(max_mb), "--kit-formats", ""],
                            database_url=database_url, workers=workers)
        server.log = tmp / f"server-{name}-disk.log"
        server.start(timeout=240)
        try:
            with server.admin() as c:
                c.post("/v1/admin/versions", content=base.read_bytes()).raise_for_status()
            tokens = enrol_devices(server, len(wave), "disk")
            filler = fill(mnt)
            tried = threading.Barrier(len(wave) + 1)
            result: dict = {}
            work = tmp / f"{name}-disk-clients"
            work.mkdir()
            t = threading.Thread(target=lambda: result.update(
                outbox_uploads(server, tokens, wave, work, args.deliver_deadline, tried)))
            t.start()
            try:
                tried.wait(timeout=args.deliver_deadline)  # every client has tried once against the full disk
                full_for_all = True
            except threading.BrokenBarrierError:
                full_for_all = False
            with server.admin() as c:
                queued_while_full = len(c.get("/v1/admin/queue").json())
            try:
                while_full = check_consistency(server.data_dir, database_url)
            except Exception as e:  # noqa: BLE001 - reported: the check itself may need room on the disk
                while_full = {"error": f"{type(e).__name__}: {e}"}
            filler.unlink()
            t.join()
            after = check_consistency(server.data_dir, database_url)
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    return {"disk_mb": args.disk_mb, "on_small_disk": on_disk, "every_client_tried_while_full": full_for_all,
            "queued_while_full": queued_while_full, **result,
            "answers_507": result.get("answers_by_status", {}).get("507", 0),
            "answers_503": result.get("answers_by_status", {}).get("503", 0),
            "consistency_while_full": while_full, "consistency_after": after}


def locked_database_round(server: ServerProc, tokens: list[str], wave: list[bytes], work: Path, hold_s: float,
                          deadline_s: float) -> dict:
    """A wave of uploads; once a quarter are acknowledged, another client holds the database locked for ``hold_s``."""
    url = server.database_url
    acked: list[str] = []
    status: Counter = Counter()
    busy = 0
    lock = threading.Lock()
    take = threading.Event()
    sleep = deadline_sleep(deadline_s)

    def one(i: int) -> None:
        nonlocal busy
        c, tr = agent_client(server.url, tokens[i], sleep, timeout=60)
        try:
            with c:
                row, _ = c.upload_bundle(wave[i])
            with lock:
                acked.append(row["bundle_id"])
                if len(acked) >= max(1, len(wave) // 4):
                    take.set()
        except (CentralUnreachable, CentralError, httpx.HTTPError, GaveUp):
            pass
        finally:
            with lock:
                status.update(tr.status)
                busy += tr.database_busy

    held = {}

    def holder() -> None:
        take.wait(timeout=deadline_s)
        if url is None:
            conn = sqlite3.connect(server.data_dir / "registry.sqlite", timeout=60, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            conn = psycopg.connect(url)
            conn.execute("LOCK TABLE uploads IN ACCESS EXCLUSIVE MODE")
        t0 = time.perf_counter()
        time.sleep(hold_s)
        conn.rollback()
        conn.close()
        held["s"] = round(time.perf_counter() - t0, 2)

    h = threading.Thread(target=holder)
    h.start()
    with ThreadPoolExecutor(len(wave)) as ex:
        list(ex.map(one, range(len(wave))))
    take.set()
    h.join()
    with server.admin() as c:
        queued = {u["bundle_id"] for u in c.get("/v1/admin/queue", params={"status": "all"}).json()}
    expected = {hashlib.sha256(b).hexdigest() for b in wave}
    # A blob stored just before the lock whose row then failed is removed once the database answers again.
    waited = 0.0
    after = check_consistency(server.data_dir, url)
    while after["unreferenced_blobs"] and waited < 3 * RETRY_AFTER_S:
        time.sleep(1)
        waited += 1
        after = check_consistency(server.data_dir, url)
    return {"uploads": len(wave), "lock": "BEGIN EXCLUSIVE (another SQLite connection)" if url is None else
            "LOCK TABLE uploads IN ACCESS EXCLUSIVE MODE (another PostgreSQL session)",
            "lock_held_s": held.get("s"), "server_lock_wait_s": SQLITE_BUSY_TIMEOUT_S,
            "acknowledged": len(acked), "lost": len(expected - queued), "answers_503": status[503],
            "answers_503_database_busy": busy, "answers_by_status": {str(k): v for k, v in sorted(status.items())},
            "waited_for_cleanup_s": waited, "consistency_after": after}


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


def raw_capacity(tmp: Path, name: str, database_url: str | None, workers: int, base: Path, wave: list[bytes],
                 args, max_mb: int) -> dict:
    """The upload wave against a fresh server whose upload cap is the wave size: what the box takes at once."""
    server = ServerProc(tmp / f"{name}-uncapped", args=["--max-upload-mb", str(max_mb), "--kit-formats", "",
                                                        "--max-concurrent-uploads", str(len(wave))],
                        database_url=database_url, workers=workers)
    server.start(timeout=240)
    try:
        with server.admin() as c:
            c.post("/v1/admin/versions", content=base.read_bytes()).raise_for_status()
        tokens = enrol_devices(server, len(wave), "dev")
        out = concurrent_uploads(server, tokens, wave, args.deliver_deadline)
    finally:
        server.stop()
    out["max_concurrent_uploads"] = len(wave)
    return out


def run_config(tmp: Path, name: str, database_url: str | None, workers: int, base: Path, main_wave: list[bytes],
               kill_waves: list[list[bytes]], disk_wave: list[bytes], lock_wave: list[bytes], args, max_mb: int,
               uncapped_database_url: str | None = None, disk_database_url: str | None = None) -> dict:
    """One server configuration through every check; returns its results."""
    out: dict = {"database": "postgresql" if database_url else "sqlite", "workers": workers}
    out["uncapped_uploads"] = raw_capacity(tmp, name, uncapped_database_url, workers, base, main_wave, args, max_mb)
    out["full_disk"] = full_disk_round(tmp, name, disk_database_url, workers, base, disk_wave, args, max_mb)
    # No kit formats: this measures the registry and HTTP path, not the exporter. The upload cap is the default.
    server = ServerProc(tmp / name, args=["--max-upload-mb", str(max_mb), "--kit-formats", ""],
                        database_url=database_url, workers=workers)
    t0 = time.perf_counter()
    server.start(timeout=240)
    out["start_to_healthy_s"] = round(time.perf_counter() - t0, 2)
    try:
        with server.admin() as c:
            c.post("/v1/admin/versions", content=base.read_bytes()).raise_for_status()
        tokens = enrol_devices(server, len(main_wave), "dev")
        with server.admin() as c:
            enr = c.post("/v1/admin/devices", json={"name": "probe"}).json()["token"]
        public_key = httpx.post(server.url + "/v1/enroll", json={"token": enr}).json()["public_key"]
        out["concurrent_uploads"] = concurrent_uploads(server, tokens, main_wave, args.deliver_deadline)
        out["concurrent_uploads"]["max_concurrent_uploads"] = DEFAULT_MAX_CONCURRENT_UPLOADS * workers
        out["pulls"] = concurrent_pulls(server, tokens[: args.devices], args.pulls, public_key)
        out["sigkill_rounds"] = [
            crash_during_uploads(server, tokens, wave, kill_after=max(1, len(wave) // 3),
                                 deadline_s=args.deliver_deadline) for wave in kill_waves
        ]
        out["locked_database"] = locked_database_round(server, tokens, lock_wave, tmp, SQLITE_BUSY_TIMEOUT_S + 3,
                                                       args.deliver_deadline)
        out["drain_queue"] = drain_queue(server, base.read_bytes())
        out["bad_inputs"] = bad_inputs(server, tokens[0], main_wave[0], max_mb * 1024 * 1024)
        out["final_consistency"] = check_consistency(server.data_dir, database_url)
    finally:
        server.stop()
    rounds = out["sigkill_rounds"]
    out["lost_uploads"] = (out["concurrent_uploads"]["lost"] + out["uncapped_uploads"]["lost"]
                           + sum(r["acknowledged_missing_after_restart"] for r in rounds)
                           + out["full_disk"].get("lost", 0) + out["locked_database"]["lost"])
    out["stalled_queue_items"] = out["drain_queue"]["stalled"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=200, help="concurrent uploads (one thread each)")
    ap.add_argument("--devices", type=int, default=50, help="threads for the verified pulls")
    ap.add_argument("--pulls", type=int, default=300)
    ap.add_argument("--kill-rounds", type=int, default=2)
    ap.add_argument("--kill-wave", type=int, default=60, help="uploads in flight in each SIGKILL round")
    ap.add_argument("--disk-wave", type=int, default=60, help="uploads in the full-disk round")
    ap.add_argument("--disk-mb", type=int, default=96, help="size of the tmpfs the full-disk round fills")
    ap.add_argument("--lock-wave", type=int, default=60, help="uploads in flight in the locked-database round")
    ap.add_argument("--workers", default="1,4", help="server process counts to compare")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--width", type=int, default=32, help="cnn-s width of the bundles (32: ~0.4 MB)")
    ap.add_argument("--deliver-deadline", type=float, default=600.0,
                    help="seconds a client keeps retrying 503s before its upload counts as lost")
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
        disk_wave = device_bundles(base, tmp, args.disk_wave, 100_000)
        lock_wave = device_bundles(base, tmp, args.lock_wave, 200_000)
        assert n_dev >= args.kill_wave
        try:
            for db in databases:
                if db == "postgresql" and (reason := why_unavailable()):
                    skipped[db] = reason
                    continue
                for w in workers:
                    url = raw_url = disk_url = None
                    if db == "postgresql":
                        cluster = cluster or PostgresCluster().start()
                        url, raw_url, disk_url = (cluster.new_database("bench") for _ in range(3))
                    name = f"{db}-{w}"
                    print(f"== {name}", flush=True)
                    configs.append(run_config(tmp, name, url, w, base, main_wave, kill_waves, disk_wave, lock_wave,
                                              args, max_mb, raw_url, disk_url))
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


def upload_row(u: dict, what: str) -> str:
    lat, t = u["latency_ms"] or {}, u["tries_per_upload"] or {}
    return (f"| {u['uploads']} concurrent uploads ({u['bundle_bytes']} B each), {what} "
            f"({u['max_concurrent_uploads']} at once) | {u['acknowledged']} acknowledged, {u['lost']} lost, "
            f"{u['corrupted']} corrupted, {u['n_errors']} errors; {u['answers_503']} answers 503, {u['answers_429']} 429, "
            f"{u['connection_errors']} connection errors, tries per upload mean {t.get('mean')} max {t.get('max')}; "
            f"first try to acknowledgement p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms; wall {u['wall_s']} s, "
            f"{u['uploads_per_s']} uploads/s |")


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
        "Uploads: the wave at the server's default upload cap (a 503 with `Retry-After` is waited out and retried, "
        "as the device agent does; latency is from the first try to the acknowledgement) and with the cap lifted to "
        "the wave size; ratio = default / lifted.",
        "",
        "| database | processes | cap (all processes) | uploads/s | upload p50 ms | upload p99 ms | 503 answers | "
        "tries per upload (mean, max) | lost | cap lifted to | uploads/s | upload p50 ms | upload p99 ms | 503 answers | "
        "lost | uploads/s ratio | p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["configs"]:
        u, x = c["concurrent_uploads"], c["uncapped_uploads"]
        ul, xl = u["latency_ms"] or {}, x["latency_ms"] or {}
        t = u["tries_per_upload"] or {}

        def ratio(a, b):
            return round(a / b, 2) if a is not None and b else "-"

        lines.append(
            f"| {c['database']} | {c['workers']} | {u['max_concurrent_uploads']} | {u['uploads_per_s']} | "
            f"{ul.get('p50')} | {ul.get('p99')} | {u['answers_503']} | {t.get('mean')}, {t.get('max')} | {u['lost']} | "
            f"{x['max_concurrent_uploads']} | {x['uploads_per_s']} | {xl.get('p50')} | {xl.get('p99')} | "
            f"{x['answers_503']} | {x['lost']} | {ratio(u['uploads_per_s'], x['uploads_per_s'])} | "
            f"{ratio(ul.get('p50'), xl.get('p50'))} | {ratio(ul.get('p99'), xl.get('p99'))} |")
    lines += [
        "",
        "| database | processes | uploads/s (default cap) | upload p99 ms | verified pulls/s | pull p99 ms | "
        "lost uploads | stalled queue items | consumed twice | restart to healthy s | full disk: 507s, lost | "
        "locked database: 503s (database busy), lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["configs"]:
        u, p, d = c["concurrent_uploads"], c["pulls"], c["drain_queue"]
        restarts = ", ".join(str(k["restart_to_healthy_s"]) for k in c["sigkill_rounds"])
        fd, lk = c["full_disk"], c["locked_database"]
        disk = f"skipped: {fd['skipped']}" if "skipped" in fd else f"{fd['answers_507']}, {fd['lost']}"
        lines.append(f"| {c['database']} | {c['workers']} | {u['uploads_per_s']} | {u['latency_ms']['p99']} | "
                     f"{p['pulls_per_s']} | {p['latency_ms']['p99']} | {c['lost_uploads']} | "
                     f"{c['stalled_queue_items']} | {d['consumed_twice']} | {restarts} | {disk} | "
                     f"{lk['answers_503']} ({lk['answers_503_database_busy']}), {lk['lost']} |")
    for db, reason in r["skipped"].items():
        lines.append(f"| {db} | - | skipped: {reason} | | | | | | | | | |")
    for c in r["configs"]:
        lines += ["", f"## {c['database']}, {c['workers']} server process(es)", "", "| check | result |", "|---|---|"]
        u, p, d, b = c["concurrent_uploads"], c["pulls"], c["drain_queue"], c["bad_inputs"]
        lines += [
            upload_row(u, "default upload cap"),
            upload_row(c["uncapped_uploads"], "upload cap lifted"),
            f"| {p['pulls']} verified pulls from {p['threads']} threads | {p['ok']} ok, {p['lost']} lost, "
            f"{p['corrupted']} corrupted, p50 {p['latency_ms']['p50']} ms, p99 {p['latency_ms']['p99']} ms, "
            f"{p['pulls_per_s']} pulls/s |",
        ]
        for i, k in enumerate(c["sigkill_rounds"], 1):
            a, f = k["on_disk_at_kill"], k["consistency_after_restart"]
            lines += [
                f"| SIGKILL round {i}: {k['in_flight']} uploads in flight | {k['acknowledged_before_kill']} acknowledged "
                f"before the kill ({k['answers_503_before_kill']} answers 503 waited out), "
                f"{k['acknowledged_missing_after_restart']} of them missing after restart; restart to "
                f"healthy {k['restart_to_healthy_s']} s |",
                f"| round {i}, on disk right after the kill | {a['temp_files_left']} temp files, {a['unreferenced_blobs']} "
                f"complete but unreferenced blobs (removed on restart), {a['blobs_not_matching_their_name']} blobs not "
                f"matching their sha256 |",
                f"| round {i}, registry after restart | integrity {f['database_integrity']}, {f['missing_blobs']} missing "
                f"blobs, {f['blobs_not_matching_their_name']} not matching their sha256, {f['unreferenced_blobs']} "
                f"unreferenced, {f['temp_files_left']} temp files |",
            ]
        fd = c["full_disk"]
        if "skipped" in fd:
            lines.append(f"| full disk | skipped: {fd['skipped']} |")
        else:
            a, w = fd["consistency_after"], fd["consistency_while_full"]
            lines += [
                f"| full disk: {fd['uploads']} uploads, {fd['disk_mb']} MB tmpfs holding {fd['on_small_disk']}, "
                f"filled to the last byte | every client tried while full: {fd['every_client_tried_while_full']}; "
                f"{fd['answers_507']} answers 507, {fd['answers_503']} 503; {fd['failed_tries']} failed tries, the "
                f"upload kept in the agent outbox after {fd['failed_tries_kept_in_outbox']} of them; "
                f"{fd['queued_while_full']} queued while full |",
                "| full disk, while full | " + (f"error: {w['error']}" if "error" in w else
                f"{w['temp_files_left']} temp files, {w['unreferenced_blobs']} unreferenced blobs, "
                f"{w['missing_blobs']} missing") + " |",
                f"| full disk, space freed | {fd['acknowledged']} acknowledged, {fd['lost']} lost, {fd['n_errors']} "
                f"errors; registry integrity {a['database_integrity']}, {a['missing_blobs']} missing blobs, "
                f"{a['unreferenced_blobs']} unreferenced (orphan) blobs, {a['temp_files_left']} temp files |",
            ]
        lk = c["locked_database"]
        la = lk["consistency_after"]
        lines.append(
            f"| locked database: {lk['uploads']} uploads, {lk['lock']} held {lk['lock_held_s']} s "
            f"(server waits {lk['server_lock_wait_s']} s) once a quarter were acknowledged | {lk['acknowledged']} "
            f"acknowledged, {lk['lost']} lost; {lk['answers_503']} answers 503, "
            f"{lk['answers_503_database_busy']} of them database busy; registry integrity {la['database_integrity']}, "
            f"{la['missing_blobs']} missing blobs, {la['unreferenced_blobs']} unreferenced (orphan) blobs, "
            f"{la['temp_files_left']} temp files |")
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
