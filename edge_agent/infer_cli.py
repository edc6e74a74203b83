"""``edge-agent infer KIT INPUT``: top-k labels of one image or WAV clip, with the kit's own runtime."""

from __future__ import annotations

from pathlib import Path

import typer

from edge_agent.cli_support import emit, friendly


@friendly
def infer_command(
    kit: Path = typer.Argument(..., help="Artifact kit folder (manifest.json + model files)."),
    input: Path = typer.Argument(..., help="An image (png, jpg, ...) or a WAV clip, per the kit's input kind."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="How many labels to print."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (kit, input, predictions: [{label, score, logit}]) instead of a table."
    ),
    format: str = typer.Option(None, "--format", help="onnx or tflite when the kit holds both (default: first listed)."),
    threads: int = typer.Option(None, "--threads", min=1, help="Runtime threads (default: the runtime's choice)."),
) -> None:
    """Run a kit on one input: checks the kit's checksums, preprocesses as its manifest says, prints top-k.

    Example: [bold]edge-agent infer kit/ photo.jpg --top-k 3 --format tflite --json[/]
    """
    from edge_agent.runtime import infer

    preds = infer(kit, input, k=top_k, format=format, num_threads=threads)
    if as_json:
        rows = [{"label": p.label, "score": round(p.score, 6), "logit": round(p.logit, 6)} for p in preds]
        emit(True, {"kit": str(kit), "input": str(input), "predictions": rows})
        return
    width = max(len(p.label) for p in preds)
    for p in preds:
        typer.echo(f"{p.label:<{width}}  {p.score:.4f}")


def register(app: typer.Typer) -> None:
    """Add the ``infer`` command to a typer app (the edge-agent CLI)."""
    app.command("infer")(infer_command)
