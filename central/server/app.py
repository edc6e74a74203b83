"""The central's HTTP API (FastAPI). OpenAPI docs at ``/docs``.

Routes, by who may call them:

- anyone: ``GET /healthz``, ``GET /metrics``, ``POST /v1/enroll`` (with a one-time enrolment token);
- devices (``Authorization: Bearer <device token>``; the admin token works too):
  ``GET /v1/versions/current``, ``GET /v1/versions/{n}``, ``GET /v1/kits/{n}/{format}``,
  ``GET /v1/blobs/{sha256}`` (published releases only, HTTP Range supported),
  ``POST /v1/uploads`` (devices only: a device uploads as itself);
- admin (``Authorization: Bearer <admin token>``): ``/v1/admin/...``.

Uploads are validated completely before anything is stored; a rejected upload
leaves no blob and no row, and neither does one whose row could not be written.
A locked database answers 503 with ``Retry-After``, a full disk 507: both are
temporary, and the agent keeps the upload in its outbox.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import sqlite3
import tempfile
import threading
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, field_validator
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from central.server.auth import (
    bearer,
    check_device_name,
    load_or_create_admin_token,
    same_token,
    token_hash,
)
from central.server.kits import DEFAULT_FORMATS, KitWorker, load_builder, split_format
from central.server.registry import Kit, Registry, RegistryError, Upload, Version
from central.server.signing import DEFAULT_TTL_DAYS, ReleaseSigner
from central.server.uploads import validate_upload
from edge_agent.bundle import BundleError, load_bundle_bytes
from edge_agent.client.trust import MODEL_FORMAT

log = logging.getLogger("central.server")
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024  # the largest bundles of the model zoo are a few MB
DEFAULT_MAX_CONCURRENT_UPLOADS = 4  # each holds up to the upload cap in memory while it is validated
RETRY_AFTER_S = 5
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
PG_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_timeout ran out: another transaction holds the lock
CLEANUP_TRIES = 60  # a blob left by a failed write is looked at again every RETRY_AFTER_S, this many times


@dataclass
class ServerConfig:
    """Everything ``central serve`` can set."""

    data_dir: Path
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    kit_formats: tuple[str, ...] = DEFAULT_FORMATS
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS
    statement_ttl_days: float = DEFAULT_TTL_DAYS
    kit_builder: str | None = None  # "module:function"; None = export.kit
    calib_ood: str | None = None  # int8 calibration source for kits; None = the bundled OOD photo / clip
    onnx_int8: str = "u8u8"  # ONNX int8 kits' activation and weight types (u8u8, u8s8, s8s8)
    database_url: str | None = None  # postgresql://... or sqlite:///...; None = <data_dir>/registry.sqlite


@dataclass
class Metrics:
    """Counters for ``/metrics`` (Prometheus text format); one lock, few writes per request."""

    requests: Counter = field(default_factory=Counter)
    uploads: Counter = field(default_factory=Counter)
    rejections: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, counter: Counter, key) -> None:
        with self.lock:
            counter[key] += 1


# SQLite integers are signed 64-bit: a larger id in a URL is a client error (422), never an overflow (500).
DB_INT_MAX = 2**63 - 1
VersionNo = Annotated[int, PathParam(ge=0, le=DB_INT_MAX, description="central version")]
UploadNo = Annotated[int, PathParam(ge=0, le=DB_INT_MAX, description="upload id")]
BLOB_ID = re.compile(r"[0-9a-f]{64}")


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """Every error answer: a one-line ``detail``, or for malformed requests (422) a list of what is wrong."""

    detail: str | list[ValidationItem]


_WHY = {
    400: "malformed request (bad id, Content-Length, format or list)",
    401: "missing, unknown or revoked token",
    404: "no such version, kit, upload, device or blob",
    409: "conflict: already exists, already stored by another device, or not the current version any more",
    413: "upload larger than --max-upload-mb",
    422: "invalid input: a rejected bundle (one-line reason) or malformed parameters (a list)",
    503: "busy: too many uploads at once or the database is locked; see Retry-After",
    507: "the registry's disk is full; see Retry-After",
}


def answers(*codes: int) -> dict:
    """OpenAPI ``responses=`` for the error answers a route gives."""
    return {c: {"model": Problem, "description": _WHY[c]} for c in codes}


BYTES = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
READ = answers(401, 404, 422)
# The bundle routes read the raw body themselves (capped, spooled); this tells the spec what it is.
BUNDLE_BODY = {"requestBody": {"required": True, "description": "a bundle (safetensors bytes)",
                               "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
WRITE = (503, 507)


class EnrollRequest(BaseModel):
    token: str

    @field_validator("token")
    @classmethod
    def _utf8(cls, v: str) -> str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the token is not valid UTF-8 text") from None
        return v


class DeviceRequest(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_device_name(v)


class State:
    """What the routes share: config, registry, signer, admin token hash, kit worker, metrics."""

    def __init__(self, cfg: ServerConfig, recover: bool = True):
        for fmt in cfg.kit_formats:
            split_format(fmt)
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(cfg.data_dir, cfg.database_url)
        # Workers of one `central serve --workers N` skip it: the parent recovered before starting them.
        no_recovery = {"removed_tmp": 0, "removed_orphan_blobs": 0, "missing_blobs": []}
        self.recovery = self.registry.recover() if recover else no_recovery
        if cfg.max_upload_bytes < 1 or cfg.max_concurrent_uploads < 1:
            raise ValueError("the upload size cap and the concurrent upload cap must be at least 1")
        self.signer = ReleaseSigner(cfg.data_dir, cfg.statement_ttl_days)
        self.upload_slots = threading.BoundedSemaphore(cfg.max_concurrent_uploads)
        self.admin_hash = token_hash(load_or_create_admin_token(cfg.data_dir))
        self.kits = KitWorker(self.registry, self.signer, load_builder(cfg.kit_builder, cfg.calib_ood, cfg.onnx_int8))
        self.metrics = Metrics()
        # Striped by bundle id: storing a blob, writing its row and removing it again after a failed
        # write happen under one lock, so a failing request never deletes a blob another one just referenced.
        self.blob_locks = [threading.Lock() for _ in range(64)]

    def signed_version(self, row: dict) -> dict:
        """A version row with a statement signed now (fresh ``expires_at``), so devices never see an expired one."""
        statement, signature = self.signer.sign("model", row["version"], row["bundle_id"], MODEL_FORMAT, row["size"],
                                                created_at=row["created_at"])
        return {**row, "statement": statement, "signature": signature}

    def signed_kit(self, row: dict) -> dict:
        """A kit row, re-signed like :meth:`signed_version` once the kit is ready."""
        if row.get("status") != "ready" or not row.get("blob_id") or row.get("size") is None:
            return row
        created = (row.get("statement") or {}).get("created_at") or row["created_at"]
        statement, signature = self.signer.sign("kit", row["version"], row["blob_id"], row["format"], row["size"],
                                                created_at=created)
        return {**row, "statement": statement, "signature": signature}

    def blob_lock(self, sha: str) -> threading.Lock:
        return self.blob_locks[int(sha[:8], 16) % len(self.blob_locks)]

    def blob_referenced(self, sha: str) -> bool:
        with self.registry.db.read() as s:
            return any(
                s.scalars(select(col).where(col == sha).limit(1)).first() is not None
                for col in (Version.bundle_id, Upload.bundle_id, Kit.blob_id)
            )

    def store_then_write(self, sha: str, write):
        """Run ``write()`` (stores blob ``sha``, then commits the row); remove the blob again if no row got to reference it."""
        with self.blob_lock(sha):
            existed = self.registry.store.exists(sha)
            try:
                return write()
            except BaseException:
                if not existed:
                    self._remove_unreferenced(sha, CLEANUP_TRIES, locked=True)
                raise

    def _remove_unreferenced(self, sha: str, tries: int, locked: bool = False) -> None:
        """Delete blob ``sha`` unless a row references it; while the database cannot say, look again later."""
        try:
            if locked:
                self._remove_if_unreferenced(sha)
            else:
                with self.blob_lock(sha):
                    self._remove_if_unreferenced(sha)
        except Exception:  # noqa: BLE001 - the same lock that failed the write; the next start's recovery is the last resort
            if tries <= 1:
                log.warning("could not remove the unreferenced blob %s after a failed write", sha[:12])
                return
            t = threading.Timer(RETRY_AFTER_S, self._remove_unreferenced, args=(sha, tries - 1))
            t.daemon = True
            t.start()

    def _remove_if_unreferenced(self, sha: str) -> None:
        if self.registry.store.exists(sha) and not self.blob_referenced(sha):
            self.registry.store.delete(sha)


def _storage_error(e: BaseException) -> tuple[int, str] | None:
    """``(status, message)`` for a temporary storage failure (locked database, full disk), else None."""
    if isinstance(e, OperationalError) and getattr(e.orig, "sqlstate", None) == PG_LOCK_NOT_AVAILABLE:
        return 503, "the registry database is busy: try again later"
    if isinstance(e, OperationalError) and not isinstance(e.orig, sqlite3.OperationalError):
        # Another database's driver: per DB-API, an operational error is the server's state (a lost
        # connection, a failover), not the request's fault.
        return 503, "the registry database is unavailable: try again later"
    if isinstance(e, OperationalError):
        e = e.orig
    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        if "locked" in text or "busy" in text:
            return 503, "the registry database is busy: try again later"
        if "disk is full" in text or "readonly" in text:
            return 507, "the registry has no room to store this: try again later"
        return None
    if isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS:
        return 507, f"the registry cannot store this ({errno.errorcode.get(e.errno, e.errno)}): try again later"
    return None


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def create_app(cfg: ServerConfig, recover: bool = True) -> FastAPI:
    """Build the app for one data dir (opens the registry and, with ``recover``, recovers it from any crash)."""
    st = State(cfg, recover)
    if st.recovery["removed_tmp"] or st.recovery["removed_orphan_blobs"]:
        log.warning("recovered from an unclean stop: %s", st.recovery)
    if st.recovery["missing_blobs"]:
        log.error("registry rows point to missing blobs: %s", st.recovery["missing_blobs"][:5])

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        st.kits.start()
        yield
        st.kits.stop()

    app = FastAPI(
        title="edge-dcl central",
        description="Model registry for distributed continual learning: devices pull signed releases and upload fine-tuned bundles.",
        lifespan=lifespan,
    )
    app.state.central = st

    async def storage_unavailable(request: Request, e: Exception):
        answer = _storage_error(e)
        if answer is None:
            log.exception("internal error on %s %s", request.method, request.url.path, exc_info=e)
            return JSONResponse({"detail": "internal error"}, status_code=500)
        status, message = answer
        log.warning("%s %s: %s (%s)", request.method, request.url.path, message, e)
        return JSONResponse({"detail": message}, status_code=status, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def invalid_request(_request: Request, e: RequestValidationError) -> Response:
        # ASCII JSON: a lone surrogate in the input must not turn the 422 into a 500 while encoding it.
        detail = [{"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
                  for err in e.errors()]
        return Response(json.dumps({"detail": detail}, ensure_ascii=True), status_code=422, media_type="application/json")

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(OperationalError, storage_unavailable)
    app.add_exception_handler(sqlite3.OperationalError, storage_unavailable)
    app.add_exception_handler(OSError, storage_unavailable)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        # Route templates, not raw paths, and known methods only: bounded label cardinality whatever clients send.
        path = getattr(route, "path", "unmatched")
        method = request.method if request.method in HTTP_METHODS else "other"
        st.metrics.count(st.metrics.requests, (method, path, response.status_code))
        return response

    # -- auth -------------------------------------------------------------
    def is_admin(token: str | None) -> bool:
        return token is not None and same_token(token, st.admin_hash)

    def require_admin(authorization: str | None = Header(default=None)) -> None:
        if not is_admin(bearer(authorization)):
            raise _error(401, "admin token required")

    def require_device(authorization: str | None = Header(default=None)) -> str:
        token = bearer(authorization)
        if token is None:
            raise _error(401, "device token required (Authorization: Bearer ...)")
        name = st.registry.device_for_token(token)
        if name is None:
            raise _error(401, "unknown or revoked device token")
        return name

    def require_reader(authorization: str | None = Header(default=None)) -> str:
        token = bearer(authorization)
        if is_admin(token):
            return "admin"
        return require_device(authorization)

    # -- public -----------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> dict:
        cur = st.registry.current_version()
        return {"ok": True, "current_version": cur["version"] if cur else None}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        lines = ["# TYPE central_http_requests_total counter"]
        with st.metrics.lock:
            for (method, path, status), n in sorted(st.metrics.requests.items()):
                lines.append(f'central_http_requests_total{{method="{method}",route="{path}",status="{status}"}} {n}')
            lines.append("# TYPE central_uploads_total counter")
            for result, n in sorted(st.metrics.uploads.items()):
                lines.append(f'central_uploads_total{{result="{result}"}} {n}')
            lines.append("# TYPE central_upload_rejections_total counter")
            for reason, n in sorted(st.metrics.rejections.items()):
                lines.append(f'central_upload_rejections_total{{reason="{reason}"}} {n}')
        lines.append("# TYPE central_queue_length gauge")
        lines.append(f"central_queue_length {st.registry.queue_length()}")
        cur = st.registry.current_version()
        lines.append("# TYPE central_current_version gauge")
        lines.append(f"central_current_version {cur['version'] if cur else 0}")
        return "\n".join(lines) + "\n"

    @app.post("/v1/enroll", responses=answers(401, 422, *WRITE))
    def enroll(req: EnrollRequest) -> dict:
        """Trade a one-time enrolment token for a device token and the central's public key."""
        try:
            name, token = st.registry.enroll(req.token)
        except RegistryError as e:
            raise _error(e.status, str(e)) from None
        cur = st.registry.current_version()
        return {"device": name, "token": token, "public_key": st.signer.public_key_b64,
                "key_type": "ed25519", "current_version": cur["version"] if cur else None}

    # -- devices: reads -----------------------------------------------------
    @app.get("/v1/versions/current", responses=answers(401, 404))
    def current(_who: str = Depends(require_reader)) -> dict:
        cur = st.registry.current_version()
        if cur is None:
            raise _error(404, "no central version published yet")
        return st.signed_version(cur)

    @app.get("/v1/versions/{version}", responses=READ)
    def version(version: VersionNo, _who: str = Depends(require_reader)) -> dict:
        v = st.registry.get_version(version)
        if v is None:
            raise _error(404, f"no version {version}")
        return st.signed_version(v)

    @app.get("/v1/kits/{version}/{fmt}", responses=READ)
    def kit(version: VersionNo, fmt: str, _who: str = Depends(require_reader)) -> dict:
        k = st.registry.get_kit(version, fmt)
        if k is None:
            raise _error(404, f"no {fmt} kit for version {version}")
        return st.signed_kit(k)

    @app.get("/v1/versions/{version}/kits", responses=answers(401, 422))
    def kits(version: VersionNo, _who: str = Depends(require_reader)) -> list[dict]:
        return [st.signed_kit(k) for k in st.registry.list_kits(version)]

    @app.get("/v1/blobs/{blob_id}", responses={200: BYTES, 206: {**BYTES, "description": "the requested Range"},
                                               **answers(400, 401, 404)})
    def blob(blob_id: str, who: str = Depends(require_reader)):
        """A published model or kit, by sha256; supports ``Range`` for resumed downloads."""
        if not BLOB_ID.fullmatch(blob_id):
            raise _error(400, "blob ids are 64 lowercase hex digits")
        try:
            path = st.registry.store.path(blob_id)
        except RegistryError as e:
            raise _error(e.status, str(e)) from None
        if who != "admin" and not st.registry.blob_is_release(blob_id):
            raise _error(404, "no such release blob")
        if not path.is_file():
            raise _error(404, "no such blob")
        return FileResponse(path, media_type="application/octet-stream", headers={"X-Content-SHA256": blob_id})

    # -- devices: upload ----------------------------------------------------
    async def read_capped(request: Request) -> bytes:
        """The request body, refusing (413) as soon as it is known to exceed the cap.

        Chunks are spooled to an anonymous temp file next to the blobs and read back
        once: one copy of the body in memory, never a list of chunks plus their join.
        """
        cap = st.cfg.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise _error(400, "bad Content-Length") from None
            if n > cap:
                raise _error(413, f"upload of {n} bytes exceeds the {cap}-byte limit")
        size = 0
        with tempfile.TemporaryFile(dir=st.registry.store.tmp) as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise _error(413, f"upload exceeds the {cap}-byte limit")
                f.write(chunk)
            f.seek(0)
            return f.read()

    def reject(reason: str, status: int, message: str) -> HTTPException:
        st.metrics.count(st.metrics.uploads, "rejected")
        st.metrics.count(st.metrics.rejections, reason)
        return _error(status, message)

    @app.post("/v1/uploads", status_code=201, openapi_extra=BUNDLE_BODY, responses={
        200: {"description": "already stored by this device"}, **answers(401, 409, 413, 422, *WRITE)})
    async def upload(
        request: Request,
        base_version: int | None = Query(
            default=None, ge=0, le=DB_INT_MAX, description="central version the model was pulled from"
        ),
        device: str = Depends(require_device),
    ):
        """Queue a fine-tuned bundle (raw bytes). 201 when stored, 200 when already stored."""
        if not st.upload_slots.acquire(blocking=False):
            st.metrics.count(st.metrics.uploads, "busy")
            raise HTTPException(503, f"{st.cfg.max_concurrent_uploads} uploads are in progress: try again later",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            return await receive_upload(request, base_version, device)
        finally:
            st.upload_slots.release()

    async def receive_upload(request: Request, base_version: int | None, device: str) -> JSONResponse:
        try:
            data = await read_capped(request)
        except HTTPException as e:
            if e.status_code == 413:
                st.metrics.count(st.metrics.uploads, "rejected")
                st.metrics.count(st.metrics.rejections, "too_large")
            raise
        try:
            bid, base = await run_in_threadpool(validate_upload, st.registry, data, base_version)
        except BundleError as e:
            raise reject("invalid_bundle", 422, f"rejected: {e}") from None
        row, duplicate = await run_in_threadpool(
            st.store_then_write, bid, lambda: st.registry.add_upload(device, data, bid, base)
        )
        if duplicate:
            st.metrics.count(st.metrics.uploads, "duplicate")
            if row["device"] != device:
                # Another device's upload row would tell this one who else trains what.
                raise _error(409, "this bundle is already stored (uploaded by another device)")
            return JSONResponse({"duplicate": True, "upload": row}, status_code=200)
        st.metrics.count(st.metrics.uploads, "accepted")
        return JSONResponse({"duplicate": False, "upload": row}, status_code=201)

    # -- admin --------------------------------------------------------------
    admin = [Depends(require_admin)]

    @app.post("/v1/admin/versions", status_code=201, dependencies=admin, openapi_extra=BUNDLE_BODY,
              responses=answers(400, 401, 409, 413, 422, *WRITE))
    async def publish(
        request: Request,
        consolidates: str = Query(default="", description="comma-separated upload ids this version consumes"),
        expected_current: int | None = Query(
            default=None, ge=0, le=DB_INT_MAX, description="refuse (409) unless this is still the current version"
        ),
    ) -> dict:
        """Publish a bundle as the next central version, then build its kits in the background."""
        data = await read_capped(request)
        try:
            await run_in_threadpool(load_bundle_bytes, data)
            uploads = [int(x) for x in consolidates.split(",") if x.strip()]
        except BundleError as e:
            raise _error(422, f"rejected: {e}") from None
        except ValueError:
            raise _error(400, "consolidates must be comma-separated upload ids") from None
        if not all(0 <= u <= DB_INT_MAX for u in uploads):
            raise _error(422, f"upload ids are between 0 and {DB_INT_MAX}")

        def sign(n: int, sha: str) -> tuple[dict, str]:
            return st.signer.sign("model", n, sha, MODEL_FORMAT, len(data))

        sha = hashlib.sha256(data).hexdigest()
        try:
            v = await run_in_threadpool(
                st.store_then_write, sha, lambda: st.registry.publish(
                    data, sign, list(st.cfg.kit_formats), uploads, expected_current,
                    "consolidate" if uploads else "publish",
                ),
            )
        except RegistryError as e:
            raise _error(e.status, str(e)) from None
        st.kits.wake()
        return v

    @app.get("/v1/admin/devices", dependencies=admin, responses=answers(401))
    def list_devices() -> list[dict]:
        return st.registry.list_devices()

    @app.post("/v1/admin/devices", status_code=201, dependencies=admin, responses=answers(400, 401, 409, 422, *WRITE))
    def add_device(req: DeviceRequest) -> dict:
        try:
            return {"device": req.name, "token": st.registry.add_device(req.name)}
        except RegistryError as e:
            raise _error(e.status, str(e)) from None

    @app.post("/v1/admin/devices/{name}/revoke", dependencies=admin, responses=answers(401, 404, 422, *WRITE))
    def revoke_device(name: str) -> dict:
        try:
            st.registry.revoke_device(name)
        except RegistryError as e:
            raise _error(e.status, str(e)) from None
        return {"device": name, "revoked": True}

    @app.get("/v1/admin/queue", dependencies=admin, responses=answers(401, 422))
    def queue(status: str = Query(default="queued", description="queued, consolidated or all")) -> list[dict]:
        return st.registry.queue(None if status == "all" else status)

    @app.get("/v1/admin/uploads/{upload_id}/blob", dependencies=admin, responses={200: BYTES, **READ})
    def upload_blob(upload_id: UploadNo):
        u = st.registry.get_upload(upload_id)
        if u is None:
            raise _error(404, f"no upload {upload_id}")
        return FileResponse(st.registry.store.path(u["bundle_id"]), media_type="application/octet-stream")

    @app.get("/v1/admin/kits", dependencies=admin, responses=answers(401))
    def admin_kits() -> list[dict]:
        return st.registry.list_kits()

    @app.post("/v1/admin/kits/{version}/{fmt}/rebuild", dependencies=admin,
              responses=answers(400, 401, 404, 422, *WRITE))
    def rebuild_kit(version: VersionNo, fmt: str) -> dict:
        try:
            split_format(fmt)
        except ValueError as e:
            raise _error(400, str(e)) from None
        if st.registry.get_version(version) is None:
            raise _error(404, f"no version {version}")
        st.registry.set_kit(version, fmt, status="pending", error=None)
        st.kits.wake()
        return {"version": version, "format": fmt, "status": "pending"}

    return app

