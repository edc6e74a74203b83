"""Accuracy of a model on a labelled set: overall, per class, per experience.

Class-incremental accuracy (the default) takes the argmax over every class the
model was trained on, with no task id; task-aware accuracy restricts the argmax
to the classes of the sample's own experience.
"""

from __future__ import annotations

import torch

from edge_agent.data.labeled import LabeledSet


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
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
    return evaluate_logits(predict_logits(model, data.x), labels, data, known, experiences)
