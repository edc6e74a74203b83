"""CLI glue shared by `edge-agent` and `central`: one-line errors, optional commands."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer

EXIT_MISSING_EXTRA = 2

# Third-party module -> the extra of edge-dcl that brings it (pyproject.toml).
EXTRA_OF_MODULE = {
    "torch": "train",
    "safetensors": "train",
    "scipy": "train",
    "onnxruntime": "onnx",
    "ai_edge_litert": "litert",
    "tflite_runtime": "litert",
    "onnx": "export",
    "onnxscript": "export",
    "onnx_ir": "export",
    "litert_torch": "export",
    "torchao": "export",
    "ai_edge_quantizer": "export",
    "sklearn": "data",
    "espeakng_loader": "data",
    "fastapi": "central",
    "uvicorn": "central",
    "sqlalchemy": "central",
    "skimage": "central",
    "matplotlib": "central",
}


def missing_extra(e: ImportError) -> str | None:
    """The one-line message for an import of an optional extra that is not installed (else None)."""
    top = (e.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this command needs the [{extra}] extra ({top} is not installed): pip install 'edge-dcl[{extra}]'"


def run_app(app: typer.Typer) -> None:
    """Run a typer app; a missing extra becomes one line and exit 2, never a traceback."""
    try:
        app()
    except ImportError as e:
        msg = missing_extra(e)
        if msg is None:
            raise
        typer.secho(f"error: {msg}", err=True, fg="red")
        sys.exit(EXIT_MISSING_EXTRA)


def expected_errors() -> tuple[type[BaseException], ...]:
    from edge_agent.bundle import BundleError
    from edge_agent.data.labeled import DataError
    from edge_agent.inputs import InputSpecError

    return (BundleError, DataError, InputSpecError, ValueError, FileNotFoundError, OSError)


def friendly(fn: Callable) -> Callable:
    """Decorator for CLI commands: ``error: <one line>`` and exit 1 for expected failures."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except expected_errors() as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            typer.secho(f"error: {msg}", err=True, fg="red")
            raise typer.Exit(1) from None

    return wrapper


def register_optional(app: typer.Typer, modules: tuple[str, ...]) -> None:
    """Add the commands of ``modules`` (each has ``register(app)``).

    Every command is listed whatever is installed: one whose extra is missing says which
    extra to install when run (:func:`run_app`). Only a module whose own top-level imports
    need a missing extra is left out of ``--help``.
    """
    for module in modules:
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError as e:
            # A broken import of our own code must fail loudly.
            if missing_extra(e) is None:
                raise
            continue
        mod.register(app)
