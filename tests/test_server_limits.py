"""The central under failures and limits, against REAL server processes on 127.0.0.1.

A locked database and a full disk answer a temporary status and keep nothing
half-written; the agent's outbox keeps such an upload and delivers it later.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest
from test_server_support import ServerProc, agent, central, crafted_upload, enrol, make_central


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("limits")


@pytest.fixture(scope="module")
def base(work) -> Path:
    path = work / "central-0.safetensors"
    make_central(path)
    return path


@pytest.fixture(scope="module")
def server(work, base):
    # No kits: a kit built in the background would change the blob counts the tests compare.
    s = ServerProc(work / "central-data", args=["--kit-formats", ""])
    s.start()
    r = central(s, "publish", str(base), "--json")
    assert r.returncode == 0, r.stderr
    yield s
    s.stop()


def blob_count(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "blobs").rglob("*") if p.is_file())


def device_token(home: Path) -> str:
    return json.loads((home / "enrollment.json").read_text())["token"]


def post_upload(server: ServerProc, home: Path, data: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + "/v1/uploads", content=data, timeout=timeout,
                      headers={"Authorization": f"Bearer {device_token(home)}",
                               "Content-Type": "application/octet-stream"})


def test_a_locked_database_answers_503_with_retry_after_and_leaves_no_blob(server, work, base):
    home = work / "agent-locked"
    enrol(server, home, "locked-pi")
    data = crafted_upload(base, seed=11)
    blobs = blob_count(server.data_dir)
    # Another process (a backup, the sqlite3 shell) holds the write lock.
    lock = sqlite3.connect(server.data_dir / "registry.sqlite", timeout=1, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        r = post_upload(server, home, data)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) > 0
        assert "busy" in r.json()["detail"]
        # The blob was stored before the row failed: it is gone again, not an orphan.
        assert blob_count(server.data_dir) == blobs
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    r = post_upload(server, home, data)
    assert r.status_code == 201, r.text
    assert blob_count(server.data_dir) == blobs + 1


@pytest.fixture
def small_disk(work):
    """A 3 MB tmpfs to be filled up (needs root, as CI runs)."""
    mnt = work / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_keeps_the_upload_in_the_outbox_until_it_is_fixed(small_disk, work, base):
    s = ServerProc(small_disk, args=["--kit-formats", ""])
    s.log = work / "small-disk-server.log"
    s.start()
    try:
        assert central(s, "publish", str(base)).returncode == 0
        home = work / "agent-full"
        enrol(s, home, "full-pi")
        bundle = work / "full.safetensors"
        bundle.write_bytes(crafted_upload(base, seed=12))
        bid = hashlib.sha256(bundle.read_bytes()).hexdigest()
        blobs = blob_count(small_disk)
        filler = fill(small_disk)
        try:
            r = agent(home, "upload", str(bundle))
            assert r.returncode == 75, (r.returncode, r.stderr)
            assert "507" in r.stderr and "Traceback" not in r.stderr
            assert blob_count(small_disk) == blobs
            st = json.loads(agent(home, "status", "--json").stdout)
            [entry] = st["outbox"]
            assert entry["bundle_id"] == bid and entry["attempts"] == 1
            assert "507" in entry["last_error"] and entry["next_try_at"]
            text = agent(home, "status").stdout
            assert "1 tries" in text and "next try" in text
        finally:
            filler.unlink()
        # The backoff holds a plain sync back (exit 75, nothing sent) ...
        r = agent(home, "sync")
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert "tried again at" in r.stderr and len(list((home / "outbox").glob("*.safetensors"))) == 1
        # ... and --retry-now delivers it, once.
        r = agent(home, "sync", "--retry-now")
        assert r.returncode == 0, r.stderr
        assert "delivered" in r.stdout and not list((home / "outbox").glob("*.safetensors"))
        rows = json.loads(central(s, "queue", "--json").stdout)
        assert [u["bundle_id"] for u in rows] == [bid]
    finally:
        s.stop()
        shutil.rmtree(small_disk / "blobs", ignore_errors=True)
