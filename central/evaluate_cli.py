"""Evaluate a bundle or an artifact kit on a data folder: one report for both."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.evaluate import evaluate_bundle, evaluate_kit


def _experiences(data: Path, stream: Path | None) -> list[dict] | None:
    path = stream or (data.parent / "stream.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("experiences")


def evaluate_path(model: Path, data: Path, stream: Path | None = None) -> dict:
    """Report for a bundle file or a kit folder on ``data`` (its test split when it has one)."""
    if model.is_dir():
        return evaluate_kit(model, data, _experiences(data, stream))
    return evaluate_bundle(model, data, _experiences(data, stream))
