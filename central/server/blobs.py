"""Where the registry's bytes live: a content-addressed store, put/get/exists/delete by sha256.

:class:`BlobStore` is the interface; :class:`FolderBlobStore` is the backend
``central serve`` uses (``<data-dir>/blobs/ab/abcdef...``). Several server
processes may share one folder: a blob is written to a temp file, fsynced and
renamed to its name, so two writers of the same blob both end with the same
complete file and a reader never sees a partial one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from central.server.errors import RegistryError
from edge_agent.atomic import write_atomic

SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobIdError(RegistryError):
    """A blob id that is not 64 lowercase hex digits (HTTP 400)."""


def check_id(sha: object) -> str:
    """``sha`` if it is a well-formed blob id (so it can never name a path outside the store)."""
    if not isinstance(sha, str) or not SHA256.match(sha):
        raise BlobIdError("blob ids are 64 lowercase hex digits", status=400)
    return sha


class BlobStore(Protocol):
    """A content-addressed byte store; ids are the sha256 of the bytes, in lowercase hex."""

    def put(self, data: bytes) -> str:
        """Store ``data`` durably (visible complete or not at all); returns its sha256."""

    def get(self, sha: str) -> bytes:
        """The bytes of blob ``sha``; ``FileNotFoundError`` when absent."""

    def exists(self, sha: str) -> bool: ...

    def delete(self, sha: str) -> None:
        """Remove blob ``sha``; no error when absent."""

    def all_ids(self) -> Iterator[str]:
        """Every stored blob id (for recovery: blobs no row points to)."""

    def clear_partial(self) -> int:
        """Remove what interrupted writes left behind; returns how many were removed."""


class FolderBlobStore:
    """Blobs as files ``<root>/blobs/ab/abcdef...``; temp files in ``<root>/tmp`` (same filesystem: atomic rename)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        """The file of blob ``sha`` (this backend serves it directly, with HTTP Range)."""
        return self.blobs / check_id(sha)[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if dest.is_file():
            return sha
        write_atomic(dest, data, tmp_dir=self.tmp)
        _fsync_dir(dest.parent)
        return sha

    def put_file(self, src: str | os.PathLike) -> str:
        return self.put(Path(src).read_bytes())

    def get(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()

    def delete(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)

    def all_ids(self) -> Iterator[str]:
        for sub in self.blobs.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    if SHA256.match(f.name):
                        yield f.name

    def clear_partial(self) -> int:
        n = 0
        for f in self.tmp.iterdir():
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
            n += 1
        return n


def _fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk, or a power cut could forget the blob
    # while the committed row still points to it.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
