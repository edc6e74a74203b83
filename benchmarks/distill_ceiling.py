"""What perfect logit distillation would score on a stream's device models.

Support-weighted consolidation (the targets of ``kd`` and ``dac``) makes the KD
target after the last device the per-class mean of the logits of every device
that knows the class. This script evaluates that mean on real test (or val)
data, next to each device alone: the ceiling KD and DAC approach as the
student matches its teachers, so it separates *weak devices* from *lossy
distillation* when a consolidation result is low.

Reads the device models a ``benchmarks.dcl`` run left in ``--work`` (it trains
nothing):

    python -m benchmarks.distill_ceiling --stream kws-domain --work /tmp/dcl-kws --seeds 2 [--split val]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.dcl import IMAGE_ARCHS, RESULTS, STREAMS, devices_folder, load_stream
from benchmarks.variants import centred_targets
from central.consolidate import class_support, known_mask, support_tensor
from central.methods import Teacher
from central.methods.distill import logit_targets
from central.stream import write_json
from edge_agent.bundle import load_bundle
from edge_agent.evaluate import evaluate_logits, predict_logits


def ceiling(stream: str, work: Path, seed: int, split: str, arch: str | None = None) -> dict:
    setup = load_stream(stream, work, seed, split, write=False, arch=arch)
    labels, data = setup.base.labels, setup.stream.test
    folder = devices_folder(setup, work, seed)
    paths = [folder / f"{e['name']}.safetensors" for e in setup.stream.experiences]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no device model at {missing[0]}: run python -m benchmarks.dcl --stream {stream} first")
    devices = [load_bundle(p) for p in paths]
    logits = [predict_logits(d.model, data.x) for d in devices]
    teachers = [
        Teacher(d.model, known_mask(labels, d.manifest.trained_classes), support_tensor(labels, class_support(d)))
        for d in devices
    ]
    target, known = logit_targets(teachers, logits)
    centred, _ = centred_targets(teachers, logits)  # the dac[target_norm=centre] variant
    known_classes = [c for c, k in zip(labels, known.tolist(), strict=True) if k]
    return {
        "seed": seed,
        "devices_alone": [evaluate_logits(lg, labels, data, known_classes)["accuracy"] for lg in logits],
        "logit_mean": evaluate_logits(target, labels, data, known_classes)["accuracy"],
        "centred_logit_mean": evaluate_logits(centred, labels, data, known_classes)["accuracy"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", default="kws-domain", choices=STREAMS)
    ap.add_argument("--arch", default=None, choices=IMAGE_ARCHS, help="image streams: the model of the dcl run")
    ap.add_argument("--work", type=Path, required=True, help="the --work folder of a benchmarks.dcl run")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--out", type=Path, default=RESULTS.parent / "distill-ceiling")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = [ceiling(args.stream, args.work, s, args.split, args.arch) for s in range(args.seeds)]
    means = [r["logit_mean"] for r in runs]
    centred = [r["centred_logit_mean"] for r in runs]
    report = {
        "stream": args.stream,
        "split": args.split,
        "command": "python -m benchmarks.distill_ceiling " + " ".join(argv if argv is not None else sys.argv[1:]),
        "per_seed": runs,
        "logit_mean": float(np.mean(means)),
        "logit_mean_std": float(np.std(means)),
        "centred_logit_mean": float(np.mean(centred)),
        "centred_logit_mean_std": float(np.std(centred)),
    }
    stem = f"distill-ceiling-{args.stream}" + (f"-{args.arch}" if args.arch and args.arch != "cnn-s" else "")
    stem += "" if args.split == "test" else f"-{args.split}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{stem}.json", report)
    lines = [
        f"# Distillation ceiling: {args.stream} ({args.split} split)",
        "",
        f"Command: `{report['command']}`",
        "",
        "Accuracy over every class the devices know, on the whole split, of each device model alone and of the",
        "support-weighted mean of all devices' logits (the target of the last KD / DAC consolidation, i.e. what",
        "a student that matched its teachers exactly would score), with raw logits and with each device's logits",
        "centred over its own classes first (the `dac[target_norm=centre]` variant; the product distils raw logits).",
        "",
        "| seed | " + " | ".join(f"device {i + 1}" for i in range(len(runs[0]["devices_alone"]))) + " | logit mean | centred |",
        "|---" * (len(runs[0]["devices_alone"]) + 3) + "|",
    ]
    for r in runs:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{a:.3f}" for a in r["devices_alone"]) + f" | {r['logit_mean']:.3f} | {r['centred_logit_mean']:.3f} |")
    lines += [
        "",
        f"Logit mean over seeds: **{report['logit_mean']:.3f} ± {report['logit_mean_std']:.3f}**; centred: "
        f"**{report['centred_logit_mean']:.3f} ± {report['centred_logit_mean_std']:.3f}**.",
        "",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
