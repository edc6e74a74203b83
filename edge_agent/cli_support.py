"""CLI glue shared by `edge-agent` and `central`: one-line errors, optional commands."""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer


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
    """Add the commands of ``modules`` (each has ``register(app)``) whose extras are installed.

    A device install without the converter or server stacks simply lacks those commands.
    """
    for module in modules:
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError as e:
            # Only a missing third-party extra hides a command; a broken import of our own code must fail loudly.
            if (e.name or "").split(".")[0] in {"edge_agent", "central", "export", "benchmarks"}:
                raise
            continue
        mod.register(app)
