"""The model registry: metadata in SQLite (WAL), blobs in a content-addressed folder.

Durability rules, so that a crash (even SIGKILL) never shows a half-written
thing: a blob is written to a temp file, fsynced and renamed to its sha256
name before its row is committed; a row is the only thing that makes a blob
visible. On start, :meth:`Registry.recover` removes temp files and blobs no
row points to (left by a crash between the rename and the commit).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from central.server.auth import check_device_name, new_token, same_token, token_hash
from edge_agent.atomic import write_atomic

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RegistryError(ValueError):
    """A request the registry refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Base(DeclarativeBase):
    pass


class Version(Base):
    """A published central model version; ``version`` only ever grows."""

    __tablename__ = "versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bundle_id: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(Integer)
    statement: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(32), default="publish")


class Upload(Base):
    """A device model waiting for (or done with) consolidation; ``id`` is the arrival order."""

    __tablename__ = "uploads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(64), ForeignKey("devices.name"), index=True)
    bundle_id: Mapped[str] = mapped_column(String(64), unique=True)
    base_version: Mapped[int] = mapped_column(Integer, ForeignKey("versions.version"))
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    received_at: Mapped[str] = mapped_column(String(40))
    consolidated_into: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Kit(Base):
    """An artifact kit (tar of the exported folder) for one version and one format."""

    __tablename__ = "kits"
    __table_args__ = (UniqueConstraint("version", "format"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer, ForeignKey("versions.version"))
    format: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="building")
    blob_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    statement: Mapped[str | None] = mapped_column(Text, nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[str] = mapped_column(String(40))


class Device(Base):
    """A device: a one-time enrolment token hash, then its own token hash."""

    __tablename__ = "devices"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    enroll_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[str] = mapped_column(String(40))
    enrolled_at: Mapped[str | None] = mapped_column(String(40), nullable=True)


class BlobStore:
    """Content-addressed files: ``blobs/ab/abcdef...`` named by their sha256."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"  # same filesystem as blobs/, so rename is atomic
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        """The path of blob ``sha``; refuses anything but 64 lowercase hex digits (no traversal)."""
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise RegistryError("blob ids are 64 lowercase hex digits", status=400)
        return self.blobs / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> str:
        """Store ``data`` (temp file, fsync, rename, fsync dir); returns its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if dest.is_file():
            return sha
        write_atomic(dest, data, tmp_dir=self.tmp)
        _fsync_dir(dest.parent)
        return sha

    def put_file(self, src: str | os.PathLike) -> str:
        return self.put(Path(src).read_bytes())

    def delete(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)

    def all_ids(self) -> Iterator[str]:
        for sub in self.blobs.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    if _SHA256.match(f.name):
                        yield f.name


def _fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk, or a power cut could forget the blob
    # while the committed row still points to it.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version_dict(v: Version) -> dict:
    return {
        "version": v.version,
        "bundle_id": v.bundle_id,
        "size": v.size,
        "created_at": v.created_at,
        "source": v.source,
        "statement": json.loads(v.statement),
        "signature": v.signature,
    }


def _upload_dict(u: Upload) -> dict:
    return {
        "id": u.id,
        "device": u.device,
        "bundle_id": u.bundle_id,
        "base_version": u.base_version,
        "size": u.size,
        "status": u.status,
        "received_at": u.received_at,
        "consolidated_into": u.consolidated_into,
    }


def _kit_dict(k: Kit) -> dict:
    return {
        "version": k.version,
        "format": k.format,
        "status": k.status,
        "blob_id": k.blob_id,
        "size": k.size,
        "statement": json.loads(k.statement) if k.statement else None,
        "signature": k.signature,
        "error": k.error,
        "created_at": k.created_at,
    }


class Registry:
    """All registry operations; writes are serialized by one lock (SQLite has one writer anyway)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = BlobStore(self.data_dir)
        self.engine = create_engine(
            f"sqlite:///{self.data_dir / 'registry.sqlite'}",
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self._write = threading.Lock()

    # -- recovery ---------------------------------------------------------
    def recover(self) -> dict:
        """Make the store match the database after a crash; returns what was cleaned."""
        removed_tmp = 0
        for f in self.store.tmp.iterdir():
            f.unlink(missing_ok=True)
            removed_tmp += 1
        with self.session() as s:
            referenced = set(s.scalars(select(Version.bundle_id)))
            referenced |= set(s.scalars(select(Upload.bundle_id)))
            referenced |= {b for b in s.scalars(select(Kit.blob_id)) if b}
            # A kit being built when the server died is built again.
            stale = s.scalars(select(Kit).where(Kit.status == "building")).all()
            for k in stale:
                k.status = "pending"
            s.commit()
        orphans = [b for b in self.store.all_ids() if b not in referenced]
        for b in orphans:
            self.store.delete(b)
        missing = sorted(b for b in referenced if not self.store.exists(b))
        return {"removed_tmp": removed_tmp, "removed_orphan_blobs": len(orphans), "missing_blobs": missing}

    # -- devices ----------------------------------------------------------
    def add_device(self, name: str) -> str:
        """Register ``name``; returns its one-time enrolment token (only its hash is kept)."""
        try:
            check_device_name(name)
        except ValueError as e:
            raise RegistryError(str(e)) from None
        token = new_token("enr")
        with self._write, self.session() as s:
            if s.get(Device, name) is not None:
                raise RegistryError(f"device {name!r} already exists (revoke it or choose another name)", 409)
            s.add(Device(name=name, enroll_hash=token_hash(token), created_at=utcnow()))
            s.commit()
        return token

    def enroll(self, enrol_token: str) -> tuple[str, str]:
        """Trade a one-time enrolment token for ``(device name, device token)``."""
        h = token_hash(enrol_token)
        device_token = new_token("dev")
        with self._write, self.session() as s:
            d = s.scalars(select(Device).where(Device.enroll_hash == h)).first()
            if d is None or not same_token(enrol_token, d.enroll_hash or "") or d.revoked:
                raise RegistryError("invalid, used or revoked enrolment token", 401)
            d.enroll_hash = None  # one-time: it cannot be used again
            d.token_hash = token_hash(device_token)
            d.enrolled_at = utcnow()
            s.commit()
            return d.name, device_token

    def device_for_token(self, token: str) -> str | None:
        """The device a token belongs to, or None if unknown or revoked."""
        h = token_hash(token)
        with self.session() as s:
            d = s.scalars(select(Device).where(Device.token_hash == h)).first()
            if d is None or d.revoked or not same_token(token, d.token_hash or ""):
                return None
            return d.name

    def list_devices(self) -> list[dict]:
        with self.session() as s:
            return [
                {"device": d.name, "enrolled": d.token_hash is not None, "revoked": d.revoked,
                 "created_at": d.created_at, "enrolled_at": d.enrolled_at}
                for d in s.scalars(select(Device).order_by(Device.name))
            ]

    def revoke_device(self, name: str) -> None:
        with self._write, self.session() as s:
            d = s.get(Device, name)
            if d is None:
                raise RegistryError(f"no device named {name!r}", 404)
            d.revoked = True
            d.enroll_hash = None
            s.commit()

    # -- versions ---------------------------------------------------------
    def current_version(self) -> dict | None:
        with self.session() as s:
            v = s.scalars(select(Version).order_by(Version.version.desc()).limit(1)).first()
            return _version_dict(v) if v else None

    def get_version(self, version: int) -> dict | None:
        with self.session() as s:
            v = s.get(Version, version)
            return _version_dict(v) if v else None

    def version_for_bundle(self, bundle_id: str) -> dict | None:
        with self.session() as s:
            v = s.scalars(select(Version).where(Version.bundle_id == bundle_id).order_by(Version.version)).first()
            return _version_dict(v) if v else None

    def publish(
        self,
        data: bytes,
        sign,
        kit_formats: list[str],
        consolidates: list[int] | None = None,
        expected_current: int | None = None,
        source: str = "publish",
    ) -> dict:
        """Store a validated bundle as the next version, sign it, queue its kits.

        ``sign(version, sha256) -> (statement, signature)``. With ``consolidates``
        the listed uploads are marked consolidated in the same transaction, so a
        queue entry is consumed exactly once. ``expected_current`` guards against
        two admins consolidating at the same time (409 if someone published first).
        """
        sha = self.store.put(data)
        with self._write, self.session() as s:
            cur = s.scalar(select(func.max(Version.version))) or 0
            if expected_current is not None and cur != expected_current:
                raise RegistryError(
                    f"the current version is now v{cur}, not v{expected_current}: consolidate again", 409
                )
            uploads = []
            for uid in consolidates or []:
                u = s.get(Upload, uid)
                if u is None or u.status != "queued":
                    raise RegistryError(f"upload {uid} is not in the queue", 409)
                uploads.append(u)
            n = cur + 1
            statement, signature = sign(n, sha)
            v = Version(
                version=n, bundle_id=sha, size=len(data), statement=json.dumps(statement, sort_keys=True),
                signature=signature, created_at=statement["created_at"], source=source,
            )
            s.add(v)
            s.flush()  # the version row must exist before kit rows reference it (foreign key)
            for u in uploads:
                u.status = "consolidated"
                u.consolidated_into = n
            for fmt in kit_formats:
                s.add(Kit(version=n, format=fmt, status="pending", created_at=utcnow()))
            s.commit()
            return _version_dict(v)

    # -- uploads ----------------------------------------------------------
    def add_upload(self, device: str, data: bytes, bundle_id: str, base_version: int) -> tuple[dict, bool]:
        """Queue a validated device bundle; returns ``(row, duplicate)``; stored once per bundle id."""
        with self.session() as s:
            old = s.scalars(select(Upload).where(Upload.bundle_id == bundle_id)).first()
            if old is not None:
                return _upload_dict(old), True
        self.store.put(data)
        with self._write, self.session() as s:
            old = s.scalars(select(Upload).where(Upload.bundle_id == bundle_id)).first()
            if old is not None:  # the same bundle raced in from another request
                return _upload_dict(old), True
            u = Upload(device=device, bundle_id=bundle_id, base_version=base_version, size=len(data),
                       status="queued", received_at=utcnow())
            s.add(u)
            s.commit()
            return _upload_dict(u), False

    def queue(self, status: str | None = "queued") -> list[dict]:
        with self.session() as s:
            q = select(Upload).order_by(Upload.id)
            if status:
                q = q.where(Upload.status == status)
            return [_upload_dict(u) for u in s.scalars(q)]

    def queue_length(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Upload).where(Upload.status == "queued")) or 0

    def get_upload(self, uid: int) -> dict | None:
        with self.session() as s:
            u = s.get(Upload, uid)
            return _upload_dict(u) if u else None

    # -- kits -------------------------------------------------------------
    def kits_to_build(self) -> list[tuple[int, str]]:
        with self.session() as s:
            rows = s.scalars(select(Kit).where(Kit.status == "pending").order_by(Kit.id)).all()
            return [(k.version, k.format) for k in rows]

    def set_kit(self, version: int, fmt: str, **fields) -> None:
        with self._write, self.session() as s:
            k = s.scalars(select(Kit).where(Kit.version == version, Kit.format == fmt)).first()
            if k is None:
                k = Kit(version=version, format=fmt, created_at=utcnow())
                s.add(k)
            for key, value in fields.items():
                if key == "statement" and value is not None:
                    value = json.dumps(value, sort_keys=True)
                setattr(k, key, value)
            s.commit()

    def get_kit(self, version: int, fmt: str) -> dict | None:
        with self.session() as s:
            k = s.scalars(select(Kit).where(Kit.version == version, Kit.format == fmt)).first()
            return _kit_dict(k) if k else None

    def list_kits(self, version: int | None = None) -> list[dict]:
        with self.session() as s:
            q = select(Kit).order_by(Kit.version, Kit.format)
            if version is not None:
                q = q.where(Kit.version == version)
            return [_kit_dict(k) for k in s.scalars(q)]

    # -- reads for devices -------------------------------------------------
    def blob_is_release(self, sha: str) -> bool:
        """Devices may read only published versions and ready kits, never other devices' uploads."""
        with self.session() as s:
            if s.scalars(select(Version.version).where(Version.bundle_id == sha)).first() is not None:
                return True
            return s.scalars(select(Kit.id).where(Kit.blob_id == sha, Kit.status == "ready")).first() is not None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged upload survives a power cut, not only a process crash.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
