"""The stream driver: device training, then consolidation after each device, evaluated as it goes.

Every method consolidates the *same* device models (trained once, through the
same code path as ``edge-agent train``), so methods differ only in how they
consolidate; or, with ``pull``, each device fine-tunes the method's current
central, as a device running ``edge-agent`` does. One driver, one evaluator:
``central demo``, ``benchmarks/dcl.py`` and ``benchmarks/ablations.py`` all run it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from central.consolidate import Central, consolidate_step, step_seed
from central.methods import ConsolidationConfig
from central.metrics import summarize
from edge_agent.bundle import Bundle, load_bundle
from edge_agent.data.labeled import LabeledSet
from edge_agent.data.ood import OODSource
from edge_agent.train import TrainConfig, masked_accuracy, train_bundle


@dataclass
class Stream:
    """Where a stream's data lives: one folder per device experience and a test set."""

    root: Path
    labels: list[str]
    experiences: list[dict]  # {"name", "classes", "path"}
    test: LabeledSet
    test_by_exp: list[LabeledSet] = field(default_factory=list)


def train_devices(
    stream: Stream, central0: Path, out: Path, cfg: TrainConfig, progress: bool = True, log=print, reuse: bool = False
) -> list[Bundle]:
    """Fine-tune one device model per experience from ``central0`` (the same for every method).

    ``reuse`` loads a device bundle already in ``out`` when it was trained from this
    central-0 with this exact ``cfg`` (training is deterministic, so it is the same model).
    """
    devices = []
    if reuse:
        base = load_bundle(central0)
        base_id = base.id
        recipe = json.loads(json.dumps(asdict(cfg.for_input(base.input_spec.kind))))  # as train_bundle records it
    for e in stream.experiences:
        path = out / f"{e['name']}.safetensors"
        if reuse and path.is_file():
            old = load_bundle(path)
            if old.manifest.parents == [base_id] and old.manifest.extra.get("train") == recipe:
                log(f"device {e['name']}: reusing {path}")
                devices.append(old)
                continue
        t = time.perf_counter()
        r = train_bundle(central0, e["path"], path, cfg, progress=progress)
        log(
            f"device {e['name']}: classes {', '.join(r['classes'])}, local val accuracy "
            f"{r['metrics'].get('val_accuracy', float('nan')):.3f} ({time.perf_counter() - t:.1f} s)"
        )
        devices.append(load_bundle(r["out"]))
    return devices


class StreamEvaluator:
    """Accuracy of a model on every experience of a stream: class-incremental and task-aware.

    Experience j is tested on its own test set (``stream.test_by_exp``: domain streams, where devices
    share classes) or on the test samples of its classes. Class-incremental accuracy takes the argmax
    over ``known`` (every class consolidated so far); task-aware over experience j's classes only.
    """

    def __init__(self, stream: Stream, labels: list[str]):
        self.stream, self.labels = stream, labels

    def experience_test(self, j: int) -> LabeledSet:
        if self.stream.test_by_exp:
            return self.stream.test_by_exp[j]
        keep = set(self.stream.experiences[j]["classes"])
        return self.stream.test.subset([i for i, lab in enumerate(self.stream.test.labels) if lab in keep])

    def mask(self, classes: list[str]) -> torch.Tensor:
        mask = torch.zeros(len(self.labels), dtype=torch.bool)
        mask[[self.labels.index(c) for c in classes]] = True
        return mask

    def accuracy(self, model: torch.nn.Module, data: LabeledSet, classes: list[str]) -> float:
        return masked_accuracy(model, data.x, data.targets(self.labels), self.mask(classes))

    def row(self, model: torch.nn.Module, known: list[str]) -> tuple[list[float], list[float]]:
        """(class-incremental, task-aware) accuracy of ``model`` on each experience."""
        ci, ta = [], []
        for j, e in enumerate(self.stream.experiences):
            data = self.experience_test(j)
            ci.append(self.accuracy(model, data, known))
            ta.append(self.accuracy(model, data, e["classes"]))
        return ci, ta


