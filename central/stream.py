"""Run a continual-learning stream: device training, then consolidation after each device.

Every method consolidates the *same* device models (trained once, through the
same code path as ``edge-agent train``), so methods differ only in how they
consolidate. Used by ``central demo`` and ``benchmarks/dcl.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from central.consolidate import consolidate_step
from central.evaluate import evaluate_model
from central.methods import ConsolidationConfig
from central.metrics import summarize
from edge_agent.bundle import Bundle, load_bundle
from edge_agent.data.labeled import LabeledSet
from edge_agent.data.ood import OODSource
from edge_agent.train import TrainConfig, train_bundle


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


def run_method(
    stream: Stream,
    base: Bundle,
    devices: list[Bundle],
    ood: OODSource,
    method: str,
    cfg: ConsolidationConfig,
    progress: bool = True,
    log=print,
) -> dict:
    """Consolidate the devices one after another with ``method``; return matrix, metrics and timing."""
    T = len(devices)
    R = np.zeros((T, T))
    R_task = np.zeros((T, T))
    model, classes, support = base.model, list(base.manifest.trained_classes), None
    cpu = []
    for t, dev in enumerate(devices):
        step_cfg = ConsolidationConfig(**{**asdict(cfg), "seed": cfg.seed + t})
        model, classes, timing = consolidate_step(
            model, classes, dev, ood, method, step_cfg, progress, f"{method} {t + 1}/{T}", support
        )
        support = timing["class_support"]
        cpu.append(timing["cpu_seconds"])
        rep = evaluate_model(model, base.labels, stream.test, known=classes, experiences=stream.experiences)
        for j, e in enumerate(stream.experiences):
            pe = rep["per_experience"].get(e["name"], {})
            R[t, j] = pe.get("accuracy", 0.0)
            R_task[t, j] = pe.get("task_aware_accuracy", 0.0)
        log(f"{method:>6} after {dev.manifest.trained_classes}: avg acc {R[t, : t + 1].mean():.3f}")
    out = summarize(R)
    out["task_aware"] = summarize(R_task)
    out["final_accuracy_all_classes"] = rep["accuracy"]
    out["cpu_seconds_per_consolidation"] = cpu
    out["model"] = model
    return out


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
