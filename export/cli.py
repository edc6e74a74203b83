"""``central export``: a model bundle to an artifact kit (ONNX and/or TFLite, fp32 or int8)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from edge_agent.cli_support import friendly
from edge_agent.ood_sources import ood_help


class Format(str, Enum):
    onnx = "onnx"
    tflite = "tflite"
    all = "all"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


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
) -> None:
    """Export a bundle to an artifact kit, with a parity check of every artifact against the torch model.

    Example: [bold]central export --model central-1.safetensors --format all --quantize int8 --out kit/[/]
    """
    # Heavy imports here, not at module level: `central --help` must stay fast.
    from export.calibration import ood_batches
    from export.kit import export_bundle

    calibration = None
    if quantize is Quantize.int8:
        from edge_agent.bundle import load_bundle

        spec = load_bundle(model).input_spec
        n = calib_samples + 128  # the extra 128 are held out for the int8 parity check
        calibration = ood_batches(ood, spec, n)
    result = export_bundle(model, format.value, quantize.value, out, calibration, calib_samples=calib_samples)
    for report in result.parity:
        typer.echo(report.line())
    for name, info in result.manifest["files"].items():
        typer.echo(f"{out / name}: {info['bytes'] / 1024:.1f} KiB sha256 {info['sha256'][:12]}")
    typer.echo(f"kit: {out}")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to a typer app (the central CLI)."""
    app.command("export")(export_command)
