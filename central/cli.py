"""``central``: create, consolidate, evaluate and ship the multi-task model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.cli_support import (
    EXIT_CODES_HELP,
    add_version_option,
    emit,
    friendly,
    refuse_overwrite,
    register_optional,
    run_app,
)
from edge_agent.ood_sources import ood_help

app = typer.Typer(
    help="The central: consolidates device models into one multi-task model without any device data.\n\n"
    f"{EXIT_CODES_HELP}\n\n"
    "Example: [bold]central consolidate --base central-0.safetensors --incoming dev1.safetensors --out central-1.safetensors[/]",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
add_version_option(app)
out_console = Console()


@app.command()
@friendly
def init(
    arch: Annotated[str, typer.Option(help="architecture from the model zoo; `central models` lists them")] = "cnn-s",
    labels: Annotated[Path, typer.Option(help="text file, one label per line: the global label list")] = ...,
    input_shape: Annotated[
        Optional[str], typer.Option(help="CxHxW for image models, e.g. 1x16x16 (default: 1x16x16; audio: from the frontend)")
    ] = None,
    out: Annotated[Path, typer.Option(help="where to write the bundle")] = Path("central-0.safetensors"),
    seed: Annotated[int, typer.Option(help="initialisation seed")] = 0,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object: out, id, arch, labels")] = False,
) -> None:
    """Create central-0: a fresh model over the whole label list, the root of every lineage.

    Example: [bold]central init --arch cnn-s --labels labels.txt --input-shape 1x16x16 --out central-0.safetensors --json[/]
    """
    from central.init import init_central, read_labels
    from edge_agent.inputs import parse_shape

    refuse_overwrite(out, force)
    names = read_labels(labels)
    bid = init_central(arch, names, out, parse_shape(input_shape) if input_shape else None, seed=seed)
    emit(as_json, {"out": str(out), "id": bid, "arch": arch, "labels": names},
         f"wrote {out} ({arch}, {len(names)} labels) id {bid}")


labels_app = typer.Typer(
    no_args_is_help=True,
    help="Read or grow a central's label list.\n\nExample: [bold]central labels list --model central-3.safetensors[/]",
)
app.add_typer(labels_app, name="labels")


@labels_app.command("list")
@friendly
def labels_list(
    model: Annotated[Path, typer.Option(help="a bundle (.safetensors)")],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON object instead of lines")] = False,
) -> None:
    """Print a bundle's labels in head order, marking the classes some device trained.

    Example: [bold]central labels list --model central-3.safetensors[/]
    """
    from edge_agent.bundle import load_bundle

    m = load_bundle(model).manifest
    if as_json:
        emit(True, {"labels": m.labels, "trained_classes": m.trained_classes})
        return
    for i, c in enumerate(m.labels):
        typer.echo(f"{i:>4}  {c}{'' if c in m.trained_classes else '  (not trained yet)'}")


@labels_app.command("add")
@friendly
def labels_add(
    model: Annotated[Path, typer.Option(help="the central bundle to grow")],
    label: Annotated[list[str], typer.Option("--label", help="a new class name; repeat for several")],
    out: Annotated[Path, typer.Option(help="where to write the grown bundle")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
) -> None:
    """Append classes to a central's label list: the head grows, every existing output stays as it was.

    Devices can also bring new classes themselves (edge-agent train adds them); this grows a
    central by hand, e.g. before devices that will train the new classes pull it.

    Example: [bold]central labels add --model central-3.safetensors --label owl --label emu --out central-3b.safetensors[/]
    """
    from edge_agent.bundle import load_bundle, new_manifest, save_bundle

    base = load_bundle(model)
    known = [c for c in label if c in set(base.labels)]
    if known:
        raise ValueError(f"already in the label list: {', '.join(known)}")
    grown = base.with_labels([*base.labels, *label])
    m = base.manifest
    manifest = new_manifest(grown.model, grown.labels, base.input_spec, trained_classes=m.trained_classes,
                            parents=[base.id], method="labels", metrics=m.metrics,
                            extra={**m.extra, "added_labels": list(label)})
    bid = save_bundle(grown.model, manifest, out)
    if as_json:
        emit(True, {"id": bid, "out": str(out), "labels": grown.labels, "added_labels": list(label)})
        return
    typer.echo(f"wrote {out}: {len(grown.labels)} labels ({len(label)} added: {', '.join(label)}) id {bid}")


@app.command()
@friendly
def consolidate(
    base: Annotated[Optional[Path], typer.Option(help="the current central bundle")] = None,
    incoming: Annotated[
        Optional[list[Path]], typer.Option(help="device bundle(s); repeat to consolidate a stream in order")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="where to write the consolidated bundle")] = None,
    ood: Annotated[
        Optional[str],
        typer.Option(help=ood_help()),
    ] = None,
    method: Annotated[
        str, typer.Option(help="consolidation method; `central methods` lists them")
    ] = "dac",
    steps: Annotated[
        Optional[int], typer.Option(help="optimisation steps per incoming model (default: 1000 for images, 500 for audio)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="OOD samples per step (over all processes)")] = 128,
    lr: Annotated[
        Optional[float], typer.Option(help="Adam learning rate, cosine decay (default: 3e-3 for image models, 1e-3 for audio)")
    ] = None,
    pld_weight: Annotated[float, typer.Option(help="weight of the projected latent loss (dac)")] = 1.0,
    student_init: Annotated[
        str,
        typer.Option(
            help="where the student starts: previous (the current central), average (parameter average of the "
            "central and the device), or auto (whichever already matches the teachers better on OOD data)"
        ),
    ] = "auto",
    batchnorm: Annotated[
        Optional[str],
        typer.Option(
            help="the student's BatchNorm while it distils: train (statistics follow the OOD batches) or frozen "
            "(statistics kept from the devices' real data) (default: train for images, frozen for audio)"
        ),
    ] = None,
    steer: Annotated[
        int,
        typer.Option(
            min=0,
            help="signed-gradient steps that pull half of each OOD batch towards a class one teacher knows, "
            "so the targets cover every class (0: plain OOD)",
        ),
    ] = 2,
    seed: Annotated[int, typer.Option(help="same seed, same inputs, same bundle")] = 0,
    nproc: Annotated[
        int, typer.Option(help="data-parallel processes on this machine (torch.distributed: gloo on CPU, NCCL on GPUs)")
    ] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted multi-process job from OUT.ckpt")] = False,
    from_queue: Annotated[bool, typer.Option("--from-queue", help="consolidate the server's upload queue and publish")] = False,
    server: Annotated[Optional[str], typer.Option(envvar="CENTRAL_SERVER", help="with --from-queue: central URL")] = None,
    admin_token: Annotated[Optional[str], typer.Option(envvar="CENTRAL_ADMIN_TOKEN", help="with --from-queue")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="with --from-queue: read the admin token here")] = None,
    limit: Annotated[Optional[int], typer.Option(help="with --from-queue: consolidate at most this many uploads")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object: out, id, method, labels, trained_classes, steps")
    ] = False,
) -> None:
    """Consolidate device models into the central model, data-free (DAC).

    Under torchrun every rank runs this same command
    (torchrun --nproc_per_node 4 $(which central) consolidate ...); --nproc N starts N ranks here.

    With --from-queue it takes the server's queued uploads in arrival order, consolidates them
    into the current version with these same settings and publishes the result.

    Example: [bold]central consolidate --base central-0.safetensors --incoming dev1.safetensors --out central-1.safetensors --json[/]
    """
    import os

    from central.methods import ConsolidationConfig, get_method

    cfg = ConsolidationConfig(
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, pld_weight=pld_weight, student_init=student_init,
        batchnorm=batchnorm, steer=steer,
    )
    cfg.check()
    get_method(method)  # an unknown name fails here, listing the known ones
    if from_queue:
        from central.server.admin import consolidate_from_queue

        r = consolidate_from_queue(server, admin_token, data_dir, ood=ood, method=method, cfg=cfg,
                                   limit=limit, progress=not as_json)
        if r["version"] is None:
            text = "the queue is empty: nothing to consolidate"
        else:
            text = (f"consolidated {len(r['consolidated'])} upload(s) into v{r['base_version']} "
                    f"-> published v{r['version']} ({r['bundle_id'][:12]}…)")
        emit(as_json, r, text)
        return
    if base is None or not incoming or out is None:
        raise ValueError("give --base, at least one --incoming and --out (or --from-queue)")
    from central.distributed import RANK_ENV

    if not os.environ.get(RANK_ENV["report_dir"]):  # a rank started by --nproc: the launcher checked already
        refuse_overwrite(out, force)
    if "WORLD_SIZE" in os.environ:
        # One rank of a torchrun job (started by --nproc, or by a person on several machines).
        from central.distributed import DistributedJob, rank_settings, run_rank

        st = rank_settings()
        job = DistributedJob(base, list(incoming), out, ood, method, cfg, checkpoint_every=st["checkpoint_every"],
                             resume=resume)
        r = run_rank(job, st["timeout_s"], st["report_dir"])
        if r is None or st["report_dir"] is not None:
            return
    elif nproc > 1 or resume:
        from central.distributed import consolidate_distributed

        r = consolidate_distributed(base, list(incoming), out, ood=ood, method=method, cfg=cfg, nproc=nproc, resume=resume)
    else:
        from central.consolidate import consolidate_files

        r = consolidate_files(base, list(incoming), out, ood=ood, method=method, cfg=cfg)
    starts = [s["student_init"]["chosen"] for s in r.get("steps", []) if "student_init" in s]
    began = f"; student started from {', '.join(starts)}" if starts else ""
    emit(as_json, r, f"wrote {out} ({method}, knows {len(r['trained_classes'])} classes{began}) id {r['id']}")


@app.command()
@friendly
def models(as_json: Annotated[bool, typer.Option("--json", help="print a JSON object instead of a table")] = False) -> None:
    """List the model zoo `central init --arch` accepts, with the input each takes by default.

    Example: [bold]central models --json[/]
    """
    from edge_agent.models import default_input_spec, list_models

    found = {name: default_input_spec(name).to_dict() for name in list_models()}
    if as_json:
        emit(True, {"models": found})
        return
    table = Table("arch", "input", "default shape")
    for name, spec in found.items():
        table.add_row(name, spec["kind"], "x".join(map(str, spec["shape"])))
    Console().print(table)


@app.command()
@friendly
def methods(as_json: Annotated[bool, typer.Option("--json", help="print a JSON object instead of a table")] = False) -> None:
    """List the consolidation methods `central consolidate --method` accepts.

    Example: [bold]central methods --json[/]
    """
    from central.methods import get_method, list_methods

    found = {name: get_method(name).summary for name in list_methods()}
    if as_json:
        emit(True, {"methods": found})
        return
    table = Table("method", "what it does")
    for name, summary in found.items():
        table.add_row(name, summary)
    Console().print(table)


@app.command()
@friendly
def evaluate(
    model: Annotated[Path, typer.Option(help="a bundle (.safetensors) or an artifact kit folder")],
    data: Annotated[Path, typer.Option(help="test data: image folders, or a Speech Commands folder")],
    stream: Annotated[
        Optional[Path], typer.Option(help="stream.json naming each experience's classes (default: next to --data)")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the report as one JSON object: accuracy, n, per_class, per_experience")
    ] = False,
) -> None:
    """Accuracy overall, per class and per experience (class-incremental and task-aware).

    Example: [bold]central evaluate --model central-1.safetensors --data split-digits/test --json[/]
    """
    from central.evaluate_cli import evaluate_path

    report = evaluate_path(model, data, stream)
    if json_out:
        emit(True, report)
        return
    print_report(report)


def print_report(report: dict) -> None:
    out_console.print(
        f"[bold]accuracy {report['accuracy']:.4f}[/] on {report['n']} samples "
        f"(argmax over the {len(report['known_classes'])} classes the model was trained on)"
    )
    t = Table("class", "accuracy", "n")
    for c, r in report["per_class"].items():
        t.add_row(c, f"{r['accuracy']:.3f}", str(r["n"]))
    out_console.print(t)
    if report.get("per_experience"):
        t = Table("experience", "accuracy", "task-aware", "n")
        for e, r in report["per_experience"].items():
            t.add_row(e, f"{r['accuracy']:.3f}", f"{r['task_aware_accuracy']:.3f}", str(r["n"]))
        out_console.print(t)


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="report folder (data, bundles, JSON, PNG, Markdown)")] = Path("demo-out"),
    modality: Annotated[str, typer.Option(help="image (Split-Digits) or audio (synthetic keyword spotting)")] = "image",
    steps: Annotated[
        Optional[int], typer.Option(help="consolidation steps per device (default: 1000 for images, 200 for audio)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="device training epochs")] = 30,
    seed: Annotated[int, typer.Option()] = 0,
    methods: Annotated[str, typer.Option(help="comma-separated methods to compare")] = "naive,dac",
    via_server: Annotated[
        bool, typer.Option("--via-server", help="run the loop through a real server on 127.0.0.1 with agent processes")
    ] = False,
) -> None:
    """Run a whole continual-learning stream end to end on bundled data and write a report.

    Example: [bold]central demo --out demo-out --modality image --methods naive,dac --steps 1000[/]
    """
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    if via_server:
        from central.demo_server import run_server_demo

        r = run_server_demo(out, epochs=epochs, steps=steps, log=typer.echo)
        typer.echo(f"server demo done in {r['wall_seconds']:.0f} s: {out / 'server-demo.json'}")
        return
    if modality == "image":
        from central.demo import run_demo

        report = run_demo(out, names, steps=steps, epochs=epochs, seed=seed, log=typer.echo)
    elif modality == "audio":
        from central.demo_audio import run_audio_demo

        # ds-cnn steps cost ~5x cnn-s steps; 500 measured no better than 200 (benchmarks/results/kws/kws.md).
        report = run_audio_demo(out, names, steps=steps or 200, seed=seed, log=typer.echo)
    else:
        raise ValueError(f"--modality must be image or audio, not {modality!r}")
    for m, r in report["methods"].items():
        typer.echo(f"{m:>6}: final average accuracy {r['final_avg_acc']:.3f}, average forgetting {r['avg_forgetting']:.3f}")
    typer.echo(f"report: {out / 'summary.md'} ({report['wall_seconds']:.0f} s)")


register_optional(app, ("export.cli", "central.server.cli"))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
