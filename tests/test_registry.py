"""The registry against its real databases (SQLite file, PostgreSQL cluster), raced from threads and processes.

Each decision that must happen once (a version number, a queue entry consumed, a kit claimed, a device
name, an upload, an enrolment token spent) is made by several processes at the same moment; exactly one
must win. Processes, not only threads: the server runs as several processes sharing one database.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import DATABASES
from registry_race import claim_all, consume_front, fake_sign, publish_many
from test_server_support import env_with, free_port

from central.server.blobs import FolderBlobStore
from central.server.database import PostgresDatabase, SQLiteDatabase, open_database
from central.server.registry import Registry, RegistryError

PROCS = 4


@pytest.fixture(params=DATABASES)
def db(request, tmp_path) -> tuple[Path, str | None]:
    """(data dir, database URL) of a fresh registry; the URL is None for the embedded SQLite file."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster").new_database()
    Registry(tmp_path / "data", url).close()  # schema created once, as `central serve` does before its workers
    return tmp_path / "data", url


def in_processes(fn, *args) -> list:
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 2.0  # spawned interpreters need a moment to import the registry
    with ProcessPoolExecutor(PROCS, mp_context=ctx) as ex:
        futures = [ex.submit(fn, i, start, *args) for i in range(PROCS)]
        return [f.result(timeout=120) for f in futures]


# ----------------------------------------------------------------------------------------------------
def test_the_backend_is_the_one_asked_for(db):
    data_dir, url = db
    r = Registry(data_dir, url)
    assert isinstance(r.db, PostgresDatabase if url else SQLiteDatabase)
    assert (data_dir / "registry.sqlite").exists() == (url is None)
    assert r.db.integrity_check() == "ok"
    r.close()


def test_version_numbers_are_assigned_once_across_processes(db):
    data_dir, url = db
    per = 8
    results = in_processes(publish_many, str(data_dir), url, per)
    versions = [v for rows in results for v, _ in rows]
    assert sorted(versions) == list(range(1, PROCS * per + 1))  # distinct, no gap
    r = Registry(data_dir, url)
    for rows in results:
        for v, sha in rows:
            assert r.get_version(v)["bundle_id"] == sha
    # Every version queued its kit once: PROCS * per pending kits, one per version.
    assert Counter(v for v, _ in r.kits_to_build()) == Counter(range(1, PROCS * per + 1))
    r.close()


def test_queue_entries_are_consumed_exactly_once_by_racing_processes(db):
    data_dir, url = db
    r = Registry(data_dir, url)
    r.publish(b"central-0", fake_sign, [])
    r.add_device("pi")
    n = 30
    for k in range(n):
        data = f"upload {k}".encode()
        r.add_upload("pi", data, hashlib.sha256(data).hexdigest(), 1)
    won = [front for rows in in_processes(consume_front, str(data_dir), url, 4) for front in rows]
    consumed = [uid for front in won for uid in front]
    ids = [u["id"] for u in r.queue("consolidated")]
    assert sorted(consumed) == sorted(ids) and len(ids) == n  # each consumed once, none twice
    assert r.queue() == []  # none stalled
    # Each upload names the version that consumed it, and that version consumed nothing else.
    into = Counter(u["consolidated_into"] for u in r.queue("consolidated"))
    assert sorted(into.values()) == sorted(len(f) for f in won)
    r.close()


def test_kits_are_claimed_exactly_once_across_processes(db):
    data_dir, url = db
    r = Registry(data_dir, url)
    for k in range(6):
        r.publish(f"v{k}".encode(), fake_sign, ["onnx-int8", "tflite-int8", "onnx-fp32"])
    pending = r.kits_to_build()
    claimed = [job for rows in in_processes(claim_all, str(data_dir), url) for job in rows]
    assert sorted(claimed) == sorted(pending) and len(claimed) == 18
    assert r.kits_to_build() == []
    assert {k["status"] for k in r.list_kits()} == {"building"}
    # A crash while building: recovery hands the kits out again.
    r.recover()
    assert len(r.kits_to_build()) == 18
    r.close()


def race(n: int, fn) -> list:
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            return fn(i)
        except RegistryError as e:
            return e

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def test_unique_names_uploads_and_one_time_tokens_under_racing_threads(db):
    data_dir, url = db
    regs = [Registry(data_dir, url) for _ in range(4)]  # four connection pools, as four processes would have
    regs[0].publish(b"central-0", fake_sign, [])
    added = race(8, lambda i: regs[i % 4].add_device("kitchen-pi"))
    tokens = [a for a in added if isinstance(a, str)]
    assert len(tokens) == 1
    assert all(a.status == 409 and "already exists" in str(a) for a in added if isinstance(a, RegistryError))
    enrolled = race(8, lambda i: regs[i % 4].enroll(tokens[0]))
    wins = [e for e in enrolled if isinstance(e, tuple)]
    assert len(wins) == 1 and wins[0][0] == "kitchen-pi"
    assert all(e.status == 401 for e in enrolled if isinstance(e, RegistryError))
    assert regs[0].device_for_token(wins[0][1]) == "kitchen-pi"
    data = b"one device bundle"
    sha = hashlib.sha256(data).hexdigest()
    rows = race(8, lambda i: regs[i % 4].add_upload("kitchen-pi", data, sha, 1))
    assert [dup for _row, dup in rows].count(False) == 1
    assert len({row["id"] for row, _dup in rows}) == 1
    assert [u["bundle_id"] for u in regs[0].queue()] == [sha]
    for r in regs:
        r.close()


def test_concurrent_writers_of_one_blob_leave_one_whole_file(tmp_path):
    stores = [FolderBlobStore(tmp_path) for _ in range(4)]
    data = bytes(range(256)) * 4096
    shas = race(16, lambda i: stores[i % 4].put(data))
    assert set(shas) == {hashlib.sha256(data).hexdigest()}
    assert stores[0].get(shas[0]) == data
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [shas[0]]
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(RegistryError, match="64 lowercase hex"):
        stores[0].get("../registry.sqlite")


def test_a_database_url_naming_no_supported_database_is_refused(tmp_path):
    for url, words in (("mysql://u@h/db", "not supported"), ("sqlite://", "file path"),
                       ("postgresql+asyncpg://u@h/db", "not supported"), ("::nonsense", "cannot parse")):
        with pytest.raises(ValueError, match=words):
            open_database(url, tmp_path)


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "central.server", "serve", *args], env=env_with(),
                          capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_a_bad_database_url_and_waits_out_an_unreachable_one(tmp_path):
    r = serve("--data-dir", str(tmp_path / "a"), "--database-url", "mysql://u@h/db")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "not supported" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = serve("--data-dir", str(tmp_path / "a"), "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr
    r = serve("--data-dir", str(tmp_path / "a"), "--onnx-int8", "s16s16")
    assert r.returncode == 2 and "--onnx-int8" in r.stderr and "u8u8" in r.stderr
    # Nothing listens on this port: exit 75 (retry later), one line, nothing stored.
    url = f"postgresql://central@127.0.0.1:{free_port()}/central?connect_timeout=3"
    r = serve("--data-dir", str(tmp_path / "b"), "--database-url", url, "--port", str(free_port()))
    assert r.returncode == 75, (r.returncode, r.stderr)
    assert "cannot open the registry database" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "registry.sqlite").exists()
