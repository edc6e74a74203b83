"""DAC ablations on Split-Digits: one knob at a time against the defaults.

Every variant consolidates the same device models (one seed) and is scored on
``val`` (the split settings are chosen on) and on ``test`` (reported). Knobs:
PLD on/off and weight, linear vs MLP projector, OOD source (china.jpg,
flower.jpg, a folder of scikit-image photos, noise), OOD augmentation, the
number of consolidation steps (cost vs accuracy), BatchNorm handling, target
normalisation, the student's initialisation, and asynchronous
uploads (devices fine-tuned from an older central version).

    python -m benchmarks.ablations [--seed 0] [--only NAME ...] [--tag TAG]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.dcl import RESULTS, load_stream, pull_and_fine_tune
from benchmarks.variants import variant
from central.methods import ConsolidationConfig
from central.stream import StreamEvaluator, run_stream, train_devices, write_json
from edge_agent.bundle import load_bundle
from edge_agent.data.images import load_image_folder
from edge_agent.data.ood import ImageAugment, open_ood

# name -> (consolidation overrides, OOD source, augmentation overrides, method)
VARIANTS: dict[str, tuple[dict, str | None, dict | None, str]] = {
    "default (dac)": ({}, None, None, "dac"),
    "kd (PLD off)": ({}, None, None, "kd"),
    "PLD weight 0.3": ({"pld_weight": 0.3}, None, None, "dac"),
    "PLD weight 3": ({"pld_weight": 3.0}, None, None, "dac"),
    "MLP projector": ({}, None, None, "dac[projector=mlp]"),
    "OOD flower.jpg": ({}, "flower", None, "dac"),
    "OOD folder of photos": ({}, "folder", None, "dac"),
    "OOD noise": ({}, "noise", None, "dac"),
    "augmentation: recipe only": (
        {},
        None,
        {"invert_p": 0.0, "lowres_p": 0.0, "autocontrast_p": 0.0, "edges_p": 0.0, "gamma_p": 0.0, "frame_p": 0.0},
        "dac",
    ),
    "steps 250": ({"steps": 250}, None, None, "dac"),
    "steps 500": ({"steps": 500}, None, None, "dac"),
    "BN frozen": ({"batchnorm": "frozen"}, None, None, "dac"),
    "BN re-estimated": ({}, None, None, "dac[bn=reestimate]"),
    "targets centred": ({}, None, None, "dac[target_norm=centre]"),
    "student from the previous central": ({"student_init": "previous"}, None, None, "dac"),
    "devices from the latest central": ({}, None, None, "dac-lag1"),
    "async: devices one version behind": ({}, None, None, "dac-lag2"),
    "devices from the latest central, averaging": ({}, None, None, "avg-lag1"),
    "devices from the latest central, naive (sequential fine-tuning)": ({}, None, None, "naive-lag1"),
    # The ex-model recipe (AntonioCarta/ex_model_cl): cross-entropy on the argmax of the targets plus the logit MSE,
    # SGD lr 0.1 momentum 0.9 with cosine decay; it was run for far more steps, so 3000 rows compare both at 3x.
    "steps 3000": ({"steps": 3000}, None, None, "dac"),
    "ex-model recipe": ({}, None, None, "dac[recipe=exmodel]"),
    "ex-model recipe, 3000 steps": ({"steps": 3000}, None, None, "dac[recipe=exmodel]"),
    "ex-model recipe, kd (PLD off), 3000 steps": ({"steps": 3000}, None, None, "kd[recipe=exmodel]"),
}


def ood_source(kind: str | None, spec, aug: dict | None, tmp: Path):
    """Open one of the ablation's OOD sources with the default augmentation plus ``aug``."""
    augment = {**asdict(ImageAugment()), **(aug or {})}
    if kind == "noise":
        return open_ood("noise", spec)
    if kind == "flower":
        from importlib import resources

        return open_ood(Path(str(resources.files("sklearn") / "datasets" / "images" / "flower.jpg")), spec, **augment)
    if kind == "folder":
        import skimage.data as sd
        from PIL import Image

        folder = tmp / "photos"
        folder.mkdir(exist_ok=True)
        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon"):
            img = np.asarray(getattr(sd, name)())
            Image.fromarray(img).convert("RGB").save(folder / f"{name}.png")
        return open_ood(folder, spec, **augment)
    return open_ood(None, spec, **augment)


