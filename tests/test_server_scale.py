"""Several server processes on one port (``central serve --workers 3``) sharing one database and one blob folder.

Many threads upload at once, each bundle from two threads at the same moment; racing admins consolidate
the queue from its front. Every upload must be accepted exactly once, every version number must be
distinct, every queue entry consumed exactly once, none left behind. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from test_server_support import ServerProc, make_central

from edge_agent.bundle import load_bundle, new_manifest, save_bundle

WORKERS = 3
UPLOADS = 24


def workers_of(pid: int) -> list[int]:
    """The worker processes uvicorn spawned under ``pid`` (not multiprocessing's resource tracker)."""
    kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, database_url):
    work = tmp_path_factory.mktemp("scale-postgres" if database_url else "scale-sqlite")
    base = work / "central-0.safetensors"
    make_central(base)
    # Every upload of the race must be in flight at once: lift the per-process cap on concurrent uploads.
    s = ServerProc(work / "data", args=["--kit-formats", "", "--max-concurrent-uploads", "64"], database_url=database_url,
                   workers=WORKERS)
    s.start(timeout=180)
    with s.admin() as c:
        c.post("/v1/admin/versions", content=base.read_bytes()).raise_for_status()
    yield s, base, work
    s.stop()


def bundles(base: Path, out: Path, n: int) -> list[bytes]:
    b = load_bundle(base)
    got = []
    for i in range(n):
        torch.manual_seed(i)
        model = load_bundle(base).model
        with torch.no_grad():
            model.head.bias.add_(torch.randn_like(model.head.bias) * 0.01)
        m = new_manifest(model, b.labels, b.input_spec, trained_classes=["0"], parents=[b.id], method="train")
        save_bundle(model, m, out / f"dev-{i}.safetensors")
        got.append((out / f"dev-{i}.safetensors").read_bytes())
    return got


def test_the_port_is_served_by_several_processes(fleet):
    server, _, _ = fleet
    assert len(workers_of(server.proc.pid)) == WORKERS
    assert httpx.get(server.url + "/healthz").json()["current_version"] == 1


def test_concurrent_uploads_are_each_accepted_exactly_once(fleet):
    server, base, work = fleet
    data = bundles(base, work, UPLOADS)
    with server.admin() as c:
        tokens = []
        for i in range(UPLOADS // 3):
            enr = c.post("/v1/admin/devices", json={"name": f"dev-{i}"}).json()["token"]
            tokens.append(httpx.post(server.url + "/v1/enroll", json={"token": enr}).json()["token"])
    barrier = threading.Barrier(2 * UPLOADS)
    answers: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        i = k // 2  # two threads per bundle, same device, same moment
        with httpx.Client(base_url=server.url, timeout=120,
                          headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"}) as c:
            barrier.wait()
            r = c.post("/v1/uploads", content=data[i])
        with lock:
            answers.append((i, r.status_code, r.json()["upload"]["id"] if r.status_code in (200, 201) else -1))

    with ThreadPoolExecutor(2 * UPLOADS) as ex:
        list(ex.map(one, range(2 * UPLOADS)))
    for i in range(UPLOADS):
        mine = sorted(a[1:] for a in answers if a[0] == i)
        assert [status for status, _ in mine] == [200, 201], (i, mine)  # one stored, one told "duplicate"
        assert mine[0][1] == mine[1][1]  # both point at the same row
    with server.admin() as c:
        queue = c.get("/v1/admin/queue").json()
        assert sorted(u["bundle_id"] for u in queue) == sorted(hashlib.sha256(d).hexdigest() for d in data)
        for u in queue:  # byte for byte, whichever process wrote it
            assert hashlib.sha256(c.get(f"/v1/admin/uploads/{u['id']}/blob").content).hexdigest() == u["bundle_id"]
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_racing_consolidations_consume_the_queue_exactly_once(fleet):
    server, base, _ = fleet
    body = base.read_bytes()
    with server.admin() as c:
        queued = [u["id"] for u in c.get("/v1/admin/queue").json()]
    assert len(queued) == UPLOADS
    won: list[tuple[int, list[int]]] = []
    refused = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def admin() -> None:
        with server.admin() as c:
            barrier.wait()
            while front := [u["id"] for u in c.get("/v1/admin/queue").json()[:5]]:
                cur = c.get("/v1/versions/current").json()["version"]
                r = c.post("/v1/admin/versions", content=body,
                           params={"consolidates": ",".join(map(str, front)), "expected_current": cur})
                with lock:
                    if r.status_code == 201:
                        won.append((r.json()["version"], front))
                    else:
                        refused.append((r.status_code, r.json()["detail"]))

    with ThreadPoolExecutor(4) as ex:
        for f in [ex.submit(admin) for _ in range(4)]:
            f.result()
    assert all(status == 409 for status, _ in refused), refused
    versions = [v for v, _ in won]
    assert sorted(versions) == list(range(2, 2 + len(won)))  # distinct, no gap
    assert sorted(uid for _, front in won for uid in front) == sorted(queued)  # each exactly once
    with server.admin() as c:
        assert c.get("/v1/admin/queue").json() == []  # none stalled
        done = c.get("/v1/admin/queue", params={"status": "consolidated"}).json()
    assert {u["id"]: u["consolidated_into"] for u in done} == {uid: v for v, front in won for uid in front}
