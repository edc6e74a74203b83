"""Evaluate a bundle or an artifact kit on a data folder: one report for both."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.bundle import load_bundle
from edge_agent.evaluate import evaluate_kit, evaluate_logits, predict_logits
from edge_agent.train import load_local_data


def _experiences(data: Path, stream: Path | None) -> list[dict] | None:
    path = stream or (data.parent / "stream.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("experiences")


def evaluate_path(model: Path, data: Path, stream: Path | None = None) -> dict:
    """Report for a bundle file or a kit folder on ``data`` (its test split when it has one)."""
    if model.is_dir():
        return evaluate_kit(model, data, _experiences(data, stream))
    bundle = load_bundle(model)
    samples = load_local_data(data, bundle, split="testing")
    known = bundle.manifest.trained_classes or bundle.labels
    report = evaluate_logits(predict_logits(bundle.model, samples.x), bundle.labels, samples, known, _experiences(data, stream))
    report["known_classes"] = known
    report["model"] = {"id": bundle.id, "arch": bundle.manifest.arch, "method": bundle.manifest.method}
    return report
