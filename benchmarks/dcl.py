"""The distributed continual learning (DCL) stream benchmark.

One invocation runs the *same* stream (the same device models for a seed)
through every consolidation method and the two upper bounds:

- ``naive``, ``avg``, ``kd``, ``dac``: the central consolidates device after device;
- ``ensemble``: every device model is kept and each test sample is routed to its
  own device by its true task id (task-aware by construction: an upper bound);
- ``joint``: the model trained on the union of the devices' data seen so far.

Read top to bottom: ``load_stream`` (the only stream-specific code), ``run_seed``
(one seed: devices, methods, bounds, forward transfer), ``main`` (seeds, the
report, plots). Settings are chosen on ``val`` (``--split val``); the committed
report is on ``test``.

    python -m benchmarks.dcl --stream split-digits --seeds 3 [--steps N] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from central.create import init_central
from central.evaluate import evaluate_model
from central.methods import ConsolidationConfig
from central.metrics import summarize
from central.stream import Stream, heatmap, train_devices, write_json
from edge_agent.bundle import Bundle, load_bundle, new_manifest, save_bundle
from edge_agent.data.labeled import LabeledSet
from edge_agent.data.ood import OODSource, open_ood
from edge_agent.train import TrainConfig, fine_tune, load_local_data, masked_accuracy

RESULTS = Path(__file__).parent / "results"
METHODS = ("naive", "avg", "kd", "dac")


@dataclass
class StreamSetup:
    """Everything a benchmark needs to know about one stream."""

    name: str
    stream: Stream  # stream.test is the split the report is computed on
    arch: str
    base: Bundle  # central-0
    base_path: Path
    train: TrainConfig  # device fine-tuning
    ood: str | None  # OOD source given to open_ood (None: the bundled default)


def load_stream(name: str, work: Path, seed: int, split: str = "test") -> StreamSetup:
    """Build a stream and its central-0 for ``seed``; ``split`` is ``test`` or ``val``.

    Image streams are written here; audio streams (``kws-domain``, ``kws-class``)
    come from :mod:`edge_agent.data.kws_streams` on a synthetic speech dataset.
    """
    work.mkdir(parents=True, exist_ok=True)
    if name == "split-digits":
        from edge_agent.data.digits import write_split_digits
        from edge_agent.data.images import load_image_folder

        meta = write_split_digits(work / "data")
        base_path = work / f"central-0-seed{seed}.safetensors"
        init_central("cnn-s", meta["labels"], base_path, (1, 16, 16), seed=seed)
        base = load_bundle(base_path)
        exps = [{**e, "path": work / "data" / e["name"]} for e in meta["experiences"]]
        test = load_image_folder(work / "data" / split, base.input_spec)
        stream = Stream(work / "data", meta["labels"], exps, test)
        return StreamSetup(name, stream, "cnn-s", base, base_path, TrainConfig(epochs=30, seed=seed), None)
    if name in ("kws-domain", "kws-class"):
        return _kws_stream(name, work, seed, split)
    raise ValueError(f"unknown stream {name!r} (split-digits, kws-domain, kws-class)")


def _kws_stream(name: str, work: Path, seed: int, split: str) -> StreamSetup:
    from edge_agent.data.kws_streams import write_kws_stream
    from edge_agent.data.speech import load_speech_commands
    from edge_agent.data.speech_synth import write_synthetic_speech

    root = work / "speech"
    if not (root / "testing_list.txt").exists():
        write_synthetic_speech(root)
    kind = name.split("-", 1)[1]
    folders = write_kws_stream(root, work / name, kind=kind)
    meta = json.loads((work / name / "stream.json").read_text())
    labels = meta["labels"]
    base_path = work / f"{name}-central-0-seed{seed}.safetensors"
    init_central("ds-cnn", labels, base_path, seed=seed)
    base = load_bundle(base_path)
    exps = [
        {"name": f.name, "classes": e["classes"], "path": f} for f, e in zip(folders, meta["experiences"], strict=True)
    ]
    frontend_spec = base.input_spec
    from edge_agent.audio.frontend import AudioFrontend

    test = load_speech_commands(work / name / "test", AudioFrontend.from_dict(frontend_spec.frontend), split=split)
    stream = Stream(work / name, labels, exps, test)
    return StreamSetup(name, stream, "ds-cnn", base, base_path, TrainConfig(epochs=20, seed=seed), None)


def ensemble_oracle(setup: StreamSetup, devices: list[Bundle]) -> dict:
    """Keep every device model; route each test sample to its own device by true task id."""
    labels, test = setup.base.labels, setup.stream.test
    T = len(devices)
    acc = []
    for e, d in zip(setup.stream.experiences, devices, strict=True):
        sub = _subset(test, e["classes"])
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[[labels.index(c) for c in e["classes"]]] = True
        acc.append(masked_accuracy(d.model, sub.x, sub.targets(labels), mask))
    R = np.array([[acc[j] if j <= t else 0.0 for j in range(T)] for t in range(T)])
    out = summarize(R)
    out["task_aware"] = summarize(R)
    out["cpu_seconds_per_consolidation"] = [0.0] * T
    return out


def joint_training(setup: StreamSetup, epochs_scale: float = 1.0) -> dict:
    """After each experience, train from central-0 on all data seen so far (all classes in the loss)."""
    labels, exps = setup.base.labels, setup.stream.experiences
    T = len(exps)
    R, R_task = np.zeros((T, T)), np.zeros((T, T))
    cpu = []
    data = [load_local_data(e["path"], setup.base) for e in exps]
    for t in range(T):
        seen = LabeledSet(torch.cat([d.x for d in data[: t + 1]]), sum((d.labels for d in data[: t + 1]), []))
        bundle = load_bundle(setup.base_path)
        t0 = time.process_time()
        cfg = TrainConfig(**{**asdict(setup.train), "epochs": max(1, round(setup.train.epochs * epochs_scale))})
        model, _ = fine_tune(bundle, seen, cfg, progress=False)
        cpu.append(time.process_time() - t0)
        rep = evaluate_model(model, labels, setup.stream.test, known=seen.classes, experiences=exps)
        for j, e in enumerate(exps):
            pe = rep["per_experience"].get(e["name"], {})
            R[t, j] = pe.get("accuracy", 0.0) if j <= t else 0.0
            R_task[t, j] = pe.get("task_aware_accuracy", 0.0) if j <= t else 0.0
    out = summarize(R)
    out["task_aware"] = summarize(R_task)
    out["cpu_seconds_per_consolidation"] = cpu
    return out


def forward_transfer(setup: StreamSetup, models: list[torch.nn.Module], epochs: int = 1) -> list[dict]:
    """Device accuracy on experience t after a short fine-tune from ``models[t-1]`` vs from central-0."""
    labels = setup.base.labels
    rows = []
    for t in range(1, len(setup.stream.experiences)):
        e = setup.stream.experiences[t]
        data = load_local_data(e["path"], setup.base)
        sub = _subset(setup.stream.test, e["classes"])
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[[labels.index(c) for c in e["classes"]]] = True
        cfg = TrainConfig(**{**asdict(setup.train), "epochs": epochs})
        accs = {}
        for start, model in (("central-0", setup.base.model), ("consolidated", models[t - 1])):
            bundle = _as_bundle(setup, model)
            tuned, _ = fine_tune(bundle, data, cfg, progress=False)
            accs[start] = masked_accuracy(tuned, sub.x, sub.targets(labels), mask)
        rows.append({"experience": e["name"], **accs, "gain": accs["consolidated"] - accs["central-0"]})
    return rows


def _as_bundle(setup: StreamSetup, model: torch.nn.Module) -> Bundle:
    # A fresh copy through the bundle format, so fine-tuning never touches the source model.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.safetensors"
        manifest = new_manifest(model, setup.base.labels, setup.base.input_spec, trained_classes=[], method="copy")
        save_bundle(model, manifest, p)
        return load_bundle(p)


def _subset(data: LabeledSet, classes: list[str]) -> LabeledSet:
    keep = set(classes)
    return data.subset([i for i, lab in enumerate(data.labels) if lab in keep])


def consolidate_stream(
    setup: StreamSetup, devices: list[Bundle], ood: OODSource, method: str, cfg: ConsolidationConfig, log
) -> tuple[dict, list[torch.nn.Module]]:
    """``central.stream.run_method`` plus the model after every experience (for forward transfer)."""
    from central.consolidate import consolidate_step

    labels, exps = setup.base.labels, setup.stream.experiences
    T = len(devices)
    R, R_task = np.zeros((T, T)), np.zeros((T, T))
    model, classes = setup.base.model, list(setup.base.manifest.trained_classes)
    models, cpu = [], []
    for t, dev in enumerate(devices):
        step_cfg = ConsolidationConfig(**{**asdict(cfg), "seed": cfg.seed * 1000 + t})
        model, classes, timing = consolidate_step(model, classes, dev, ood, method, step_cfg, progress=False)
        models.append(model)
        cpu.append(timing["cpu_seconds"])
        rep = evaluate_model(model, labels, setup.stream.test, known=classes, experiences=exps)
        for j, e in enumerate(exps):
            pe = rep["per_experience"].get(e["name"], {})
            R[t, j] = pe.get("accuracy", 0.0)
            R_task[t, j] = pe.get("task_aware_accuracy", 0.0)
    log(f"  {method:>8}: final avg acc {R[-1].mean():.3f} ({sum(cpu):.0f} s CPU)")
    out = summarize(R)
    out["task_aware"] = summarize(R_task)
    out["cpu_seconds_per_consolidation"] = cpu
    return out, models


def run_seed(
    setup: StreamSetup, ood: OODSource, cfg: ConsolidationConfig, work: Path, ft_epochs: int, log, methods=METHODS
) -> dict:
    """One seed: device models, every method on them, the upper bounds and forward transfer."""
    quiet = lambda *a, **k: None  # noqa: E731
    devices = train_devices(setup.stream, setup.base_path, work / f"devices-seed{cfg.seed}", setup.train, False, quiet)
    out: dict = {}
    for m in methods:
        r, models = consolidate_stream(setup, devices, ood, m, cfg, log)
        r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if ft_epochs > 0 and m in ("naive", "dac"):
            r["forward_transfer"] = forward_transfer(setup, models, ft_epochs)
        out[m] = r
    out["ensemble"] = ensemble_oracle(setup, devices)
    out["joint"] = joint_training(setup)
    out["joint"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log(f"  ensemble: {out['ensemble']['final_avg_acc']:.3f}   joint: {out['joint']['final_avg_acc']:.3f}")
    return out


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each method's figures."""
    out = {}
    for m in per_seed[0]:
        runs = [r[m] for r in per_seed]
        R = np.mean([r["matrix"] for r in runs], axis=0)
        finals = [r["final_avg_acc"] for r in runs]
        task = [r["task_aware"]["final_avg_acc"] for r in runs]
        agg = {
            "final_avg_acc": float(np.mean(finals)),
            "final_avg_acc_std": float(np.std(finals)),
            "final_avg_acc_per_seed": finals,
            "task_aware_final_avg_acc": float(np.mean(task)),
            "task_aware_final_avg_acc_std": float(np.std(task)),
            "avg_forgetting": float(np.mean([r["avg_forgetting"] for r in runs])),
            "avg_acc_curve": np.mean([r["avg_acc_curve"] for r in runs], axis=0).tolist(),
            "matrix": R.tolist(),
            "cpu_seconds_per_consolidation": float(
                np.mean([np.mean(r["cpu_seconds_per_consolidation"]) for r in runs])
            ),
            "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in runs),
        }
        if "forward_transfer" in runs[0]:
            ft = [row for r in runs for row in r["forward_transfer"]]
            agg["forward_transfer"] = {
                "from_central0": float(np.mean([row["central-0"] for row in ft])),
                "from_consolidated": float(np.mean([row["consolidated"] for row in ft])),
                "gain": float(np.mean([row["gain"] for row in ft])),
            }
        out[m] = agg
    return out