# pull(t, history) -> the bundle device t uploads, fine-tuned from one of the centrals so far
# (history[0] is central-0, history[-1] the current central).
Pull = Callable[[int, list[torch.nn.Module]], Bundle]


def run_stream(
    stream: Stream,
    base: Bundle,
    devices: list[Bundle],
    ood: OODSource,
    method: str,
    cfg: ConsolidationConfig,
    pull: Pull | None = None,
    progress: bool = False,
    log=print,
    keep_models: bool = False,
) -> dict:
    """Consolidate the devices one after another with ``method``; the accuracy matrix, metrics and timing.

    The consolidation at position t uses seed :func:`central.consolidate.step_seed` (cfg.seed, t), as
    ``central consolidate`` does for a stream of ``--incoming``. With ``pull``, device t (from the second
    on) is ``pull(t, history)`` instead of ``devices[t]``; its CPU time is reported apart.
    """
    ev = StreamEvaluator(stream, base.labels)
    T = len(devices)
    R, R_task = np.zeros((T, T)), np.zeros((T, T))
    central = Central.of(base)
    history = [base.model]
    cpu, wall, device_cpu, inits = [], [], [], []
    for t, dev in enumerate(devices):
        if pull is not None and t > 0:
            t0 = time.process_time()
            dev = pull(t, history)
            device_cpu.append(time.process_time() - t0)
        step_cfg = replace(cfg, seed=step_seed(cfg.seed, t))
        central, info = consolidate_step(central, dev, ood, method, step_cfg, progress, f"{method} {t + 1}/{T}")
        history.append(central.model)
        cpu.append(info["cpu_seconds"])
        wall.append(info["wall_seconds"])
        inits.append(info.get("student_init", {}).get("chosen"))
        R[t], R_task[t] = ev.row(central.model, central.classes)
        log(f"{method:>8} after {stream.experiences[t]['name']}: avg acc {R[t, : t + 1].mean():.3f} ({info['wall_seconds']:.0f} s)")
    model, classes = central.model, central.classes
    out = summarize(R)
    out["task_aware"] = summarize(R_task)
    out["final_accuracy_all_classes"] = ev.accuracy(model, stream.test, classes)
    out["cpu_seconds_per_consolidation"] = cpu
    out["wall_seconds_per_consolidation"] = wall
    if device_cpu:
        out["device_cpu_seconds"] = device_cpu
    if any(inits):
        out["student_init"] = inits  # per consolidation; ``auto`` resolves to previous or average
    out["model"], out["classes"] = model, classes
    if keep_models:
        out["models"] = history[1:]
    return out


def run_methods(stream: Stream, base: Bundle, devices: list[Bundle], ood: OODSource, methods: list[str],
                cfg: ConsolidationConfig, progress: bool = False, log=print) -> dict[str, dict]:
    """:func:`run_stream` for each method on the same devices; the reports without the models."""
    results = {}
    for m in methods:
        r = run_stream(stream, base, devices, ood, m, cfg, progress=progress, log=log)
        r.pop("model")
        r.pop("classes")
        results[m] = r
    return results


def matrix_table(matrix, names: list[str]) -> list[str]:
    """Markdown rows of an accuracy matrix: one row per consolidation, one column per experience."""
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    return lines + [f"| after {names[t]} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for t, row in enumerate(matrix)]


def heatmap(results: dict[str, dict], names: list[str], path: Path, title: str) -> None:
    """One accuracy-matrix heatmap per method, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(results)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        R = np.array(results[m]["matrix"])
        ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(R):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        ax.set_title(f"{m}: final avg {results[m]['final_avg_acc']:.2f}", fontsize=9)
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
        ax.set_yticks(range(len(names)), [f"after {n}" for n in names], fontsize=7)
        ax.set_xlabel("test on experience", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: None) + "\n")


def set_threads() -> None:
    # Small models on 2 cores: intra-op threads beyond the core count only add contention.
    import os

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