def run_variant(setup, devices, val, ood, cfg: ConsolidationConfig, method: str) -> dict:
    """Consolidate the stream; ``METHOD-lagK`` first fine-tunes device t from the central K-1 versions behind the latest.

    ``METHOD[opt=value,...]`` is a variant of kd or dac (:mod:`benchmarks.variants`). Plain methods use the
    stream's devices, which all fine-tuned central-0.
    """
    method, _, lag_text = method.partition("-lag")
    name, _, opts = method.partition("[")
    if opts:
        method = variant(name, dict(o.split("=") for o in opts.rstrip("]").split(",")))
    pull = None
    if lag_text:
        # The device pulled a (possibly older) central version and fine-tuned it on its own data.
        lag = int(lag_text)
        pull = lambda t, history: pull_and_fine_tune(setup, history[max(0, len(history) - lag)], t)  # noqa: E731
    r = run_stream(setup.stream, setup.base, devices, ood, method, cfg, pull, log=lambda *a: None)
    test_acc, test_task = r["matrix"][-1], r["task_aware"]["matrix"][-1]
    val_acc, _ = StreamEvaluator(replace(setup.stream, test=val), setup.base.labels).row(r["model"], r["classes"])
    return {
        "val_final_avg_acc": float(np.mean(val_acc)),
        "test_final_avg_acc": float(np.mean(test_acc)),
        "test_task_aware": float(np.mean(test_task)),
        "cpu_seconds_per_consolidation": float(np.mean(r["cpu_seconds_per_consolidation"][1:])),
    }


def markdown(report: dict) -> str:
    lines = [
        "# DAC ablations on Split-Digits",
        "",
        f"Command: `{report['command']}`",
        "",
        f"One seed ({report['seed']}), the same 5 device models for every row (trained as "
        f"`{json.dumps(report['device_training'])}`); consolidation defaults: "
        f"`{json.dumps(report['defaults'])}`, augmentation `{json.dumps(report['augment'])}`. "
        "Settings are chosen on val; test is reported. Final average accuracy is class-incremental.",
        "",
        "| variant | val final avg acc | test final avg acc | test task-aware | CPU s / consolidation |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        lines.append(
            f"| {name} | {r['val_final_avg_acc']:.3f} | {r['test_final_avg_acc']:.3f} | {r['test_task_aware']:.3f} |"
            f" {r['cpu_seconds_per_consolidation']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _devices_dir(work: Path, seed: int) -> Path:
    return work / f"ablation-devices-seed{seed}"


def _variant_job(job: tuple) -> dict:
    name, seed, work = job
    torch.set_num_threads(1)
    over, kind, aug, method = VARIANTS[name]
    t0 = time.perf_counter()
    setup = load_stream("split-digits", work, seed, "test")
    val = load_image_folder(work / "data" / "val", setup.base.input_spec)
    devices = [load_bundle(_devices_dir(work, seed) / f"{e['name']}.safetensors") for e in setup.stream.experiences]
    with tempfile.TemporaryDirectory() as d:
        ood = ood_source(kind, setup.base.input_spec, aug, Path(d))
        cfg = replace(ConsolidationConfig(**over), seed=seed)
        r = run_variant(setup, devices, val, ood, cfg, method)
    print(f"{name:>34}: {json.dumps(r)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return r


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="variants run in parallel processes (1 torch thread each)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dcl-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS.parent / "ablations")
    ap.add_argument(
        "--tag", default="", help="write dcl-ablations-TAG.json/.md: rows run side by side apart from the main table"
    )
    args = ap.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    if unknown := [n for n in args.only or [] if n not in VARIANTS]:
        ap.error(f"unknown variant(s) {', '.join(map(repr, unknown))}: choose from {', '.join(map(repr, VARIANTS))}")
    torch.set_num_threads(1)
    setup = load_stream("split-digits", args.work, args.seed, "test")
    train_devices(
        setup.stream, setup.base_path, _devices_dir(args.work, args.seed), setup.train, False, lambda *a: None
    )
    stem = "dcl-ablations" + (f"-{args.tag}" if args.tag else "")
    out_json = args.out / f"{stem}.json"
    previous = json.loads(out_json.read_text())["variants"] if out_json.exists() and args.only else {}
    names = [n for n in VARIANTS if not args.only or n in args.only]
    jobs = [(n, args.seed, args.work) for n in names]
    if args.jobs > 1:
        # Variants are independent: one process each, one torch thread per process.
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            done = dict(zip(names, pool.map(_variant_job, jobs), strict=True))
    else:
        done = {n: _variant_job(j) for n, j in zip(names, jobs, strict=True)}
    variants = {n: done[n] if n in done else previous[n] for n in VARIANTS if n in done or n in previous}
    report = {
        "command": "python -m benchmarks.ablations " + " ".join(shlex.quote(a) for a in argv_used),
        "seed": args.seed,
        "defaults": asdict(ConsolidationConfig().for_input("image")),
        "device_training": asdict(setup.train.for_input("image")),
        "augment": asdict(ImageAugment()),
        "variants": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(out_json, report)
    (args.out / f"{stem}.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