def curve_plot(methods: dict, path: Path, title: str) -> None:
    """Average accuracy after each experience, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for m, r in methods.items():
        c = r["avg_acc_curve"]
        ax.plot(range(1, len(c) + 1), c, marker="o", label=f"{m} ({r['final_avg_acc']:.2f})")
    ax.set_xlabel("after experience")
    ax.set_ylabel("average accuracy (class-incremental)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = [
        f"# DCL benchmark: {report['stream']} ({report['split']} split)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{report['seeds']} seeds (device models differ per seed); consolidation {json.dumps(report['consolidation'])}; "
        f"wall time {report['wall_seconds']:.0f} s.",
        "",
        "| method | final avg acc | std | task-aware final avg acc | avg forgetting | CPU s / consolidation |"
        " peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        lines.append(
            f"| {m} | {r['final_avg_acc']:.3f} | {r['final_avg_acc_std']:.3f} | {r['task_aware_final_avg_acc']:.3f} |"
            f" {r['avg_forgetting']:.3f} | {r['cpu_seconds_per_consolidation']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "`ensemble` routes each sample to its own device by the true task id (task-aware by construction), and",
        "`joint` trains on all the data seen so far: both are upper bounds, not consolidation methods. Peak RSS is",
        "the process's peak so far (ru_maxrss), so it only grows down the table.",
        "",
        "## Forward transfer to devices",
        "",
        f"Device accuracy on its own task after a {report['forward_transfer_epochs']}-epoch fine-tune, starting "
        "from the consolidated central of the previous experience versus from central-0 (mean over devices 2..T and seeds).",
        "",
        "| method | from central-0 | from consolidated | gain |",
        "|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        if "forward_transfer" in r:
            f = r["forward_transfer"]
            lines.append(f"| {m} | {f['from_central0']:.3f} | {f['from_consolidated']:.3f} | {f['gain']:+.3f} |")
    names = [e["name"] for e in report["experiences"]]
    for m, r in report["methods"].items():
        lines += ["", f"## {m}: accuracy matrix, mean over seeds (row: after device t; column: experience j)", ""]
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for t, row in enumerate(r["matrix"]):
            lines.append(f"| after {names[t]} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    stem = report["file_stem"]
    lines += ["", f"![accuracy matrices]({stem}-matrices.png)", "", f"![average accuracy]({stem}-curve.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", default="split-digits", choices=["split-digits", "kws-domain", "kws-class"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="consolidation steps (default: ConsolidationConfig)")
    ap.add_argument("--split", default="test", choices=["test", "val"], help="val for choosing settings")
    ap.add_argument("--ft-epochs", type=int, default=1, help="forward-transfer fine-tune budget (0: skip)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dcl-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # small models on a shared 2-core machine: threads only add contention
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    t0 = time.perf_counter()
    cfg = ConsolidationConfig() if args.steps is None else ConsolidationConfig(steps=args.steps)
    per_seed = []
    for seed in range(args.seeds):
        setup = load_stream(args.stream, args.work, seed, args.split)
        log(
            f"seed {seed}: {args.stream}, {len(setup.stream.experiences)} devices, {len(setup.stream.test)} {args.split}"
        )
        ood = open_ood(setup.ood, setup.base.input_spec)
        per_seed.append(
            run_seed(setup, ood, ConsolidationConfig(**{**asdict(cfg), "seed": seed}), args.work, args.ft_epochs, log)
        )
    methods = aggregate(per_seed)
    stem = f"dcl-{args.stream}" + ("" if args.split == "test" else f"-{args.split}")
    report = {
        "stream": args.stream,
        "split": args.split,
        "seeds": args.seeds,
        "command": "python -m benchmarks.dcl " + " ".join(argv if argv is not None else sys.argv[1:]),
        "experiences": [{"name": e["name"], "classes": e["classes"]} for e in setup.stream.experiences],
        "ood": setup.ood or "default (image: scikit-learn china.jpg)",
        "consolidation": asdict(cfg) | {"seed": "per seed"},
        "device_training": asdict(setup.train) | {"seed": "per seed"},
        "forward_transfer_epochs": args.ft_epochs,
        "methods": methods,
        "per_seed": per_seed,
        "wall_seconds": time.perf_counter() - t0,
        "file_stem": stem,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{stem}.json", report)
    names = [e["name"] for e in report["experiences"]]
    heatmap(methods, names, args.out / f"{stem}-matrices.png", f"{args.stream}: accuracy R[t, j], mean over seeds")
    curve_plot(methods, args.out / f"{stem}-curve.png", f"{args.stream}: average accuracy after each experience")
    (args.out / f"{stem}.md").write_text(markdown(report))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "per_seed"}, indent=2))
    return report


if __name__ == "__main__":
    main()
