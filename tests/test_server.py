"""The central server and the agent's link to it, against a REAL server process on 127.0.0.1.

One server runs for the whole module per database (SQLite, then PostgreSQL when installed; starting one
costs seconds: torch imports); tests run in file order and build on each other's state (v1, v2, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save as st_save
from test_server_support import (
    RewritingMirror,
    ServerProc,
    agent,
    central,
    enrol,
    make_central,
    peak_rss_mb,
    refusal,
    unconsolidatable_uploads,
    wide_claim_upload,
)

from edge_agent.bundle import _data_section, load_bundle, new_manifest, save_bundle
from edge_agent.client.http import CentralClient
from edge_agent.client.pull import pull_model
from edge_agent.client.state import AgentHome, Enrollment
from edge_agent.client.trust import TrustError, verify_release
from edge_agent.models import create_model

MAX_MB = 1


@pytest.fixture(scope="module")
def work(tmp_path_factory, database_url) -> Path:
    # One folder per database: the tests build on each other's state within one database.
    return tmp_path_factory.mktemp("server-postgres" if database_url else "server-sqlite")


@pytest.fixture(scope="module")
def server(work, database_url):
    s = ServerProc(work / "central-data", args=["--max-upload-mb", str(MAX_MB), "--kit-formats", "onnx-int8",
                                                 "--kit-builder", "test_server_support:kit_builder"],
                   database_url=database_url)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def digits(work) -> Path:
    from edge_agent.data.digits import write_split_digits

    write_split_digits(work / "digits")
    return work / "digits"


@pytest.fixture(scope="module")
def v1(server, work) -> dict:
    path = work / "central-0.safetensors"
    make_central(path)
    r = central(server, "publish", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def derived(base: Path, out: Path, seed: int = 0, **changes) -> bytes:
    """A device-like bundle fine-tuned (here: nudged) from ``base``; returns its bytes."""
    b = load_bundle(base)
    torch.manual_seed(seed)
    with torch.no_grad():
        b.model.head.bias.add_(torch.randn_like(b.model.head.bias) * 0.01)
    m = new_manifest(b.model, b.labels, b.input_spec, trained_classes=["0"], parents=[b.id], method="train")
    for k, v in changes.items():
        setattr(m, k, v)
    save_bundle(b.model, m, out)
    return out.read_bytes()


def device_client(server: ServerProc, home: Path) -> httpx.Client:
    token = json.loads((home / "enrollment.json").read_text())["token"]
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def store_state(server: ServerProc) -> tuple[int, int]:
    """(number of blobs on disk, number of uploads in any state): what a rejected upload must not change."""
    blobs = sum(1 for p in (server.data_dir / "blobs").rglob("*") if p.is_file())
    with server.admin() as c:
        return blobs, len(c.get("/v1/admin/queue", params={"status": "all"}).json())


# ---------------------------------------------------------------------------


def test_admin_token_file_and_key_are_private(server):
    for name in ("admin-token", "release-key.pem"):
        assert (server.data_dir / name).stat().st_mode & 0o777 == 0o600
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/v1/admin/queue").status_code == 401


def test_rows_live_in_the_chosen_database(server, v1, database_url):
    sqlite_file = server.data_dir / "registry.sqlite"
    if database_url is None:
        assert sqlite_file.is_file()
        return
    import psycopg

    assert not sqlite_file.exists()
    with psycopg.connect(database_url) as c:
        assert c.execute("SELECT version, bundle_id FROM versions").fetchall() == [(v1["version"], v1["bundle_id"])]


def test_enrolment_one_time_token_and_auth(server, v1, work):
    r = central(server, "devices", "add", "kitchen-pi", "--json")
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["token"]
    home = work / "agent-kitchen"
    r = agent(home, "enroll", "--server", server.url, "--token", token)
    assert r.returncode == 0, r.stderr
    assert (home / "enrollment.json").stat().st_mode & 0o777 == 0o600
    # One-time: the same enrolment token cannot enrol a second agent.
    r = agent(work / "agent-thief", "enroll", "--server", server.url, "--token", token)
    assert r.returncode == 1 and "401" in r.stderr
    with device_client(server, home) as c:
        assert c.get("/v1/versions/current").json()["version"] == v1["version"]
        assert c.get("/v1/admin/queue").status_code == 401  # a device is not an admin
    bad = httpx.get(server.url + "/v1/versions/current", headers={"Authorization": "Bearer dev_wrong"})
    assert bad.status_code == 401
    # Duplicate device names are refused with a clear message.
    r = central(server, "devices", "add", "kitchen-pi")
    assert r.returncode == 1 and "already exists" in r.stderr


def test_full_cycle_pull_train_upload_consolidate_pull_kit(server, v1, work, digits):
    home = work / "agent-cycle"
    enrol(server, home, "cycle-pi")
    r = agent(home, "run", "--data", str(digits / "dev1"), "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert "delivered" in r.stdout
    r = central(server, "queue", "--json")
    queued = json.loads(r.stdout)
    assert [u["device"] for u in queued] == ["cycle-pi"] and queued[0]["base_version"] == v1["version"]
    r = central(server, "consolidate", "--from-queue", "--steps", "5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["version"] == v1["version"] + 1 and out["consolidated"] == [queued[0]["id"]]
    assert json.loads(central(server, "queue", "--json").stdout) == []
    # Consolidating again finds nothing: each upload is consumed once.
    r = central(server, "consolidate", "--from-queue", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["version"] is None
    r = agent(home, "pull-kit", "--format", "onnx-int8", "--wait", "120")
    assert r.returncode == 0, r.stderr
    status = json.loads(agent(home, "status", "--json").stdout)
    assert status["kits"]["onnx-int8"]["version"] == out["version"]
    assert (home / "kits" / "onnx-int8" / "current" / "manifest.json").is_file()
    r = agent(home, "sync")
    assert r.returncode == 0, r.stderr
    assert json.loads(agent(home, "status", "--json").stdout)["model_version"] == out["version"]


def _nan_bundle(base: Path) -> bytes:
    """A bundle whose manifest checksum is right but whose weights hold a NaN (a poisoned upload)."""
    b = load_bundle(base)
    tensors = {k: v.detach().clone().contiguous() for k, v in b.model.state_dict().items()}
    tensors["head.bias"][0] = float("nan")
    m = new_manifest(b.model, b.labels, b.input_spec, trained_classes=["0"], parents=[b.id], method="train")
    m.weights_sha256 = hashlib.sha256(_data_section(st_save(tensors))).hexdigest()
    return st_save(tensors, metadata={"manifest": m.to_json()})


def test_bad_uploads_are_rejected_without_a_trace(server, v1, work):
    home = work / "agent-kitchen"
    base = work / "central-0.safetensors"
    good = derived(base, work / "good.safetensors")
    flipped = bytearray(good)
    flipped[-10] ^= 0x01
    wide = create_model("cnn-s", num_classes=10, in_chans=1, width=8)
    b = load_bundle(base)
    wrong_arch = work / "wrong-arch.safetensors"
    save_bundle(wide, new_manifest(wide, b.labels, b.input_spec, ["0"], parents=[b.id], method="train"), wrong_arch)
    stranger = work / "stranger.safetensors"
    make_central(stranger, seed=7)  # no lineage to any published version
    relabel = work / "relabel.safetensors"  # labels match by name: one that is no class name is refused
    derived(base, relabel, labels=[*b.labels[:-1], b.labels[-1] + "\n"], trained_classes=["0"])
    header_bomb = struct.pack("<Q", 1 << 40) + b"{}"
    cases = {
        "truncated": (good[: len(good) // 2], 422, "corrupt"),
        "bit-flipped": (bytes(flipped), 422, "checksum"),
        "wrong architecture": (wrong_arch.read_bytes(), 422, "architecture"),
        "NaN weights": (_nan_bundle(base), 422, "NaN"),
        "no lineage": (stranger.read_bytes(), 422, "does not derive"),
        "a label with a newline": (relabel.read_bytes(), 422, "bad label"),
        "header size bomb": (header_bomb, 422, "header"),
        "empty": (b"", 422, "too short"),
        "oversized": (b"\0" * (MAX_MB * 1024 * 1024 + 1), 413, "exceeds"),
    }
    before = store_state(server)
    with device_client(server, home) as c:
        for name, (body, status, words) in cases.items():
            r = c.post("/v1/uploads", content=body)
            assert r.status_code == status, (name, r.status_code, r.text)
            detail = r.json()["detail"]
            assert words.lower() in detail.lower(), (name, detail)
            assert "\n" not in detail
        # A base version the bundle does not come from, and one that does not exist.
        assert c.post("/v1/uploads", content=good, params={"base_version": 999}).status_code == 422
        assert c.get("/healthz").status_code == 200
    assert store_state(server) == before
    metrics = httpx.get(server.url + "/metrics").text
    assert 'central_upload_rejections_total{reason="too_large"} 1' in metrics
    assert "central_queue_length" in metrics


def test_uploads_the_consolidator_would_refuse_are_refused(server, v1, work):
    # Each was answered 201 once, then `central consolidate --from-queue` refused it every time: the queue was stuck.
    base = work / "central-0.safetensors"
    before = store_state(server)
    with device_client(server, work / "agent-kitchen") as c:
        for name, (body, fld) in unconsolidatable_uploads(base).items():
            r = c.post("/v1/uploads", content=body)
            assert r.status_code == 422, (name, r.status_code, r.text)
            detail = r.json()["detail"]
            assert fld in detail and "\n" not in detail, (name, detail)
            assert detail == f"rejected: {refusal(base, body)}", name  # the consolidator's words
    assert store_state(server) == before


def test_an_architecture_mismatch_is_refused_before_the_model_is_built(server, v1, work):
    # A few KB claiming width 2500 used to make the server build a ~2 GB model before comparing it.
    base = work / "central-0.safetensors"
    body = wide_claim_upload(base, width=2500)
    before = store_state(server)
    peak = peak_rss_mb(server.proc.pid)
    with device_client(server, work / "agent-kitchen") as c:
        r = c.post("/v1/uploads", content=body)
    assert r.status_code == 422, r.text
    assert "arch_config" in r.json()["detail"] and "2500" in r.json()["detail"]
    assert peak_rss_mb(server.proc.pid) - peak < 200
    assert store_state(server) == before


def test_idempotent_upload_and_cli_upload(server, v1, work):
    home = work / "agent-kitchen"
    data = derived(work / "central-0.safetensors", work / "idem.safetensors", seed=3)
    with device_client(server, home) as c:
        first = c.post("/v1/uploads", content=data)
        second = c.post("/v1/uploads", content=data)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    assert second.status_code == 200 and second.json()["duplicate"] is True
    assert first.json()["upload"]["id"] == second.json()["upload"]["id"]
    assert first.json()["upload"]["device"] == "kitchen-pi"  # the token decides who uploads
    r = agent(home, "upload", str(work / "idem.safetensors"))
    assert r.returncode == 0 and "already stored" in r.stdout, r.stderr
    # A broken local file is refused before it reaches the outbox.
    (work / "junk.safetensors").write_bytes(b"not a bundle at all")
    r = agent(home, "upload", str(work / "junk.safetensors"))
    assert r.returncode == 2 and r.stderr.startswith("error:")
    assert not list((home / "outbox").glob("*.safetensors"))


def test_path_traversal_and_upload_privacy(server, v1, work):
    home = work / "agent-kitchen"
    queued = json.loads(central(server, "queue", "--json").stdout)
    with device_client(server, home) as c:
        for bad in ("..%2Fadmin-token", "..%2F..%2Fadmin-token", "%2E%2E%2Frelease-key.pem", "A" * 64,
                    "../registry.sqlite"):
            r = c.get(f"/v1/blobs/{bad}")
            assert r.status_code in (400, 404), (bad, r.status_code)
            assert b"adm_" not in r.content and b"PRIVATE" not in r.content
        # Another device's upload is not readable by a device, only by the admin.
        assert c.get(f"/v1/blobs/{queued[0]['bundle_id']}").status_code == 404
        # A client-chosen name is ignored; the blob is stored under its sha256 only.
        data = derived(work / "central-0.safetensors", work / "named.safetensors", seed=5)
        r = c.post("/v1/uploads", content=data, params={"name": "../../../etc/evil", "filename": "../x"})
        assert r.status_code == 201
    assert not (server.data_dir.parent / "x").exists()
    names = {p.name for p in (server.data_dir / "blobs").rglob("*") if p.is_file()}
    assert hashlib.sha256(data).hexdigest() in names


def test_signed_releases_refuse_replay_and_forgery(server, v1, work):
    home = AgentHome(work / "agent-cycle")
    enr = home.enrollment()
    with CentralClient(enr.server, enr.token, retries=0) as c:
        current = c.get_json("/v1/versions/current")
        old = c.get_json(f"/v1/versions/{v1['version']}")
        assert current["version"] > old["version"]
        with pytest.raises(TrustError, match="rollback"):
            pull_model(c, home, release=old)  # a validly signed but older release is a replay
        forged = json.loads(json.dumps(current))
        forged["statement"]["version"] += 10
        with pytest.raises(TrustError, match="bad signature"):
            pull_model(c, home, release=forged)
        forged = json.loads(json.dumps(current))
        forged["statement"]["sha256"] = old["statement"]["sha256"]
        with pytest.raises(TrustError, match="bad signature"):
            pull_model(c, home, release=forged)
        with pytest.raises(TrustError, match="unsigned"):
            pull_model(c, home, release={**current, "signature": ""})
    # The pinned key is the server's: another key's signature is refused.
    from central.server.signing import ReleaseSigner

    other = ReleaseSigner(work / "other-key")
    st, sig = other.sign("model", 99, "0" * 64, "safetensors-bundle", 1)
    with pytest.raises(TrustError, match="bad signature"):
        verify_release({"statement": st, "signature": sig}, enr.public_key, "model")


def test_revoked_device_is_locked_out(server, v1, work):
    home = work / "agent-revoked"
    enrol(server, home, "lost-pi")
    assert central(server, "devices", "revoke", "lost-pi").returncode == 0
    r = agent(home, "pull")
    assert r.returncode == 1 and "revoked" in r.stderr
    rows = json.loads(central(server, "devices", "list", "--json").stdout)
    assert {"device": "lost-pi", "revoked": True}.items() <= next(d for d in rows if d["device"] == "lost-pi").items()


def test_a_mirror_serving_another_versions_kit_is_refused(server, v1, work):
    home = work / "agent-mirrored"
    enr = json.loads((work / "agent-cycle" / "enrollment.json").read_text())
    with server.admin() as c:
        deadline = time.monotonic() + 120
        while c.get(f"/v1/kits/{v1['version']}/onnx-int8").json()["status"] != "ready":
            assert time.monotonic() < deadline, "the v1 kit was never built"
            time.sleep(0.5)
    mirror = RewritingMirror(server.url, lambda p: re.sub(r"^/v1/kits/\d+/", f"/v1/kits/{v1['version']}/", p))
    try:
        AgentHome(home).save_enrollment(Enrollment(server=mirror.url, device=enr["device"], token=enr["token"],
                                                   public_key=enr["public_key"]))
        asked = v1["version"] + 1
        r = agent(home, "pull-kit", "--format", "onnx-int8", "--version", str(asked), "--wait", "0")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert f"of v{asked}, the signed release is the one of v{v1['version']}" in r.stderr
        assert f"/v1/kits/{asked}/onnx-int8" in mirror.served
    finally:
        mirror.close()
    assert not (home / "kits" / "onnx-int8" / "current").exists()
    assert json.loads(agent(home, "status", "--json").stdout)["kits"] == {}


def test_bad_kit_is_rolled_back_and_failed_export_is_recorded(server, v1, work):
    home = work / "agent-cycle"
    good = json.loads(agent(home, "status", "--json").stdout)["kits"]["onnx-int8"]
    broken = work / "central-broken-kit.safetensors"
    make_central(broken, extra={"test_kit": "break"}, seed=11)
    assert central(server, "publish", str(broken)).returncode == 0
    r = agent(home, "pull-kit", "--format", "onnx-int8", "--wait", "120")
    assert r.returncode == 1 and "rolled back" in r.stderr, r.stderr
    after = json.loads(agent(home, "status", "--json").stdout)["kits"]["onnx-int8"]
    assert after == good  # still the previous kit, still active
    assert (home / "kits" / "onnx-int8" / "current" / "manifest.json").is_file()

    failing = work / "central-no-export.safetensors"
    make_central(failing, extra={"test_kit": "fail"}, seed=12)
    assert central(server, "publish", str(failing)).returncode == 0
    r = agent(home, "pull-kit", "--format", "onnx-int8", "--wait", "120")
    assert r.returncode == 1 and "export unavailable" in r.stderr, r.stderr
    with server.admin() as c:
        kits = c.get("/v1/admin/kits").json()
    assert any(k["status"] == "failed" and "export unavailable" in (k["error"] or "") for k in kits)
    assert httpx.get(server.url + "/healthz").json()["ok"] is True


def test_outbox_is_delivered_once_after_the_server_comes_back(server, v1, work):
    home = work / "agent-kitchen"
    bundle = work / "offline.safetensors"
    derived(work / "central-0.safetensors", bundle, seed=21)
    bid = hashlib.sha256(bundle.read_bytes()).hexdigest()
    server.stop()
    try:
        r = agent(home, "upload", str(bundle))
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert "outbox" in r.stderr
        assert len(list((home / "outbox").glob("*.safetensors"))) == 1
    finally:
        server.start()
    r = agent(home, "sync")  # within the backoff after the failed try: kept, nothing sent
    assert r.returncode == 75 and "tried again at" in r.stderr
    r = agent(home, "sync", "--retry-now")
    assert r.returncode == 0, r.stderr
    assert "delivered" in r.stdout
    assert not list((home / "outbox").glob("*.safetensors"))
    r = agent(home, "sync")
    assert r.returncode == 0 and "delivered" not in r.stdout
    rows = json.loads(central(server, "queue", "--json").stdout)
    assert [u["bundle_id"] for u in rows].count(bid) == 1
