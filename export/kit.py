"""Write an artifact kit: model file(s) + ``manifest.json``, enough to run on a device alone.

Manifest (``format: edge-dcl-kit``, version 1)::

    labels, input (InputSpec.to_dict()), audio_frontend (audio only),
    source_bundle_id, created, tools {package: version},
    files {name: {sha256, bytes}},
    artifacts [{file, format, precision, layout, input_dtype, parity {...}}]

Every artifact passes a parity check against the torch model before the
manifest is written; a failing fp32 artifact fails the export.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from torch import nn

from edge_agent.inputs import InputSpec
from edge_agent.runtime import (
    KIT_FORMAT,
    KIT_FORMAT_VERSION,
    MANIFEST_NAME,
    Artifact,
    OnnxRunner,
    TfliteRunner,
    sha256_file,
)
from export.calibration import noise_batches, take_samples
from export.parity import INT8_MIN_TOP1, UNTRAINED_MIN_TOP1, ParityReport, check_parity

FORMATS = ("onnx", "tflite")
PRECISIONS = ("none", "int8")
TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "litert-torch", "ai-edge-litert", "numpy")


class KitExportError(RuntimeError):
    """An export that cannot go on (bad options, no calibration data); one-line message."""


@dataclass
class KitResult:
    """What :func:`write_kit` wrote: the kit folder, its manifest, and one parity report per artifact."""

    path: Path
    manifest: dict
    parity: list[ParityReport] = field(default_factory=list)


def tool_versions() -> dict[str, str]:
    """Installed versions of the packages that shaped an artifact."""
    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _onnx_metadata(labels: list[str], spec: InputSpec, source_id: str, precision: str) -> dict[str, str]:
    return {
        "labels": json.dumps(labels),
        "input_spec": json.dumps(spec.to_dict()),
        "source_bundle_id": source_id,
        "precision": precision,
        "layout": "NCHW",
    }


def write_kit(
    model: nn.Module,
    input_spec: InputSpec,
    labels: list[str],
    source_id: str,
    out: str | Path,
    formats: Sequence[str] = ("onnx",),
    quantize: str = "none",
    calibration: Iterable[np.ndarray] | None = None,
    calib_samples: int = 256,
    parity_samples: int = 128,
    parity_inputs: np.ndarray | None = None,
    onnx_options=None,
    tflite_options=None,
    int8_min_top1: float = INT8_MIN_TOP1,
    lineage: dict | None = None,
) -> KitResult:
    """Export ``model`` to each of ``formats`` (``onnx``, ``tflite``) at ``quantize`` (``none`` = fp32, ``int8``) into kit ``out``.

    ``calibration`` yields model-ready float32 NCHW batches; int8 takes
    ``calib_samples`` for calibration and the next ``parity_samples`` (held out)
    for the parity check. Without ``parity_inputs`` or held-out samples, parity
    runs on seeded Gaussian noise in input space. Raises :class:`export.parity.ParityError`
    when an fp32 artifact disagrees with torch, or int8 top-1 agreement (argmax over the lineage's
    ``trained_classes``, else every label) is below ``int8_min_top1`` (at most
    :data:`export.parity.UNTRAINED_MIN_TOP1` for a lineage trained on no class).
    """
    from export.onnx_export import (
        OnnxQuantOptions,
        export_onnx_fp32,
        quantize_onnx_int8,
        set_onnx_metadata,
    )
    from export.tflite_export import LAYOUT as TFLITE_LAYOUT
    from export.tflite_export import (
        TfliteQuantOptions,
        export_tflite_fp32,
        export_tflite_int8,
    )

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise KitExportError(f"unknown format(s) {bad or '[]'} (known: {', '.join(FORMATS)})")
    if quantize not in PRECISIONS:
        raise KitExportError(f"--quantize must be one of {', '.join(PRECISIONS)}, not {quantize!r}")
    if len(labels) != getattr(model, "num_classes", len(labels)):
        raise KitExportError(f"{len(labels)} labels for a model with {model.num_classes} classes")
    model = model.eval()
    precision = "int8" if quantize == "int8" else "fp32"

    calib = None
    if precision == "int8":
        if calibration is None:
            raise KitExportError("int8 export needs calibration data")
        pool = take_samples(calibration, calib_samples + (0 if parity_inputs is not None else parity_samples), input_spec.shape)
        calib = pool[:calib_samples]
        if parity_inputs is None and len(pool) > calib_samples:
            parity_inputs = pool[calib_samples:]
    if parity_inputs is None:
        parity_inputs = take_samples(noise_batches(input_spec, parity_samples, seed=1234), parity_samples)
    parity_inputs = np.asarray(parity_inputs, dtype=np.float32)
    trained = (lineage or {}).get("trained_classes")
    decision_classes = [labels.index(c) for c in trained or [] if c in labels] or None
    if trained == []:  # the lineage says so: central-0
        int8_min_top1 = min(int8_min_top1, UNTRAINED_MIN_TOP1)

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    reports: list[ParityReport] = []
    suffix = ".int8" if precision == "int8" else ""
    for fmt in formats:
        if fmt == "onnx":
            name = f"model{suffix}.onnx"
            path = root / name
            if precision == "fp32":
                export_onnx_fp32(model, input_spec, path)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    fp32 = export_onnx_fp32(model, input_spec, Path(tmp) / "model.onnx")
                    quantize_onnx_int8(fp32, path, [calib], input_spec, replace(onnx_options or OnnxQuantOptions(), samples=len(calib)))
            set_onnx_metadata(path, _onnx_metadata(labels, input_spec, source_id, precision))
            art = Artifact(name, "onnx", precision, "NCHW")
            runner = OnnxRunner(path, art)
            input_dtype = "float32"
            extra = {"opset": _onnx_opset(path)}
            if precision == "int8":
                opts = onnx_options or OnnxQuantOptions()
                extra["int8_types"] = opts.activations + opts.weights
        else:
            name = f"model{suffix}.tflite"
            path = root / name
            if precision == "fp32":
                export_tflite_fp32(model, input_spec, path)
            else:
                export_tflite_int8(model, input_spec, path, [calib], tflite_options or TfliteQuantOptions(samples=len(calib)))
            art = Artifact(name, "tflite", precision, TFLITE_LAYOUT)
            runner = TfliteRunner(path, art)
            input_dtype = np.dtype(runner.inp["dtype"]).name
            extra = {}
        report = check_parity(model, runner, parity_inputs, name, precision, int8_min_top1=int8_min_top1,
                              decision_classes=decision_classes)
        reports.append(report)
        entries.append({"file": name, "format": fmt, "precision": precision, "layout": art.layout, "input_dtype": input_dtype, **extra, "parity": report.to_dict()})

    manifest = {
        "format": KIT_FORMAT,
        "format_version": KIT_FORMAT_VERSION,
        "source_bundle_id": source_id,
        "arch": getattr(model, "arch", type(model).__name__),
        "labels": list(labels),
        "input": input_spec.to_dict(),
        # The device never sees the NHWC/NCHW choice: inputs are described NCHW,
        # each artifact says what its file wants and the runtime transposes.
        "input_layout": "NCHW",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tools": tool_versions(),
        "files": {e["file"]: {"sha256": sha256_file(root / e["file"]), "bytes": (root / e["file"]).stat().st_size} for e in entries},
        "artifacts": entries,
    }
    if lineage:
        # The bundle's lineage travels with the kit: which classes it knows, its parents, how it was made.
        manifest.update(lineage)
    if input_spec.kind == "audio":
        manifest["audio_frontend"] = dict(input_spec.frontend)
    _write_json_atomic(root / MANIFEST_NAME, manifest)
    return KitResult(root, manifest, reports)


def _onnx_opset(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)


def export_bundle(
    bundle_path: str | Path,
    format: str,
    quantize: str,
    out: str | Path,
    calibration: Iterable[np.ndarray] | None = None,
    calib_samples: int = 256,
    int8_min_top1: float = INT8_MIN_TOP1,
    onnx_int8: str = "u8u8",
) -> KitResult:
    """Export a model bundle (``.safetensors``) to a kit; ``format`` is ``onnx``, ``tflite`` or ``all``.

    Without ``calibration``, int8 calibrates on the bundled OOD source (a photo
    or a speech clip, augmented as in consolidation): the central has no real data.
    ``int8_min_top1``: the share of held-out inputs (0..1) on which int8 must keep torch's top-1.
    ``onnx_int8``: ONNX activation and weight types, ``u8u8`` (default), ``u8s8`` or ``s8s8`` (docs/export.md).
    """
    from edge_agent.bundle import load_bundle
    from export.onnx_export import OnnxExportError, options_for_types

    try:
        onnx_options = options_for_types(onnx_int8)
    except OnnxExportError as e:
        raise KitExportError(str(e)) from None

    bundle = load_bundle(bundle_path)
    spec = bundle.input_spec
    if quantize == "int8" and calibration is None:
        from export.calibration import ood_batches

        calibration = ood_batches(None, spec, calib_samples + 128)
    formats = FORMATS if format == "all" else (format,)
    m = bundle.manifest
    lineage = {
        "trained_classes": list(m.trained_classes),
        "parents": list(m.parents),
        "method": m.method,
        "version": m.extra.get("version"),
        "bundle_created_at": m.created_at,
    }
    return write_kit(
        bundle.model, spec, bundle.labels, bundle.id, out, formats, quantize, calibration,
        calib_samples=calib_samples, lineage=lineage, int8_min_top1=int8_min_top1, onnx_options=onnx_options,
    )
