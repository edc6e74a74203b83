"""``edge-agent bench``: latency of a kit's artifacts (or a bundle on torch eager) on this device."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent.cli_support import friendly


def _ms(row, key: str) -> str:
    return f"{getattr(row, key):.4f}"


def _table(rows: list, title: str) -> None:
    """Metrics down, one column per runtime: fits a terminal for the usual 1-5 artifacts."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("")
    for r in rows:
        t.add_column(f"{r.runtime} {r.precision}\n{r.file}", justify="right")
    lines = [
        ("runtime version", lambda r: r.runtime_version),
        ("file size (KB)", lambda r: f"{r.size_bytes / 1024:.1f}"),
        ("init (ms)", lambda r: f"{r.init_ms:.1f}"),
        ("first inference (ms)", lambda r: f"{r.first_ms:.3f}"),
        ("warm-up / runs", lambda r: f"{r.warmup} / {r.runs}"),
        *[(f"{k} (ms)", functools.partial(_ms, key=f"{k}_ms")) for k in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")],
        ("throughput (/s)", lambda r: f"{r.throughput_per_s:,.0f}"),
        ("peak RSS (MB)", lambda r: f"{r.peak_rss_mb:.0f}"),
    ]
    for name, fmt in lines:
        t.add_row(name, *[fmt(r) for r in rows])
    Console().print(t)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the edge-agent CLI."""

    @app.command()
    @friendly
    def bench(
        path: Annotated[Path, typer.Argument(help="a kit folder (runs its artifacts) or a bundle .safetensors (torch eager)")],
        runtime: Annotated[str, typer.Option(help="onnx, tflite, torch or all")] = "all",
        threads: Annotated[int, typer.Option(help="intra-op threads of every runtime")] = 1,
        runs: Annotated[int, typer.Option(help="timed calls per round")] = 200,
        warmup: Annotated[int, typer.Option(help="untimed calls before timing")] = 50,
        batch: Annotated[int, typer.Option(help="samples per call (TFLite graphs are batch 1: a batch is a loop)")] = 1,
        rounds: Annotated[int, typer.Option(help="repeat all runtimes in turn and pool the samples (less noise)")] = 1,
        bundle: Annotated[Optional[Path], typer.Option(help="also time this bundle on torch eager (the baseline) next to a kit")] = None,
        isolate: Annotated[bool, typer.Option(help="one process per runtime: clean peak RSS, no shared thread pools")] = True,
        as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of rows instead of the table")] = False,
    ) -> None:
        """Time inference: init, first call, then mean/std/min/p50/p90/p95/p99/max in ms, throughput, peak RSS.

        Example: [bold]edge-agent bench kit/ --runtime all --threads 1 --runs 200 --bundle central.safetensors[/]
        """
        from edge_agent.bench import RUNTIMES, BenchConfig, BenchError, bench, bundle_target, cpu_info, targets_for

        if runtime not in (*RUNTIMES, "all"):
            raise typer.BadParameter(f"--runtime must be one of {', '.join(RUNTIMES)}, all; not {runtime!r}")
        cfg = BenchConfig(threads=threads, runs=runs, warmup=warmup, batch=batch, rounds=rounds, isolate=isolate)
        targets = []
        if bundle is not None:
            targets.append(bundle_target(bundle))
        if path.is_dir() and runtime == "torch":
            if bundle is None:
                raise BenchError("a kit holds onnx and tflite artifacts: --runtime torch needs --bundle <bundle.safetensors>")
        else:
            targets += targets_for(path, runtime)
        progress = None if as_json else (lambda msg: typer.secho(msg, err=True, dim=True))
        rows = bench(targets, cfg, progress=progress)
        if as_json:
            typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
            return
        m = cpu_info()
        title = (
            f"{path} | batch {batch}, {threads} thread(s), {rows[0].runs} runs after {warmup} warm-up | "
            f"{m['cpu_model']} ({', '.join(m['cpu_flags'])}) | load {m['load_avg'][0]}"
        )
        _table(rows, title)
        base = next((r for r in rows if r.runtime == "torch"), None)
        if base is not None and len(rows) > 1:
            typer.echo("p50 vs torch eager fp32: " + ", ".join(f"{r.label} {r.p50_ms / base.p50_ms:.3f}x" for r in rows if r is not base))
