"""The agent's client logic in isolation (fast, no server process): retries, resumable downloads,
outbox exactly-once, safe unpacking, kit swap and rollback. The end-to-end paths against a real
server are in ``test_server.py``."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest
from test_server_support import free_port

from central.server.kits import tar_folder
from central.server.signing import ReleaseSigner
from edge_agent.client.http import CentralClient, CentralError, CentralUnreachable
from edge_agent.client.kits import KitRejected, active_kit, install_kit, safe_extract
from edge_agent.client.outbox import Outbox
from edge_agent.client.state import AgentHome, AgentState, Enrollment


def test_retries_are_bounded_with_exponential_backoff():
    sleeps: list[float] = []
    c = CentralClient(f"http://127.0.0.1:{free_port()}", retries=3, backoff=0.1, max_backoff=0.3, sleep=sleeps.append)
    with pytest.raises(CentralUnreachable, match="after 4 attempts"):
        c.get_json("/healthz")
    assert len(sleeps) == 3
    # Jitter keeps each delay within [0.5, 1] of min(max_backoff, backoff * 2**i).
    for i, s in enumerate(sleeps):
        cap = min(0.3, 0.1 * 2**i)
        assert cap / 2 <= s <= cap


def test_retry_on_503_then_success_and_no_retry_on_4xx():
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        if req.url.path == "/flaky" and len(calls) < 3:
            return httpx.Response(503, json={"detail": "busy"})
        if req.url.path == "/bad":
            return httpx.Response(422, json={"detail": "rejected: nope"})
        return httpx.Response(200, json={"ok": True})

    c = CentralClient("http://central", retries=4, sleep=lambda s: None, transport=httpx.MockTransport(handler))
    assert c.get_json("/flaky") == {"ok": True} and len(calls) == 3
    with pytest.raises(CentralError, match="rejected: nope") as e:
        c.get_json("/bad")
    assert e.value.status == 422 and calls.count("/bad") == 1


def test_retry_after_waits_get_jitter_so_devices_do_not_retry_in_lockstep():
    from edge_agent.client.http import RETRY_AFTER_JITTER

    def busy(_req: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "5"})

    sleeps: list[float] = []
    c = CentralClient("http://central", retries=20, backoff=0.01, max_backoff=0.01, sleep=sleeps.append,
                      transport=httpx.MockTransport(busy))
    with pytest.raises(CentralUnreachable, match="after 21 attempts"):
        c.get_json("/v1/versions/current")
    assert len(sleeps) == 20
    # Never sooner than the server asked, at most RETRY_AFTER_JITTER later, and not all the same wait.
    assert all(5 <= s <= 5 * (1 + RETRY_AFTER_JITTER) for s in sleeps)
    assert len(set(sleeps)) > 1


def _blob_server(blob: bytes, seen: list):
    def handler(req: httpx.Request) -> httpx.Response:
        rng = req.headers.get("range")
        seen.append(rng)
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            return httpx.Response(206, content=blob[start:],
                                  headers={"Content-Range": f"bytes {start}-{len(blob) - 1}/{len(blob)}"})
        return httpx.Response(200, content=blob)

    return httpx.MockTransport(handler)


def test_download_resumes_with_range_and_verifies_sha256(tmp_path):
    blob = bytes(range(256)) * 1000
    sha = hashlib.sha256(blob).hexdigest()
    dest = tmp_path / "model.safetensors"
    (tmp_path / "model.safetensors.part").write_bytes(blob[:100_000])  # an interrupted earlier download
    seen: list = []
    c = CentralClient("http://central", transport=_blob_server(blob, seen))
    c.download(sha, dest, sha)
    assert seen == ["bytes=100000-"] and dest.read_bytes() == blob
    assert not (tmp_path / "model.safetensors.part").exists()
    # Bytes that do not match the signed sha256 never become the destination file.
    other = tmp_path / "other.bin"
    with pytest.raises(CentralError, match="does not match its signed sha256"):
        c.download(sha, other, "0" * 64)
    assert not other.exists() and not (tmp_path / "other.bin.part").exists()


def test_outbox_delivers_exactly_once_and_sets_rejects_aside(tmp_path):
    stored: dict[str, int] = {}

    def handler(req: httpx.Request) -> httpx.Response:
        data = req.read()
        if data.startswith(b"BAD"):
            return httpx.Response(422, json={"detail": "rejected: tensor 'w' has NaN or infinite values"})
        bid = hashlib.sha256(data).hexdigest()
        dup = bid in stored
        stored.setdefault(bid, len(stored) + 1)
        return httpx.Response(200 if dup else 201, json={"duplicate": dup, "upload": {"id": stored[bid], "bundle_id": bid}})

    a, b, bad = tmp_path / "a.st", tmp_path / "b.st", tmp_path / "bad.st"
    a.write_bytes(b"bundle a")
    b.write_bytes(b"bundle b")
    bad.write_bytes(b"BAD bundle")
    box = Outbox(tmp_path / "outbox")
    box.add(a, 1)
    box.add(a, 1)  # the same bundle twice is one entry
    box.add(bad, 1)
    box.add(b, 1)
    assert len(box.pending()) == 3
    c = CentralClient("http://central", transport=httpx.MockTransport(handler))
    results = box.deliver(c)
    assert [r.status for r in results] == ["stored", "rejected", "stored"]
    assert "NaN" in results[1].detail and len(list(box.rejected.glob("*.safetensors"))) == 1
    assert box.pending() == [] and len(stored) == 2
    # A crash after the central's answer but before the local deletion: the retry is a harmless duplicate.
    box.add(a, 1)
    assert [r.status for r in box.deliver(c)] == ["duplicate"] and len(stored) == 2


def test_outbox_keeps_entries_when_central_is_unreachable(tmp_path):
    f = tmp_path / "x.st"
    f.write_bytes(b"bundle x")
    box = Outbox(tmp_path / "outbox")
    box.add(f)
    c = CentralClient(f"http://127.0.0.1:{free_port()}", retries=1, sleep=lambda s: None)
    with pytest.raises(CentralUnreachable):
        box.deliver(c)
    assert len(box.pending()) == 1


def _tar(entries: list[tarfile.TarInfo], payload: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for info in entries:
            if info.isfile():
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
            else:
                t.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("name,kind", [("../evil", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE),
                                       ("a/../../evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)])
def test_safe_extract_refuses_escaping_entries(tmp_path, name, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    archive = tmp_path / "kit.tar"
    archive.write_bytes(_tar([info]))
    with pytest.raises(KitRejected, match="unsafe entry"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


class FakeCentral:
    """Signed kit releases served from memory (a real signer, a mocked transport)."""

    def __init__(self, tmp: Path):
        self.signer = ReleaseSigner(tmp / "central-key")
        self.kits: dict[int, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.current = 0

    def add_kit(self, version: int, folder: Path) -> None:
        data = tar_folder(folder)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        st, sig = self.signer.sign("kit", version, sha, "onnx-int8", len(data))
        self.kits[version] = {"status": "ready", "statement": st, "signature": sig, "blob_id": sha}
        mst, msig = self.signer.sign("model", version, "a" * 64, "safetensors-bundle", 0)
        self.current = {"version": version, "statement": mst, "signature": msig}

    def transport(self) -> httpx.MockTransport:
        def handler(req: httpx.Request) -> httpx.Response:
            path = req.url.path
            if path == "/v1/versions/current":
                return httpx.Response(200, json=self.current)
            if path.startswith("/v1/kits/"):
                return httpx.Response(200, json=self.kits[int(path.split("/")[3])])
            if path.startswith("/v1/blobs/"):
                return httpx.Response(200, content=self.blobs[path.rsplit("/", 1)[1]])
            return httpx.Response(404, json={"detail": "no"})

        return httpx.MockTransport(handler)


def _kit_folder(root: Path, tag: str) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"tag": tag}))
    (root / "model.onnx").write_bytes(tag.encode())
    return root


def test_kit_swap_keeps_previous_and_rolls_back_a_bad_kit(tmp_path):
    central = FakeCentral(tmp_path)
    home = AgentHome(tmp_path / "agent")
    home.save_enrollment(Enrollment("http://central", "pi", "dev_x", central.signer.public_key_b64))
    home.save_state(AgentState())

    def smoke(kit_dir: Path, fmt: str) -> dict:
        tag = json.loads((kit_dir / "manifest.json").read_text())["tag"]
        if tag == "bad":
            raise RuntimeError("smoke inference gave shape [1, 10], expected [1, 11]")
        return {"tag": tag}

    c = CentralClient("http://central", transport=central.transport())
    central.add_kit(1, _kit_folder(tmp_path / "k1", "good1"))
    assert install_kit(c, home, "onnx-int8", smoke=smoke).version == 1
    central.add_kit(2, _kit_folder(tmp_path / "k2", "good2"))
    assert install_kit(c, home, "onnx-int8", smoke=smoke).version == 2
    kits = home.kits / "onnx-int8"
    assert (kits / "previous").resolve().name == "v1" and active_kit(home, "onnx-int8").name == "v2"
    central.add_kit(3, _kit_folder(tmp_path / "k3", "bad"))
    with pytest.raises(KitRejected, match="rolled back to v2"):
        install_kit(c, home, "onnx-int8", smoke=smoke)
    assert active_kit(home, "onnx-int8").name == "v2" and not (kits / "v3").exists()
    assert home.state().kits["onnx-int8"] == 2
    # A validly signed but older kit is a replay: refused, nothing changes.
    with pytest.raises(Exception, match="rollback"):
        install_kit(c, home, "onnx-int8", version=1, smoke=smoke)
    assert active_kit(home, "onnx-int8").name == "v2"


def test_outbox_backs_off_on_temporary_answers_and_rejects_only_file_problems(tmp_path):
    answers = {b"busy": 500, b"dup": 409, b"gone": 404, b"big": 413}
    tries: list[bytes] = []

    def handler(req: httpx.Request) -> httpx.Response:
        data = req.read()
        tries.append(data)
        return httpx.Response(answers[data], json={"detail": f"answer {answers[data]}"})

    c = CentralClient("http://central", retries=2, sleep=lambda s: None, transport=httpx.MockTransport(handler))
    box = Outbox(tmp_path / "outbox")
    for name in (b"busy", b"dup", b"big", b"gone"):
        f = tmp_path / name.decode()
        f.write_bytes(name)
        box.add(f)
    with pytest.raises(CentralUnreachable, match="500"):
        box.deliver(c, now=1000.0)
    assert tries == [b"busy"] * 3  # a 500 is retried, then kept
    [busy, *_] = box.pending()
    assert busy.attempts == 1 and "500" in busy.last_error and busy.next_try_at == 1000.0 + 30.0
    # Within the backoff nothing is sent; arrival order holds the rest back.
    assert [r.status for r in box.deliver(c, now=1010.0)] == ["waiting"] and len(tries) == 3
    answers[b"busy"] = 201
    handler_ok = httpx.MockTransport(lambda req: httpx.Response(
        answers[req.read()], json={"duplicate": False, "upload": {"id": 1}} if answers[req.content] == 201
        else {"detail": f"answer {answers[req.content]}"}))
    c = CentralClient("http://central", retries=0, transport=handler_ok)
    with pytest.raises(CentralError) as e:
        box.deliver(c, now=1031.0)
    assert e.value.status == 404  # not about the file: kept, and the error is the caller's to show
    assert [p.bundle_id for p in box.pending()] == [hashlib.sha256(b"gone").hexdigest()]
    assert len(list(box.rejected.glob("*.safetensors"))) == 1  # only the 413
    assert box.pending()[0].attempts == 1 and not box.pending()[0].waiting(1031.0)
