"""The outbox: uploads kept on disk until the central acknowledges them.

An entry is ``<seq>-<bundle id>.safetensors`` plus a ``.json`` sidecar (base
version, and after a failed try: ``attempts``, ``last_error``, ``next_try_at``).
It is deleted only after the central answered 201 (stored), 200 or 409 (already
stored): the server is idempotent by bundle id, so a crash between the answer
and the deletion only causes a harmless duplicate POST. Together that delivers
each bundle exactly once.

What the central says decides what happens to an entry:

- 5xx, 429, a refused connection or a timeout: temporary. The entry stays, its
  next try waits ``BACKOFF_S * 2**(attempts-1)`` seconds (at most
  ``MAX_BACKOFF_S``), and delivery stops there (arrival order is consolidation order).
- 400, 413, 415, 422: the file itself is refused. It is moved to
  ``outbox/rejected/`` with the reason, so it does not block the rest.
- any other answer (401/403: token revoked or wrong; 404: wrong URL): the entry
  stays and the error propagates; a new enrolment or a fixed URL still delivers it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.client.http import CentralClient, CentralError, CentralUnreachable
from edge_agent.client.state import write_bytes_atomic, write_json_atomic

REJECT_STATUS = (400, 413, 415, 422)  # the central names a problem of the file: retrying cannot help
DUPLICATE_STATUS = 409  # the central already has this bundle: delivered
BACKOFF_S = 30.0
MAX_BACKOFF_S = 3600.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@dataclass
class OutboxEntry:
    path: Path
    bundle_id: str
    base_version: int | None
    attempts: int = 0
    last_error: str = ""
    next_try_at: float = 0.0  # unix seconds; 0: at once

    @property
    def meta(self) -> Path:
        return self.path.with_suffix(".json")

    def waiting(self, now: float | None = None) -> bool:
        """True while the backoff after a failed try has not elapsed."""
        return self.next_try_at > (time.time() if now is None else now)

    def to_dict(self) -> dict:
        return {"bundle_id": self.bundle_id, "base_version": self.base_version, "attempts": self.attempts,
                "last_error": self.last_error, "next_try_at": _iso(self.next_try_at) if self.next_try_at else None,
                "file": str(self.path)}


@dataclass
class Delivery:
    bundle_id: str
    status: str  # "stored" | "duplicate" | "rejected" | "waiting"
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
            raw: dict = {}
            if meta.exists():
                try:
                    loaded = json.loads(meta.read_text())
                    raw = loaded if isinstance(loaded, dict) else {}
                except ValueError:
                    raw = {}  # a damaged sidecar only loses the retry record, never the bundle
            e = OutboxEntry(p, p.stem.split("-", 1)[-1], raw.get("base_version"))
            try:
                e.attempts = int(raw.get("attempts", 0))
                e.next_try_at = float(raw.get("next_try_epoch", 0.0))
            except (TypeError, ValueError):
                e.attempts, e.next_try_at = 0, 0.0
            e.last_error = str(raw.get("last_error", ""))
            out.append(e)
        return out

    def _done(self, e: OutboxEntry) -> None:
        e.path.unlink(missing_ok=True)
        e.meta.unlink(missing_ok=True)

    def _reject(self, e: OutboxEntry, reason: str) -> None:
        self.rejected.mkdir(parents=True, exist_ok=True)
        shutil.move(e.path, self.rejected / e.path.name)
        (self.rejected / (e.path.stem + ".reason.txt")).write_text(reason + "\n")
        e.meta.unlink(missing_ok=True)

    def _failed_try(self, e: OutboxEntry, error: str, temporary: bool, now: float) -> None:
        """Record a try that did not deliver; a temporary failure also sets the next try time."""
        e.attempts += 1
        e.last_error = (error.splitlines() or ["no answer"])[0][:300]
        if temporary:
            e.next_try_at = now + min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (e.attempts - 1))
        write_json_atomic(e.meta, {"bundle_id": e.bundle_id, "base_version": e.base_version,
                                   "attempts": e.attempts, "last_error": e.last_error,
                                   "next_try_at": _iso(e.next_try_at) if e.next_try_at else None,
                                   "next_try_epoch": e.next_try_at})

    def deliver(self, client: CentralClient, force: bool = False, now: float | None = None) -> list[Delivery]:
        """Upload every pending entry in order.

        Stops at the first entry whose backoff has not elapsed (a ``waiting``
        result; ``force`` tries it anyway) and at the first temporary failure
        (:class:`CentralUnreachable` propagates after the try is recorded).
        401/403 and other answers that are not about the file propagate too and
        keep the entry.
        """
        now = time.time() if now is None else now
        results = []
        for e in self.pending():
            if not force and e.waiting(now):
                results.append(Delivery(e.bundle_id, "waiting", e.last_error))
                break
            data = e.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != e.bundle_id:
                self._reject(e, "the outbox copy is corrupt (sha256 differs from its name)")
                results.append(Delivery(e.bundle_id, "rejected", "corrupt outbox copy"))
                continue
            try:
                row, duplicate = client.upload_bundle(data, e.base_version)
            except CentralUnreachable as err:
                self._failed_try(e, str(err), temporary=True, now=now)
                raise
            except CentralError as err:
                if err.status == DUPLICATE_STATUS:
                    self._done(e)
                    results.append(Delivery(e.bundle_id, "duplicate"))
                    continue
                if err.status in REJECT_STATUS:
                    self._reject(e, str(err))
                    results.append(Delivery(e.bundle_id, "rejected", str(err)))
                    continue
                self._failed_try(e, f"HTTP {err.status}: {err}", temporary=False, now=now)
                raise
            self._done(e)
            results.append(Delivery(e.bundle_id, "duplicate" if duplicate else "stored", upload_id=row.get("id")))
        return results
