"""Accuracy of a model or an artifact kit on a labelled set: overall, per class, per experience.

Class-incremental accuracy (the default) takes the argmax over every class the
model was trained on, with no task id; task-aware accuracy restricts the argmax
to the classes of the sample's own experience.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge_agent.data.labeled import LabeledSet


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits ``[N, K]`` of ``model`` in eval mode on ``x``, ``batch`` inputs at a time."""
    model.eval()
    return torch.cat([model(xb) for xb in x.split(batch)]) if len(x) else torch.zeros(0)


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def evaluate_logits(
    logits: torch.Tensor,
    labels: list[str],
    data: LabeledSet,
    known: list[str] | None = None,
    experiences: list[dict] | None = None,
) -> dict:
    """Report dict: ``accuracy`` (0..1), ``n``, ``per_class``, and ``per_experience`` when given."""
    y = data.targets(labels)
    mask = torch.ones(len(labels), dtype=torch.bool)
    if known:
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[[labels.index(c) for c in known]] = True
    pred = logits.masked_fill(~mask, float("-inf")).argmax(1)
    report: dict = {"accuracy": _acc(pred, y), "n": len(y), "per_class": {}}
    for i, name in enumerate(labels):
        sel = y == i
        if sel.any():
            report["per_class"][name] = {"accuracy": _acc(pred[sel], y[sel]), "n": int(sel.sum())}
    if experiences:
        report["per_experience"] = {}
        for exp in experiences:
            cls = [labels.index(c) for c in exp["classes"] if c in labels]
            sel = torch.isin(y, torch.tensor(cls))
            if not sel.any():
                continue
            task_mask = torch.zeros(len(labels), dtype=torch.bool)
            task_mask[cls] = True
            task_pred = logits[sel].masked_fill(~task_mask, float("-inf")).argmax(1)
            report["per_experience"][exp["name"]] = {
                "accuracy": _acc(pred[sel], y[sel]),
                "task_aware_accuracy": _acc(task_pred, y[sel]),
                "n": int(sel.sum()),
            }
    return report


def evaluate_model(
    model: torch.nn.Module,
    labels: list[str],
    data: LabeledSet,
    known: list[str] | None = None,
    experiences: list[dict] | None = None,
) -> dict:
    """:func:`evaluate_logits` of ``model``'s own logits on ``data``."""
    return evaluate_logits(predict_logits(model, data.x), labels, data, known, experiences)


def evaluate_bundle(bundle_path: Path, data: Path, experiences: list[dict] | None = None) -> dict:
    """Accuracy report (see :func:`evaluate_logits`) of a bundle's torch model on ``data`` (its test split if it has one)."""
    from edge_agent.bundle import load_bundle
    from edge_agent.train import load_local_data

    bundle = load_bundle(bundle_path)
    samples = load_local_data(data, bundle, split="testing")
    known = bundle.manifest.trained_classes or bundle.labels
    report = evaluate_logits(predict_logits(bundle.model, samples.x), bundle.labels, samples, known, experiences)
    report["known_classes"] = known
    report["model"] = {"id": bundle.id, "arch": bundle.manifest.arch, "method": bundle.manifest.method}
    return report


def _load_kit_data(path: Path, spec, labels: list[str]) -> LabeledSet:
    if spec.kind == "audio":
        from edge_agent.audio.frontend import AudioFrontend
        from edge_agent.data.speech import load_speech_commands

        return load_speech_commands(path, AudioFrontend.from_dict(spec.frontend), split="testing", labels=labels)
    from edge_agent.data.images import load_image_folder

    return load_image_folder(path, spec)


def evaluate_kit(
    kit_path: Path, data: Path, experiences: list[dict] | None = None, format: str | None = None, precision: str | None = None
) -> dict:
    """Accuracy report (see :func:`evaluate_logits`) of one artifact of a kit on ``data``, run batch 1 as a device runs it."""
    from edge_agent.runtime import load_kit, open_runner

    kit = load_kit(kit_path)
    runner = open_runner(kit, format=format, precision=precision)
    samples = _load_kit_data(Path(data), kit.input_spec, kit.labels)
    x = samples.x.numpy()
    logits = [runner.run(x[i : i + 1]) for i in range(len(x))]
    known = kit.manifest.get("trained_classes") or kit.labels
    report = evaluate_logits(torch.from_numpy(np.concatenate(logits)), kit.labels, samples, known, experiences)
    report["known_classes"] = known
    report["model"] = {"kit": str(kit_path), "artifact": runner.artifact.file if hasattr(runner, "artifact") else None}
    return report
