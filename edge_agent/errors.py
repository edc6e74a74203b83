"""Turn expected failures into one line on stderr and a non-zero exit (no traceback)."""

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
