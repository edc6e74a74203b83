"""CLI glue shared by `edge-agent` and `central`: one error wrapper, one table of exit codes, optional commands.

Exit codes (docs/cli.md):

====  ======================================================================================
0     done
1     refused: the central or a check said no (bad signature, rollback, rejected upload,
      parity check failed, a converter could not convert the model, kit failed its smoke test)
2     bad input or usage: a file that cannot be read, wrong shapes, a missing extra, not
      enrolled, bad option values (click's own usage errors are 2 as well)
70    internal error: a bug (sysexits EX_SOFTWARE); ``EDGE_DCL_TRACEBACK=1`` shows the traceback
75    temporary failure: the central is unreachable; the work is kept (sysexits EX_TEMPFAIL)
130   interrupted (Ctrl-C); training resumes when the same command runs again
====  ======================================================================================

Nothing here imports torch, httpx or cryptography: ``edge-agent --help`` stays fast and works on a
device without torch. The error classes are looked up in ``sys.modules`` when an error happens: an
exception of a class whose module was never imported cannot exist.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_MISSING_EXTRA = EXIT_USAGE
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: an error of our own code
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: what schedulers (systemd, cron wrappers) understand as "retry later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# One line for the top-level --help of both CLIs.
EXIT_CODES_HELP = "Exit codes: 0 done, 1 refused, 2 bad input, 75 central unreachable (retry later), 130 interrupted (docs/cli.md)."

# "module:class" -> exit code, most specific first: the first class the error is an instance of decides
# (TrustError is a ValueError, but a bad signature is a refusal, not bad input).
EXIT_CODE_OF_ERROR: tuple[tuple[str, int], ...] = (
    # 75: the work is kept, retry later.
    ("edge_agent.client.http:CentralUnreachable", EXIT_TEMPFAIL),
    ("central.server.database:DatabaseUnavailable", EXIT_TEMPFAIL),
    # 1: the central or a check said no.
    ("edge_agent.client.http:CentralError", EXIT_REFUSED),
    ("edge_agent.client.trust:TrustError", EXIT_REFUSED),
    ("edge_agent.client.kits:KitRejected", EXIT_REFUSED),
    ("export.parity:ParityError", EXIT_REFUSED),
    ("export.onnx_export:OnnxExportError", EXIT_REFUSED),
    ("export.tflite_export:TfliteExportError", EXIT_REFUSED),
    ("central.distributed:DistributedConsolidationError", EXIT_REFUSED),
    ("central.demo_server:DemoError", EXIT_REFUSED),
    # 130: stopped on purpose; the checkpoint allows resuming.
    ("edge_agent.train:Interrupted", EXIT_INTERRUPTED),
    ("central.distributed:Interrupted", EXIT_INTERRUPTED),
    # 2: bad input or usage.
    ("edge_agent.client.state:NotEnrolled", EXIT_USAGE),
    ("edge_agent.bundle:BundleError", EXIT_USAGE),
    ("edge_agent.data.labeled:DataError", EXIT_USAGE),
    ("edge_agent.inputs:InputSpecError", EXIT_USAGE),
    ("edge_agent.runtime:KitError", EXIT_USAGE),
    ("edge_agent.bench:BenchError", EXIT_USAGE),
    ("edge_agent.data.speech_synth:SynthesisError", EXIT_USAGE),
    ("central.consolidate:ConsolidationError", EXIT_USAGE),
    ("central.server.errors:RegistryError", EXIT_USAGE),
    ("export.kit:KitExportError", EXIT_USAGE),
    ("builtins:ValueError", EXIT_USAGE),
    ("builtins:OSError", EXIT_USAGE),  # a file that cannot be read or written
)

# typer's own exits and usage errors carry their exit code: let them through (typer 0.29 vendors click,
# older ones use click's classes; BadParameter's bases name the right ClickException either way).
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    *[c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"],
)

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


def _error_class(where: str) -> type[BaseException] | None:
    module, name = where.split(":")
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def exit_code_of(e: BaseException) -> int | None:
    """The documented exit code of an expected error (None: not one we expect, a bug)."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, ImportError):
        return EXIT_MISSING_EXTRA if missing_extra(e) else None
    for where, code in EXIT_CODE_OF_ERROR:
        cls = _error_class(where)
        if cls is not None and isinstance(e, cls):
            return code
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def error_message(e: BaseException) -> str:
    """The one line printed after ``error:`` (or ``interrupted:``)."""
    if isinstance(e, ImportError) and missing_extra(e):
        return missing_extra(e)  # type: ignore[return-value]
    status = getattr(e, "status", None)
    central_error = _error_class("edge_agent.client.http:CentralError")
    if central_error is not None and isinstance(e, central_error) and status:
        return f"central answered {status}: {_first_line(e)}"
    return _first_line(e)


def fail(code: int, message: str) -> NoReturn:
    """Stop a command: ``error: <message>`` on stderr and the exit ``code`` (one of the EXIT_* above)."""
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code)


