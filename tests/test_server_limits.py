"""The central under failures and limits, against REAL server processes on 127.0.0.1.

A locked database and a full disk answer a temporary status and keep nothing
half-written; the agent's outbox keeps such an upload and delivers it later.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from test_server_support import ServerProc, agent, central, crafted_upload, enrol, make_central

MAX_MB = 0.05  # 52 kB: the test bundles have 9 kB
MAX_UPLOADS = 2


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
    s = ServerProc(work / "central-data", args=["--kit-formats", "", "--max-upload-mb", str(MAX_MB),
                                                 "--max-concurrent-uploads", str(MAX_UPLOADS)])
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


def test_a_locked_postgresql_table_answers_503_with_retry_after_not_a_hang(pg_cluster, work, base):
    import psycopg

    url = pg_cluster.new_database()
    s = ServerProc(work / "pg-locked-data", args=["--kit-formats", ""], database_url=url)
    s.start(timeout=120)
    try:
        assert central(s, "publish", str(base)).returncode == 0
        home = work / "agent-pg-locked"
        enrol(s, home, "pg-locked-pi")
        data = crafted_upload(base, seed=15)
        blobs = blob_count(s.data_dir)
        # An admin's maintenance transaction holds the table uploads are written to.
        with psycopg.connect(url) as lock:
            lock.execute("LOCK TABLE uploads IN ACCESS EXCLUSIVE MODE")
            r = post_upload(s, home, data)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0 and "busy" in r.json()["detail"]
            assert blob_count(s.data_dir) == blobs
            lock.rollback()
        r = post_upload(s, home, data)
        assert r.status_code == 201, r.text
        assert blob_count(s.data_dir) == blobs + 1
    finally:
        s.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs to be filled up (needs root, as CI runs)."""
    mnt = tmp_path / "small-disk"
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


