"""Building artifact kits for a published version, in a background thread.

A kit format is ``<runtime>-<precision>`` (``onnx-int8``, ``tflite-int8``,
``onnx-fp32``). The export itself belongs to :mod:`export`; this module only
calls it, packs the kit folder into a deterministic tar, stores it and signs it.
A failed export is recorded on the kit row and the server keeps serving.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from central.server.registry import Registry
from central.server.signing import ReleaseSigner

log = logging.getLogger("central.server.kits")

DEFAULT_FORMATS = ("onnx-int8", "tflite-int8")
KitBuilder = Callable[[Path, str, Path], None]


def split_format(fmt: str) -> tuple[str, str]:
    """``"tflite-int8"`` -> ``("tflite", "int8")``."""
    runtime, _, precision = fmt.partition("-")
    if runtime not in ("onnx", "tflite") or precision not in ("int8", "fp32"):
        raise ValueError(f"unknown kit format {fmt!r} (use onnx-int8, onnx-fp32, tflite-int8 or tflite-fp32)")
    return runtime, precision


def export_kit(bundle_path: Path, fmt: str, out_dir: Path, calib_ood: str | None = None, onnx_int8: str = "u8u8") -> None:
    """Default builder: :func:`export.kit.export_bundle` writes the kit folder ``out_dir``.

    int8 calibrates on ``calib_ood`` (an image or audio file, a folder, ``"noise"``;
    ``None``: the bundled OOD photo or clip, augmented as in consolidation). The parity
    check inside the exporter refuses an artifact that disagrees with the torch model,
    which then shows up as the kit row's error. ``onnx_int8``: the ONNX kits' activation and weight types.
    """
    runtime, precision = split_format(fmt)
    # Imported late: export (and its heavy toolchains) is optional on a registry-only box.
    from edge_agent.bundle import load_bundle
    from export.calibration import ood_batches
    from export.kit import export_bundle

    calibration = None
    if precision == "int8" and calib_ood is not None:
        calibration = ood_batches(calib_ood, load_bundle(bundle_path).input_spec, 256 + 128)
    export_bundle(bundle_path, format=runtime, quantize="int8" if precision == "int8" else "none", out=out_dir,
                  calibration=calibration, onnx_int8=onnx_int8)


def load_builder(spec: str | None, calib_ood: str | None = None, onnx_int8: str = "u8u8") -> KitBuilder:
    """``"module:function"`` -> the function (``None``: :func:`export_kit`, calibrating int8 on ``calib_ood``)."""
    if not spec:
        return functools.partial(export_kit, calib_ood=calib_ood, onnx_int8=onnx_int8)
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


def tar_folder(folder: Path) -> bytes:
    """A reproducible tar of ``folder``'s regular files (sorted, zero mtimes, no owners)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.is_symlink():
                continue
            info = tarfile.TarInfo(str(p.relative_to(folder)))
            info.size = p.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with p.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


class KitWorker:
    """One thread building pending kits one at a time (exports are CPU-heavy)."""

    def __init__(self, registry: Registry, signer: ReleaseSigner, builder: KitBuilder):
        self.registry = registry
        self.signer = signer
        self.builder = builder
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kit-builder", daemon=True)
        self.busy = False

    def start(self) -> None:
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=30)
            self._wake.clear()
            # Claimed one at a time in the database: with several server processes each kit is built once.
            while not self._stop.is_set() and (job := self.registry.claim_kit()) is not None:
                self.busy = True
                try:
                    self.build(*job)
                finally:
                    self.busy = False

    def build(self, version: int, fmt: str) -> None:
        """Export, pack, store, sign a claimed kit; any failure becomes the kit row's ``error``."""
        v = self.registry.get_version(version)
        try:
            if v is None:
                raise ValueError(f"version {version} does not exist")
            split_format(fmt)
            with tempfile.TemporaryDirectory(prefix="kit-", dir=self.registry.store.tmp) as tmp:
                bundle = Path(tmp) / "model.safetensors"
                bundle.write_bytes(self.registry.store.path(v["bundle_id"]).read_bytes())
                out = Path(tmp) / "kit"
                self.builder(bundle, fmt, out)
                if not (out / "manifest.json").is_file():
                    raise ValueError("the exporter wrote no manifest.json")
                data = tar_folder(out)
            sha = self.registry.store.put(data)
            statement, signature = self.signer.sign("kit", version, sha, fmt, len(data))
            self.registry.set_kit(version, fmt, status="ready", blob_id=sha, size=len(data), statement=statement,
                                  signature=signature, error=None)
            log.info("kit v%d %s ready (%d bytes)", version, fmt, len(data))
        except Exception as e:  # noqa: BLE001 - any exporter failure is recorded, the server keeps serving
            msg = (str(e).splitlines() or [type(e).__name__])[0][:500]
            log.warning("kit v%d %s failed: %s", version, fmt, msg)
            self.registry.set_kit(version, fmt, status="failed", error=f"{type(e).__name__}: {msg}")
