"""``central export``: a model bundle to an artifact kit (ONNX and/or TFLite, fp32 or int8)."""

from __future__ import annotations

import shutil
import tempfile
from enum import Enum
from pathlib import Path

import typer

from edge_agent.cli_support import VERBOSE, emit, friendly, note, output_to, refuse_overwrite, verbosity
from edge_agent.ood_sources import ood_help


class Format(str, Enum):
    onnx = "onnx"
    tflite = "tflite"
    all = "all"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


class OnnxInt8(str, Enum):
    u8u8 = "u8u8"
    u8s8 = "u8s8"
    s8s8 = "s8s8"


ONNX_INT8_HELP = (
    "ONNX int8 activation and weight types. u8u8 (default) does not saturate on x86 CPUs without VNNI; s8s8 ran "
    "1.6-1.9x faster on an AVX-512 VNNI Xeon but saturates without VNNI (docs/export.md)."
)


def log_path(out: Path) -> Path:
    """Where the converters' own output goes: beside the kit, so it survives a failed export."""
    return out.with_name(out.name + ".export.log")


def _swap_in(built: Path, out: Path) -> None:
    """Put the finished kit at ``out``, replacing what was there (the caller checked --force)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / out.name)
    built.rename(out)
    if old is not None:
        shutil.rmtree(old)


def evaluate_artifacts(bundle: Path, kit: Path, data: Path) -> dict:
    """Task accuracy (0..1) of the bundle's torch model and of each artifact of ``kit`` on labelled ``data``."""
    from edge_agent.evaluate import evaluate_bundle, evaluate_kit
    from edge_agent.runtime import load_kit

    ref = evaluate_bundle(bundle, data)
    artifacts = {}
    for art in load_kit(kit).artifacts:
        r = evaluate_kit(kit, data, format=art.format, precision=art.precision)
        artifacts[art.file] = {"format": art.format, "precision": art.precision, "accuracy": r["accuracy"], "n": r["n"],
                               "drop_points": 100 * (ref["accuracy"] - r["accuracy"])}
    return {"data": str(data), "n": ref["n"], "bundle": {"accuracy": ref["accuracy"]}, "artifacts": artifacts}


@friendly
def export_command(
    model: Path = typer.Option(..., "--model", help="Model bundle (.safetensors) to export."),
    format: Format = typer.Option(Format.onnx, "--format", help="onnx, tflite or all (both in one kit)."),
    quantize: Quantize = typer.Option(Quantize.none, "--quantize", help="none (fp32) or int8 (static, calibrated)."),
    out: Path = typer.Option(..., "--out", help="Kit folder to write (model files + manifest.json)."),
    ood: str = typer.Option(
        None,
        "--ood",
        help=ood_help("int8 calibration source (the central has no real data), augmented as in consolidation"),
    ),
    calib_samples: int = typer.Option(256, "--calib-samples", min=8, help="Calibration samples for int8."),
    onnx_int8: OnnxInt8 = typer.Option(OnnxInt8.u8u8, "--onnx-int8", help=ONNX_INT8_HELP),
    min_agreement: float = typer.Option(
        None,
        "--min-agreement",
        min=0.0,
        help="int8: share of 128 held-out calibration inputs on which an artifact must keep torch's top-1 "
        "[default: 0.97]; below it the export fails (exit 1).",
    ),
    eval_data: Path = typer.Option(
        None,
        "--eval-data",
        help="A labelled folder (image class folders or a Speech Commands folder): report the task accuracy of "
        "the bundle and of each artifact on it.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out (only once the new kit passed)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: kit, artifacts (file, bytes, sha256, parity), log, eval."
    ),
) -> None:
    """Export a bundle to an artifact kit, with a parity check of every artifact against the torch model.

    The converters' own output goes to OUT.export.log (--verbose shows it on stderr instead).

    Example: [bold]central export --model central-1.safetensors --format all --quantize int8 --out kit/ --eval-data split-digits/val --json[/]
    """
    # Heavy imports here, not at module level: `central --help` must stay fast.
    from export.calibration import ood_batches
    from export.kit import export_bundle
    from export.parity import INT8_MIN_TOP1

    refuse_overwrite(out, force)
    if eval_data is not None and not eval_data.is_dir():
        raise ValueError(f"--eval-data {eval_data} is not a folder")
    calibration = None
    if quantize is Quantize.int8:
        from edge_agent.bundle import load_bundle

        spec = load_bundle(model).input_spec
        n = calib_samples + 128  # the extra 128 are held out for the int8 parity check
        calibration = ood_batches(ood, spec, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = None if verbosity() >= VERBOSE else log_path(out)
    if log is not None:
        log.unlink(missing_ok=True)
    # Built beside --out and moved in once every artifact passed: a failed export leaves the old kit as it was.
    built = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        with output_to(log):
            result = export_bundle(model, format.value, quantize.value, built, calibration, calib_samples=calib_samples,
                                   int8_min_top1=INT8_MIN_TOP1 if min_agreement is None else min_agreement,
                                   onnx_int8=onnx_int8.value)
        _swap_in(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
        if log is not None:
            note(f"converter output: {log}")
    evaluation = None
    if eval_data is not None:
        with output_to(log):
            evaluation = evaluate_artifacts(model, out, eval_data)
    files = result.manifest["files"]
    summary = {
        "kit": str(out),
        "source_bundle_id": result.manifest["source_bundle_id"],
        "artifacts": [{**{k: a[k] for k in ("file", "format", "precision")}, **files[a["file"]], "parity": a["parity"]}
                      for a in result.manifest["artifacts"]],
        "log": str(log) if log is not None else None,
    }
    if evaluation is not None:
        summary["eval"] = evaluation
    lines = [report.line() for report in result.parity]
    lines += [f"{out / name}: {info['bytes'] / 1024:.1f} KiB sha256 {info['sha256'][:12]}" for name, info in files.items()]
    if evaluation is not None:
        lines.append(f"task accuracy on {eval_data} ({evaluation['n']} samples): bundle {evaluation['bundle']['accuracy']:.4f}")
        lines += [f"  {name}: {r['accuracy']:.4f} ({0.0 - r['drop_points']:+.2f} points)" for name, r in evaluation["artifacts"].items()]
    lines.append(f"kit: {out}")
    emit(as_json, summary, "\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to a typer app (the central CLI)."""
    app.command("export")(export_command)
