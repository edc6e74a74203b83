"""The outbox: uploads kept on disk until the central acknowledges them.

An entry is ``<seq>-<bundle id>.safetensors`` plus a ``.json`` sidecar (base
version). It is deleted only after the central answered 201 (stored) or 200
(already stored): the server is idempotent by bundle id, so a crash between
the answer and the deletion only causes a harmless duplicate POST. Together
that delivers each bundle exactly once. A bundle the central rejects (4xx) is
moved to ``outbox/rejected/`` with the reason, so it does not block the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.client.http import CentralClient, CentralError
from edge_agent.client.state import write_bytes_atomic, write_json_atomic


@dataclass
class OutboxEntry:
    path: Path
    bundle_id: str
    base_version: int | None

    @property
    def meta(self) -> Path:
        return self.path.with_suffix(".json")


@dataclass
class Delivery:
    bundle_id: str
    status: str  # "stored" | "duplicate" | "rejected"
    detail: str = ""
    upload_id: int | None = None


class Outbox:
    """The on-disk queue of bundles to upload, oldest first."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.rejected = self.folder / "rejected"

    def add(self, src: str | os.PathLike, base_version: int | None = None) -> OutboxEntry:
        """Copy a bundle into the outbox (atomically); the same bundle twice is kept once."""
        data = Path(src).read_bytes()
        bid = hashlib.sha256(data).hexdigest()
        for e in self.pending():
            if e.bundle_id == bid:
                return e
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.time_ns():020d}-{bid}.safetensors"
        # Sidecar first: an entry counts only once its bundle file exists.
        write_json_atomic(path.with_suffix(".json"), {"bundle_id": bid, "base_version": base_version})
        write_bytes_atomic(path, data)
        return OutboxEntry(path, bid, base_version)

    def pending(self) -> list[OutboxEntry]:
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.glob("*.safetensors")):
            meta = p.with_suffix(".json")
            base = None
            if meta.exists():
                try:
                    base = json.loads(meta.read_text()).get("base_version")
                except ValueError:
                    base = None
            out.append(OutboxEntry(p, p.stem.split("-", 1)[-1], base))
        return out

    def _done(self, e: OutboxEntry) -> None:
        e.path.unlink(missing_ok=True)
        e.meta.unlink(missing_ok=True)

    def _reject(self, e: OutboxEntry, reason: str) -> None:
        self.rejected.mkdir(parents=True, exist_ok=True)
        shutil.move(e.path, self.rejected / e.path.name)
        (self.rejected / (e.path.stem + ".reason.txt")).write_text(reason + "\n")
        e.meta.unlink(missing_ok=True)

    def deliver(self, client: CentralClient) -> list[Delivery]:
        """Upload every pending entry in order; stops at the first unreachable error (it propagates).

        401/403 (token revoked or wrong) also propagate and keep the entry: a
        new enrolment can still deliver it.
        """
        results = []
        for e in self.pending():
            data = e.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != e.bundle_id:
                self._reject(e, "the outbox copy is corrupt (sha256 differs from its name)")
                results.append(Delivery(e.bundle_id, "rejected", "corrupt outbox copy"))
                continue
            try:
                row, duplicate = client.upload_bundle(data, e.base_version)
            except CentralError as err:
                if err.status in (401, 403):
                    raise
                self._reject(e, str(err))
                results.append(Delivery(e.bundle_id, "rejected", str(err)))
                continue
            self._done(e)
            results.append(Delivery(e.bundle_id, "duplicate" if duplicate else "stored", upload_id=row.get("id")))
        return results