def test_uploads_beyond_the_size_cap_get_413_even_without_content_length(server, work, base):
    home = work / "agent-big"
    enrol(server, home, "big-pi")
    cap = int(MAX_MB * 1024 * 1024)
    blobs = blob_count(server.data_dir)
    r = post_upload(server, home, b"\0" * (cap + 1))
    assert r.status_code == 413 and str(cap) in r.json()["detail"]

    def chunked():  # no Content-Length: the cap is enforced while streaming
        for _ in range(cap // 4096 + 2):
            yield b"\0" * 4096

    r = httpx.post(server.url + "/v1/uploads", content=chunked(), timeout=60,
                   headers={"Authorization": f"Bearer {device_token(home)}"})
    assert r.status_code == 413
    assert blob_count(server.data_dir) == blobs and not list((server.data_dir / "tmp").iterdir())


def slow_upload(server: ServerProc, token: str) -> socket.socket:
    """An upload whose body never finishes arriving: it holds one upload slot while the socket is open."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(f"POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
              "Content-Type: application/octet-stream\r\nContent-Length: 40000\r\n\r\n".encode() + b"\0" * 100)
    return s


def test_concurrent_uploads_beyond_the_cap_get_503_with_retry_after(server, work, base):
    home = work / "agent-many"
    enrol(server, home, "many-pi")
    token = device_token(home)
    held = [slow_upload(server, token) for _ in range(MAX_UPLOADS)]
    try:
        deadline = time.monotonic() + 20
        while True:  # the slow uploads take their slots once the server has read their headers
            r = post_upload(server, home, crafted_upload(base, seed=13))
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) > 0 and "in progress" in r.json()["detail"]
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 20
    while (r := post_upload(server, home, crafted_upload(base, seed=13))).status_code == 503:
        assert time.monotonic() < deadline, "closed uploads never gave their slots back"
        time.sleep(0.2)
    assert r.status_code == 201, r.text


def test_statements_carry_size_and_expiry_and_old_ones_are_refused(server, work, base):
    from central.server.signing import ReleaseSigner
    from edge_agent.client.trust import Statement, TrustError, b64, verify_release

    home = work / "agent-trust"
    enrol(server, home, "trust-pi")
    pinned = json.loads((home / "enrollment.json").read_text())["public_key"]
    r = httpx.get(server.url + "/v1/versions/current", headers={"Authorization": f"Bearer {device_token(home)}"})
    release = r.json()
    st = verify_release(release, pinned, "model")
    assert st.size == base.stat().st_size == release["size"]
    left = datetime.fromisoformat(st.expires_at) - datetime.now(UTC)
    assert timedelta(days=29) < left <= timedelta(days=30)
    # Signed afresh when served: a statement seen later expires later.
    time.sleep(1.1)
    again = httpx.get(server.url + "/v1/versions/current", headers={"Authorization": f"Bearer {device_token(home)}"})
    assert verify_release(again.json(), pinned, "model").expires_at > st.expires_at
    # Past its expiry, a captured statement is refused.
    with pytest.raises(TrustError, match="expired"):
        verify_release(release, pinned, "model", now=datetime.now(UTC) + timedelta(days=31))
    # A statement of an older central (no size, no expiry), even signed by the pinned key, is refused.
    old = {k: release["statement"][k] for k in ("kind", "version", "sha256", "format", "created_at")}
    key = ReleaseSigner(server.data_dir)._key
    canonical = json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(TrustError, match="upgrade the server"):
        verify_release({"statement": old, "signature": b64(key.sign(canonical))}, pinned, "model")
    # A size other than the signed one breaks the signature.
    forged = {**release["statement"], "size": st.size + 1}
    with pytest.raises(TrustError, match="bad signature"):
        verify_release({"statement": forged, "signature": release["signature"]}, pinned, "model")
    assert Statement.from_dict(release["statement"]) == st


class EndlessMirror(http.server.BaseHTTPRequestHandler):
    """A hostile mirror: answers every blob request with bytes that never end."""

    sent = 0

    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            while EndlessMirror.sent < 256 * 1024 * 1024:
                self.wfile.write(b"\0" * 65536)
                EndlessMirror.sent += 65536
        except OSError:
            pass  # the client hung up: what a capped download does

    def log_message(self, *args):
        pass


def test_a_download_stops_as_soon_as_more_than_the_signed_length_arrives(tmp_path):
    from edge_agent.client.http import CentralClient, CentralError

    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EndlessMirror)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "model.safetensors"
        with CentralClient(f"http://127.0.0.1:{mirror.server_address[1]}", retries=0) as c:
            with pytest.raises(CentralError, match="more than the 100000 bytes"):
                c.download("a" * 64, dest, "a" * 64, size=100_000)
        time.sleep(0.5)
        assert EndlessMirror.sent < 16 * 1024 * 1024  # stopped early, not after the mirror gave up
        assert not dest.exists() and not list(tmp_path.iterdir())
    finally:
        mirror.shutdown()


def test_integers_beyond_64_bits_are_client_errors_not_500(server, work, base):
    home = work / "agent-ints"
    enrol(server, home, "ints-pi")
    huge = str(2**64)
    device = {"Authorization": f"Bearer {device_token(home)}"}
    with server.admin() as admin:
        for client, method, url in [
            (None, "GET", f"/v1/versions/{huge}"),
            (None, "GET", f"/v1/versions/{2**63}/kits"),
            (None, "GET", f"/v1/kits/{huge}/onnx-int8"),
            (admin, "GET", f"/v1/admin/uploads/{huge}/blob"),
            (admin, "POST", f"/v1/admin/kits/{huge}/onnx-int8/rebuild"),
            (admin, "POST", f"/v1/admin/versions?consolidates={huge}"),
            (admin, "POST", f"/v1/admin/versions?expected_current={huge}"),
            (None, "POST", f"/v1/uploads?base_version={huge}"),
            (None, "GET", f"/v1/versions/-{huge}"),
        ]:
            if client is None:
                r = httpx.request(method, server.url + url, headers=device, content=base.read_bytes(), timeout=30)
            else:
                r = client.request(method, url, content=base.read_bytes())
            assert r.status_code in (404, 422), (url, r.status_code, r.text)
        # The largest id SQLite holds is simply not there.
        assert admin.get(f"/v1/admin/uploads/{2**63 - 1}/blob").status_code == 404


JSON = {"Content-Type": "application/json"}


def ascii_json(obj) -> bytes:
    """JSON with lone surrogates escaped (\\ud800), as a hostile client can send; httpx's json= cannot encode them."""
    return json.dumps(obj).encode()


def test_names_and_tokens_with_a_newline_or_a_lone_surrogate_are_refused(server, work):
    with server.admin() as admin:
        for name in ("pi\n", "pi\r\n", "\ud800", "pi\ud800"):
            r = admin.post("/v1/admin/devices", content=ascii_json({"name": name}), headers=JSON)
            assert r.status_code == 422, (name, r.status_code, r.text)
        assert not any(d["device"].startswith("pi") for d in admin.get("/v1/admin/devices").json())
        token = admin.post("/v1/admin/devices", json={"name": "newline-pi"}).json()["token"]
    for bad in (token + "\n", "\ud800", token[:-1] + "\udfff"):
        r = httpx.post(server.url + "/v1/enroll", content=ascii_json({"token": bad}), headers=JSON, timeout=30)
        assert r.status_code in (401, 422), (bad, r.status_code, r.text)
    assert httpx.post(server.url + "/v1/enroll", json={"token": token}, timeout=30).status_code == 200


def test_edge_agent_upload_of_a_hostile_file_prints_one_line(server, work, base):
    home = work / "agent-hostile"
    enrol(server, home, "hostile-pi")
    header_len = int.from_bytes(base.read_bytes()[:8], "little")
    header = json.loads(base.read_bytes()[8 : 8 + header_len])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = None
    raw = json.dumps(header).encode()
    hostile = work / "hostile.safetensors"
    hostile.write_bytes(len(raw).to_bytes(8, "little") + raw + base.read_bytes()[8 + header_len :])
    r = agent(home, "upload", str(hostile))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip().count("\n") == 0 and "data_offsets" in r.stderr and "Traceback" not in r.stderr
    r = agent(home, "upload", str(base), "--base-version", str(2**64))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "base-version" in r.stderr
    assert not list((home / "outbox").rglob("*.safetensors"))  # a bad option queues nothing


def series(server: ServerProc) -> set[str]:
    """The label sets of the request counters /metrics reports now."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("central_http_requests_total{")}


def test_metrics_labels_stay_bounded_whatever_clients_send(server):
    before = series(server)
    for i in range(30):
        httpx.request(f"BREW{i}", server.url + f"/v1/versions/{i}", timeout=30)
        httpx.get(server.url + f"/no/such/path/{i}", timeout=30)
        httpx.get(server.url + f"/v1/versions/{i}", timeout=30)  # 401: no token, one route template
    text = httpx.get(server.url + "/metrics", timeout=30).text
    assert "BREW" not in text and 'method="other"' in text
    assert "/no/such" not in text and 'route="unmatched"' in text
    assert 'route="/v1/versions/{version}",status="401"' in text and "/v1/versions/7" not in text
    # 90 requests with 30 methods and 60 paths: at most three new label sets (and /metrics itself).
    assert len(series(server) - before) <= 4


def test_a_duplicate_from_another_device_does_not_reveal_the_first_uploader(server, work, base):
    first, second = work / "agent-first", work / "agent-second"
    enrol(server, first, "first-pi")
    enrol(server, second, "second-pi")
    data = crafted_upload(base, seed=14)
    r = post_upload(server, first, data)
    assert r.status_code == 201 and r.json()["upload"]["device"] == "first-pi"
    r = post_upload(server, second, data)
    assert r.status_code == 409, r.text
    assert "first-pi" not in r.text and "another device" in r.json()["detail"]
    r = post_upload(server, first, data)  # the same device again: its own row
    assert r.status_code == 200 and r.json()["upload"]["device"] == "first-pi"
    # The second device's outbox counts the 409 as delivered.
    bundle = work / "dup.safetensors"
    bundle.write_bytes(data)
    r = agent(second, "upload", str(bundle))
    assert r.returncode == 0, r.stderr
    assert "already stored" in r.stdout and not list((second / "outbox").rglob("*.safetensors"))


def test_a_full_disk_on_the_device_during_pull_gives_one_line_and_no_part_file(server, small_disk, base):
    home = small_disk / "agent"
    enrol(server, home, "tiny-pi")
    filler = fill(small_disk)
    try:
        r = agent(home, "pull")
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "No space left" in r.stderr, r.stderr
        assert not list(home.rglob("*.part")) and not (home / "models" / "v1.safetensors").exists()
    finally:
        filler.unlink()
    r = agent(home, "pull")
    assert r.returncode == 0, r.stderr
    assert (home / "models" / "v1.safetensors").read_bytes() == base.read_bytes()


def test_the_openapi_spec_documents_the_error_answers(server):
    spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
    upload = spec["paths"]["/v1/uploads"]["post"]["responses"]
    assert {"200", "201", "401", "409", "413", "422", "503", "507"} <= set(upload)
    assert upload["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
    blob = spec["paths"]["/v1/blobs/{blob_id}"]["get"]["responses"]
    assert {"200", "206", "400", "401", "404"} <= set(blob)
    publish = spec["paths"]["/v1/admin/versions"]["post"]["responses"]
    assert {"400", "401", "409", "413", "422", "503"} <= set(publish)
    version = spec["paths"]["/v1/versions/{version}"]["get"]
    assert version["parameters"][0]["schema"]["maximum"] == 2**63 - 1