def friendly(fn: Callable) -> Callable:
    """The error wrapper of every ``edge-agent`` and ``central`` command.

    An expected failure becomes one line on stderr (``error: ...``) and the exit code of
    :data:`EXIT_CODE_OF_ERROR`; Ctrl-C exits 130; anything else is a bug: one line and exit 70
    (``EDGE_DCL_TRACEBACK=1`` raises it instead, with its traceback). Never a traceback otherwise.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except (Exception, KeyboardInterrupt) as e:
            code = exit_code_of(e)
            if code == EXIT_INTERRUPTED:
                why = "" if isinstance(e, KeyboardInterrupt) or not str(e) else f" ({_first_line(e)})"
                typer.secho(f"interrupted{why}: run the same command again to resume", err=True, fg="yellow")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            if code is None:
                if os.environ.get("EDGE_DCL_TRACEBACK"):
                    raise
                fail(EXIT_SOFTWARE, f"internal error, {type(e).__name__}: {_first_line(e)} "
                     "(a bug: EDGE_DCL_TRACEBACK=1 shows the traceback)")
            fail(code, error_message(e))

    wrapper.__cli_errors__ = True  # tests/test_cli_help.py checks that every command has it
    return wrapper


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-dcl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edge-dcl {package_version()}")
        raise typer.Exit()


# Verbosity lives in the environment so that processes a command starts (torchrun ranks) inherit it.
VERBOSITY_ENV = "EDGE_DCL_VERBOSITY"
QUIET, NORMAL, VERBOSE = -1, 0, 1


def verbosity() -> int:
    """QUIET, NORMAL or VERBOSE, as the top-level ``--quiet`` / ``--verbose`` set it."""
    try:
        return max(QUIET, min(VERBOSE, int(os.environ.get(VERBOSITY_ENV, NORMAL))))
    except ValueError:
        return NORMAL


def set_verbosity(level: int) -> None:
    os.environ[VERBOSITY_ENV] = str(level)
    if level == QUIET:
        os.environ["EDGE_PROGRESS"] = "0"  # edge_agent.progress: no bars


def add_version_option(app: typer.Typer) -> None:
    """The app's top-level options: ``--version`` (prints ``edge-dcl <version>``), ``--quiet``, ``--verbose``."""

    @app.callback()
    def _top(
        version: Annotated[
            bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
        ] = False,
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="no progress bars or notes on stderr: only the result and errors")
        ] = False,
        verbose: Annotated[
            bool, typer.Option("--verbose", "-v", help="show what the converters print on stderr (central export), not in OUT.export.log")
        ] = False,
    ) -> None:
        if quiet and verbose:
            fail(EXIT_USAGE, "--quiet and --verbose exclude each other")
        set_verbosity(QUIET if quiet else VERBOSE if verbose else NORMAL)


def note(message: str) -> None:
    """Prose for a person (what happened, where things went): stderr, silent under ``--quiet``."""
    if verbosity() > QUIET:
        typer.echo(message, err=True)


def emit(as_json: bool, result: dict, text: str | None = None) -> None:
    """A command's result on stdout: one JSON object with ``--json``, else ``text`` (one line or more)."""
    if as_json:
        typer.echo(json.dumps(_strict(result), indent=2, default=str))
    elif text is not None:
        typer.echo(text)


def _strict(value):
    """NaN and infinities as null: strict JSON parsers (jq, JavaScript) refuse the bare words."""
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def refuse_overwrite(path: Path, force: bool, flag: str = "--force") -> None:
    """Stop (exit 2) when ``path`` exists (a file, or a folder that is not empty) and ``force`` is off."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir())) or path.is_symlink()
    if exists and not force:
        fail(EXIT_USAGE, f"{path} exists; pass {flag} to overwrite it")


@contextlib.contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """Send everything written to stdout and stderr, by Python or by native code, to ``log`` (appended).

    ``log=None`` sends stdout to stderr instead: what a converter prints never lands between a
    command's results. File descriptors are redirected, so C++ loggers and child processes follow.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = open(log, "a", buffering=1, encoding="utf-8") if log is not None else None  # noqa: SIM115
    py_out = target or sys.stderr
    try:
        os.dup2(target.fileno() if target else saved[1], 1)
        if target:
            os.dup2(target.fileno(), 2)
        # Python-level too: a test runner or a wrapper may have replaced sys.stdout with an object of its own.
        with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(target or sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        if target:
            target.close()


def run_app(app: typer.Typer) -> None:
    """Run a typer app; a missing extra outside a command (at import) becomes one line and exit 2."""
    try:
        app()
    except ImportError as e:
        msg = missing_extra(e)
        if msg is None:
            raise
        typer.secho(f"error: {msg}", err=True, fg="red")
        sys.exit(EXIT_MISSING_EXTRA)


def register_optional(app: typer.Typer, modules: tuple[str, ...]) -> None:
    """Add the commands of ``modules`` (each has ``register(app)``).

    Every command is listed whatever is installed: one whose extra is missing says which
    extra to install when run (:func:`friendly`). Only a module whose own top-level imports
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
