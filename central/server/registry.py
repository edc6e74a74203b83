"""The model registry: metadata in a database (SQLite or PostgreSQL), bytes in a content-addressed blob store.

Durability rules, so that a crash (even SIGKILL) never shows a half-written
thing: a blob is written to a temp file, fsynced and renamed to its sha256
name before its row is committed; a row is the only thing that makes a blob
visible. On start, :meth:`Registry.recover` removes temp files and blobs no
row points to (left by a crash between the rename and the commit).

Concurrency rules, so that several server processes can share one database
and one blob folder: every decision that must happen once is made by the
database inside one transaction, never by a lock in one process. Version
numbers are assigned under a serial write (:meth:`Database.write`); queue
entries are consumed by one ``UPDATE ... WHERE status = 'queued' RETURNING``
(two publishers cannot both consume one); a pending kit is claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL) or under ``BEGIN IMMEDIATE``
(SQLite); unique constraints settle duplicate devices and uploads.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from central.server.auth import check_device_name, new_token, same_token, token_hash
from central.server.blobs import BlobIdError, FolderBlobStore
from central.server.database import Database, connect, open_database
from central.server.errors import RegistryError

__all__ = ["BlobIdError", "Registry", "RegistryError"]


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    """All registry operations, safe to call from many threads and many processes at once."""

    def __init__(self, data_dir: str | os.PathLike, database_url: str | None = None, store=None):
        """Open (creating if needed) the registry in ``data_dir``.

        ``database_url``: ``postgresql://...`` or ``sqlite:///path``; None keeps
        the rows in ``<data-dir>/registry.sqlite``. ``store``: a
        :class:`central.server.blobs.BlobStore`; None is the folder in ``data_dir``.
        """
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store if store is not None else FolderBlobStore(self.data_dir)
        self.db: Database = open_database(database_url, self.data_dir)
        connect(self.db, Base.metadata)

    def close(self) -> None:
        self.db.dispose()

    # -- recovery ---------------------------------------------------------
    def recover(self) -> dict:
        """Make the store match the database after a crash; returns what was cleaned.

        Run it while no other process writes to this registry (``central serve``
        runs it once, before its workers start): a temp file or a blob whose row
        is not committed yet looks exactly like crash debris.
        """
        removed_tmp = self.store.clear_partial()
        with self.db.write() as s:
            referenced = set(s.scalars(select(Version.bundle_id)))
            referenced |= set(s.scalars(select(Upload.bundle_id)))
            referenced |= {b for b in s.scalars(select(Kit.blob_id)) if b}
            # A kit being built when the server died is built again.
            s.execute(update(Kit).where(Kit.status == "building").values(status="pending"))
        orphans = [b for b in self.store.all_ids() if b not in referenced]
        for b in orphans:
            self.store.delete(b)
        missing = sorted(b for b in referenced if not self.store.exists(b))
        return {"removed_tmp": removed_tmp, "removed_orphan_blobs": len(orphans), "missing_blobs": missing}

    def referenced_blobs(self) -> set[str]:
        """Every blob id a row points to (what the store must hold)."""
        with self.db.read() as s:
            refs = set(s.scalars(select(Version.bundle_id))) | set(s.scalars(select(Upload.bundle_id)))
            return refs | {b for b in s.scalars(select(Kit.blob_id)) if b}

    # -- devices ----------------------------------------------------------
    def add_device(self, name: str) -> str:
        """Register ``name``; returns its one-time enrolment token (only its hash is kept)."""
        try:
            check_device_name(name)
        except ValueError as e:
            raise RegistryError(str(e)) from None
        token = new_token("enr")
        exists = RegistryError(f"device {name!r} already exists (revoke it or choose another name)", 409)
        try:
            with self.db.write() as s:
                if s.get(Device, name) is not None:
                    raise exists
                s.add(Device(name=name, enroll_hash=token_hash(token), created_at=utcnow()))
        except IntegrityError:  # the same name added at the same moment by another process
            raise exists from None
        return token

    def enroll(self, enrol_token: str) -> tuple[str, str]:
        """Trade a one-time enrolment token for ``(device name, device token)``."""
        h = token_hash(enrol_token)
        device_token = new_token("dev")
        with self.db.write() as s:
            # One UPDATE both checks and spends the token: two enrolments racing on it cannot both win.
            name = s.scalar(
                update(Device)
                .where(Device.enroll_hash == h, Device.revoked == false())
                .values(enroll_hash=None, token_hash=token_hash(device_token), enrolled_at=utcnow())
                .returning(Device.name)
            )
            if name is None:
                raise RegistryError("invalid, used or revoked enrolment token", 401)
            return name, device_token

    def device_for_token(self, token: str) -> str | None:
        """The device a token belongs to, or None if unknown or revoked."""
        h = token_hash(token)
        with self.db.read() as s:
            d = s.scalars(select(Device).where(Device.token_hash == h)).first()
            if d is None or d.revoked or not same_token(token, d.token_hash or ""):
                return None
            return d.name

    def list_devices(self) -> list[dict]:
        with self.db.read() as s:
            return [
                {"device": d.name, "enrolled": d.token_hash is not None, "revoked": d.revoked,
                 "created_at": d.created_at, "enrolled_at": d.enrolled_at}
                for d in s.scalars(select(Device).order_by(Device.name))
            ]

    def revoke_device(self, name: str) -> None:
        with self.db.write() as s:
            d = s.get(Device, name)
            if d is None:
                raise RegistryError(f"no device named {name!r}", 404)
            d.revoked = True
            d.enroll_hash = None

    # -- versions ---------------------------------------------------------
    def current_version(self) -> dict | None:
        with self.db.read() as s:
            v = s.scalars(select(Version).order_by(Version.version.desc()).limit(1)).first()
            return _version_dict(v) if v else None

    def get_version(self, version: int) -> dict | None:
        with self.db.read() as s:
            v = s.get(Version, version)
            return _version_dict(v) if v else None

    def version_for_bundle(self, bundle_id: str) -> dict | None:
        with self.db.read() as s:
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
        ids = sorted(set(consolidates or []))
        with self.db.write(serial=True) as s:
            cur = s.scalar(select(func.max(Version.version))) or 0
            if expected_current is not None and cur != expected_current:
                raise RegistryError(
                    f"the current version is now v{cur}, not v{expected_current}: consolidate again", 409
                )
            n = cur + 1
            statement, signature = sign(n, sha)
            v = Version(
                version=n, bundle_id=sha, size=len(data), statement=json.dumps(statement, sort_keys=True),
                signature=signature, created_at=statement["created_at"], source=source,
            )
            s.add(v)
            s.flush()  # the version row must exist before kit rows reference it (foreign key)
            if ids:
                taken = set(s.scalars(
                    update(Upload)
                    .where(Upload.id.in_(ids), Upload.status == "queued")
                    .values(status="consolidated", consolidated_into=n)
                    .returning(Upload.id)
                ))
                if taken != set(ids):
                    gone = sorted(set(ids) - taken)
                    raise RegistryError(f"upload {gone[0]} is not in the queue", 409)  # rolls back the version too
            for fmt in kit_formats:
                s.add(Kit(version=n, format=fmt, status="pending", created_at=utcnow()))
            return _version_dict(v)

    # -- uploads ----------------------------------------------------------
    def add_upload(self, device: str, data: bytes, bundle_id: str, base_version: int) -> tuple[dict, bool]:
        """Queue a validated device bundle; returns ``(row, duplicate)``; stored once per bundle id."""
        old = self._upload_by_bundle(bundle_id)
        if old is not None:
            return old, True
        self.store.put(data)
        try:
            with self.db.write() as s:
                u = Upload(device=device, bundle_id=bundle_id, base_version=base_version, size=len(data),
                           status="queued", received_at=utcnow())
                s.add(u)
                s.flush()
                row = _upload_dict(u)
        except IntegrityError:
            old = self._upload_by_bundle(bundle_id)  # the same bundle raced in from another request
            if old is None:
                raise
            return old, True
        return row, False

    def _upload_by_bundle(self, bundle_id: str) -> dict | None:
        with self.db.read() as s:
            u = s.scalars(select(Upload).where(Upload.bundle_id == bundle_id)).first()
            return _upload_dict(u) if u else None

    def queue(self, status: str | None = "queued") -> list[dict]:
        with self.db.read() as s:
            q = select(Upload).order_by(Upload.id)
            if status:
                q = q.where(Upload.status == status)
            return [_upload_dict(u) for u in s.scalars(q)]

    def queue_length(self) -> int:
        with self.db.read() as s:
            return s.scalar(select(func.count()).select_from(Upload).where(Upload.status == "queued")) or 0

    def get_upload(self, uid: int) -> dict | None:
        with self.db.read() as s:
            u = s.get(Upload, uid)
            return _upload_dict(u) if u else None

    # -- kits -------------------------------------------------------------
    def kits_to_build(self) -> list[tuple[int, str]]:
        with self.db.read() as s:
            rows = s.scalars(select(Kit).where(Kit.status == "pending").order_by(Kit.id)).all()
            return [(k.version, k.format) for k in rows]

    def claim_kit(self) -> tuple[int, str] | None:
        """Take the oldest pending kit and mark it building; each is handed to exactly one caller."""
        with self.db.write() as s:
            k = s.scalars(
                select(Kit).where(Kit.status == "pending").order_by(Kit.id).limit(1).with_for_update(skip_locked=True)
            ).first()
            if k is None:
                return None
            k.status = "building"
            k.error = None
            return k.version, k.format

    def set_kit(self, version: int, fmt: str, **fields) -> None:
        if fields.get("statement") is not None:
            fields["statement"] = json.dumps(fields["statement"], sort_keys=True)
        for attempt in (0, 1):
            try:
                with self.db.write() as s:
                    k = s.scalars(select(Kit).where(Kit.version == version, Kit.format == fmt)).first()
                    if k is None:
                        k = Kit(version=version, format=fmt, created_at=utcnow())
                        s.add(k)
                    for key, value in fields.items():
                        setattr(k, key, value)
                return
            except IntegrityError:
                if attempt:  # the row another process inserted meanwhile is updated on the second pass
                    raise

    def get_kit(self, version: int, fmt: str) -> dict | None:
        with self.db.read() as s:
            k = s.scalars(select(Kit).where(Kit.version == version, Kit.format == fmt)).first()
            return _kit_dict(k) if k else None

    def list_kits(self, version: int | None = None) -> list[dict]:
        with self.db.read() as s:
            q = select(Kit).order_by(Kit.version, Kit.format)
            if version is not None:
                q = q.where(Kit.version == version)
            return [_kit_dict(k) for k in s.scalars(q)]

    # -- reads for devices -------------------------------------------------
    def blob_is_release(self, sha: str) -> bool:
        """Devices may read only published versions and ready kits, never other devices' uploads."""
        with self.db.read() as s:
            if s.scalars(select(Version.version).where(Version.bundle_id == sha)).first() is not None:
                return True
            return s.scalars(select(Kit.id).where(Kit.blob_id == sha, Kit.status == "ready")).first() is not None
