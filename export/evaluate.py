"""Evaluate an artifact kit exactly as a bundle is evaluated: same data path, same report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from central.evaluate import evaluate_logits
from edge_agent.data.labeled import LabeledSet
from edge_agent.runtime import load_kit, open_runner


def _load_data(path: Path, kit) -> LabeledSet:
    spec = kit.input_spec
    if spec.kind == "audio":
        from edge_agent.audio.frontend import AudioFrontend
        from edge_agent.data.speech import load_speech_commands

        return load_speech_commands(path, AudioFrontend.from_dict(spec.frontend), split="testing", labels=kit.labels)
    from edge_agent.data.images import load_image_folder

    return load_image_folder(path, spec)


def evaluate_kit(
    kit_path: Path, data: Path, experiences: list[dict] | None = None, format: str | None = None, precision: str | None = None
) -> dict:
    """Accuracy report (see :func:`central.evaluate.evaluate_logits`) of a kit's artifact on ``data``."""
    kit = load_kit(kit_path)
    runner = open_runner(kit, format=format, precision=precision)
    samples = _load_data(Path(data), kit)
    x = samples.x.numpy()
    logits = [runner.run(x[i : i + 1]) for i in range(len(x))]  # batch 1: what a device runs
    known = kit.manifest.get("trained_classes") or kit.labels
    report = evaluate_logits(torch.from_numpy(np.concatenate(logits)), kit.labels, samples, known, experiences)
    report["known_classes"] = known
    report["model"] = {"kit": str(kit_path), "artifact": runner.artifact.file if hasattr(runner, "artifact") else None}
    return report
