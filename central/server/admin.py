"""Admin side of the API, used by the ``central`` CLI: publish, devices, queue, consolidate from the queue."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from edge_agent.client.http import CentralClient

DEFAULT_SERVER = "http://127.0.0.1:8080"


def resolve_admin_token(admin_token: str | None, data_dir: str | os.PathLike | None) -> str:
    """``--admin-token``, else ``$CENTRAL_ADMIN_TOKEN``, else ``<data-dir>/admin-token``."""
    token = admin_token or os.environ.get("CENTRAL_ADMIN_TOKEN")
    if token:
        return token.strip()
    if data_dir is not None:
        path = Path(data_dir) / "admin-token"
        if path.is_file():
            return path.read_text().strip()
        raise ValueError(f"no admin token: {path} does not exist (has `central serve --data-dir {data_dir}` run?)")
    raise ValueError("no admin token: pass --admin-token, set CENTRAL_ADMIN_TOKEN, or pass --data-dir")


def admin_client(server: str | None, admin_token: str | None, data_dir: str | os.PathLike | None = None) -> CentralClient:
    return CentralClient(server or os.environ.get("CENTRAL_SERVER") or DEFAULT_SERVER,
                         resolve_admin_token(admin_token, data_dir), timeout=300)


def publish_file(client: CentralClient, path: str | os.PathLike, consolidates: list[int] | None = None,
                 expected_current: int | None = None) -> dict:
    """Publish a bundle file as the next central version; returns the version record."""
    params: dict = {}
    if consolidates:
        params["consolidates"] = ",".join(str(i) for i in consolidates)
    if expected_current is not None:
        params["expected_current"] = expected_current
    data = Path(path).read_bytes()
    return client.request("POST", "/v1/admin/versions", content=data, params=params,
                          headers={"Content-Type": "application/octet-stream"}).json()


def consolidate_from_queue(
    server: str | None = None,
    admin_token: str | None = None,
    data_dir: str | os.PathLike | None = None,
    ood: str | None = None,
    method: str = "dac",
    cfg=None,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Consolidate the queued uploads in arrival order into the current version and publish the result.

    Runs on the admin's machine (consolidation is heavy; the server stays
    light): downloads the current version and the queued bundles, calls
    :func:`central.consolidate.consolidate_files`, then publishes with the
    consumed upload ids and ``expected_current`` so the queue entries are
    marked consolidated in the same transaction, exactly once.
    Returns ``{"version", "consolidated": [upload ids], ...}``; ``version`` is
    None when the queue is empty.
    """
    from central.consolidate import consolidate_files
    from central.methods.base import ConsolidationConfig

    with admin_client(server, admin_token, data_dir) as c:
        queue = c.get_json("/v1/admin/queue")
        if limit is not None:
            queue = queue[:limit]
        if not queue:
            return {"version": None, "consolidated": [], "message": "the queue is empty"}
        cur = c.get_json("/v1/versions/current")
        with tempfile.TemporaryDirectory(prefix="consolidate-") as tmp:
            base = c.download(cur["bundle_id"], Path(tmp) / "base.safetensors", cur["bundle_id"], size=cur["size"])
            incoming = []
            for i, u in enumerate(queue):
                # Names are ours (index), never the client's: nothing from a device becomes a path.
                dest = Path(tmp) / f"upload-{i:04d}.safetensors"
                resp = c.request("GET", f"/v1/admin/uploads/{int(u['id'])}/blob")
                if hashlib.sha256(resp.content).hexdigest() != u["bundle_id"]:
                    raise ValueError(f"upload {u['id']} came back with different bytes than its id")
                dest.write_bytes(resp.content)
                incoming.append(dest)
            cfg = cfg or ConsolidationConfig()
            out = Path(tmp) / "consolidated.safetensors"
            info = consolidate_files(base, incoming, out, ood=ood, method=method, cfg=cfg, progress=progress)
            v = publish_file(c, out, consolidates=[int(u["id"]) for u in queue], expected_current=cur["version"])
    return {"version": v["version"], "bundle_id": v["bundle_id"], "consolidated": [u["id"] for u in queue],
            "base_version": cur["version"], "method": method, "trained_classes": info.get("trained_classes")}
