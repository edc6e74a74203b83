"""The central's HTTP API (FastAPI). OpenAPI docs at ``/docs``.

Routes, by who may call them:

- anyone: ``GET /healthz``, ``GET /metrics``, ``POST /v1/enroll`` (with a one-time enrolment token);
- devices (``Authorization: Bearer <device token>``; the admin token works too):
  ``GET /v1/versions/current``, ``GET /v1/versions/{n}``, ``GET /v1/kits/{n}/{format}``,
  ``GET /v1/blobs/{sha256}`` (published releases only, HTTP Range supported),
  ``POST /v1/uploads`` (devices only: a device uploads as itself);
- admin (``Authorization: Bearer <admin token>``): ``/v1/admin/...``.

Uploads are validated completely before anything is stored; a rejected upload
leaves no blob and no row.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from central.server.auth import (
    bearer,
    load_or_create_admin_token,
    same_token,
    token_hash,
)
from central.server.kits import DEFAULT_FORMATS, KitWorker, load_builder, split_format
from central.server.registry import Registry, RegistryError
from central.server.signing import ReleaseSigner
from central.server.uploads import validate_upload
from edge_agent.bundle import BundleError, load_bundle_bytes
from edge_agent.client.trust import MODEL_FORMAT

log = logging.getLogger("central.server")
DEFAULT_MAX_UPLOAD = 64 * 1024 * 1024


@dataclass
class ServerConfig:
    """Everything ``central serve`` can set."""

    data_dir: Path
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    kit_formats: tuple[str, ...] = DEFAULT_FORMATS
    kit_builder: str | None = None  # "module:function"; None = export.kit
    calib_ood: str | None = None  # int8 calibration source for kits; None = the bundled OOD photo / clip
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


class EnrollRequest(BaseModel):
    token: str


class DeviceRequest(BaseModel):
    name: str


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
        self.signer = ReleaseSigner(cfg.data_dir)
        self.admin_hash = token_hash(load_or_create_admin_token(cfg.data_dir))
        self.kits = KitWorker(self.registry, self.signer, load_builder(cfg.kit_builder, cfg.calib_ood))
        self.metrics = Metrics()


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

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        # Route templates, not raw paths: bounded label cardinality whatever clients send.
        path = getattr(route, "path", "unmatched")
        st.metrics.count(st.metrics.requests, (request.method, path, response.status_code))
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

    @app.post("/v1/enroll")
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
    @app.get("/v1/versions/current")
    def current(_who: str = Depends(require_reader)) -> dict:
        cur = st.registry.current_version()
        if cur is None:
            raise _error(404, "no central version published yet")
        return cur

    @app.get("/v1/versions/{version}")
    def version(version: int, _who: str = Depends(require_reader)) -> dict:
        v = st.registry.get_version(version)
        if v is None:
            raise _error(404, f"no version {version}")
        return v

    @app.get("/v1/kits/{version}/{fmt}")
    def kit(version: int, fmt: str, _who: str = Depends(require_reader)) -> dict:
        k = st.registry.get_kit(version, fmt)
        if k is None:
            raise _error(404, f"no {fmt} kit for version {version}")
        return k

    @app.get("/v1/versions/{version}/kits")
    def kits(version: int, _who: str = Depends(require_reader)) -> list[dict]:
        return st.registry.list_kits(version)

    @app.get("/v1/blobs/{blob_id}")
    def blob(blob_id: str, who: str = Depends(require_reader)):
        """A published model or kit, by sha256; supports ``Range`` for resumed downloads."""
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
        """The request body, refusing (413) as soon as it is known to exceed the cap."""
        cap = st.cfg.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise _error(400, "bad Content-Length") from None
            if n > cap:
                raise _error(413, f"upload of {n} bytes exceeds the {cap}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise _error(413, f"upload exceeds the {cap}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def reject(reason: str, status: int, message: str) -> HTTPException:
        st.metrics.count(st.metrics.uploads, "rejected")
        st.metrics.count(st.metrics.rejections, reason)
        return _error(status, message)

    @app.post("/v1/uploads", status_code=201)
    async def upload(
        request: Request,
        base_version: int | None = Query(default=None, description="central version the model was pulled from"),
        device: str = Depends(require_device),
    ):
        """Queue a fine-tuned bundle (raw bytes). 201 when stored, 200 when already stored."""
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
        row, duplicate = await run_in_threadpool(st.registry.add_upload, device, data, bid, base)
        if duplicate:
            st.metrics.count(st.metrics.uploads, "duplicate")
            return JSONResponse({"duplicate": True, "upload": row}, status_code=200)
        st.metrics.count(st.metrics.uploads, "accepted")
        return JSONResponse({"duplicate": False, "upload": row}, status_code=201)

    # -- admin --------------------------------------------------------------
    admin = [Depends(require_admin)]

    @app.post("/v1/admin/versions", status_code=201, dependencies=admin)
    async def publish(
        request: Request,
        consolidates: str = Query(default="", description="comma-separated upload ids this version consumes"),
        expected_current: int | None = Query(default=None),
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

        def sign(n: int, sha: str) -> tuple[dict, str]:
            return st.signer.sign("model", n, sha, MODEL_FORMAT)

        try:
            v = await run_in_threadpool(
                st.registry.publish, data, sign, list(st.cfg.kit_formats), uploads, expected_current,
                "consolidate" if uploads else "publish",
            )
        except RegistryError as e:
            raise _error(e.status, str(e)) from None
        st.kits.wake()
        return v

    @app.get("/v1/admin/devices", dependencies=admin)
    def list_devices() -> list[dict]:
        return st.registry.list_devices()

    @app.post("/v1/admin/devices", status_code=201, dependencies=admin)
    def add_device(req: DeviceRequest) -> dict:
        try:
            return {"device": req.name, "token": st.registry.add_device(req.name)}
        except RegistryError as e:
            raise _error(e.status, str(e)) from None

    @app.post("/v1/admin/devices/{name}/revoke", dependencies=admin)
    def revoke_device(name: str) -> dict:
        try:
            st.registry.revoke_device(name)
        except RegistryError as e:
            raise _error(e.status, str(e)) from None
        return {"device": name, "revoked": True}

    @app.get("/v1/admin/queue", dependencies=admin)
    def queue(status: str = Query(default="queued", description="queued, consolidated or all")) -> list[dict]:
        return st.registry.queue(None if status == "all" else status)

    @app.get("/v1/admin/uploads/{upload_id}/blob", dependencies=admin)
    def upload_blob(upload_id: int):
        u = st.registry.get_upload(upload_id)
        if u is None:
            raise _error(404, f"no upload {upload_id}")
        return FileResponse(st.registry.store.path(u["bundle_id"]), media_type="application/octet-stream")

    @app.get("/v1/admin/kits", dependencies=admin)
    def admin_kits() -> list[dict]:
        return st.registry.list_kits()

    @app.post("/v1/admin/kits/{version}/{fmt}/rebuild", dependencies=admin)
    def rebuild_kit(version: int, fmt: str) -> dict:
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

