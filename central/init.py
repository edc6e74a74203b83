"""A fresh central model: the root of every lineage."""

from __future__ import annotations

from pathlib import Path

import torch

from edge_agent.bundle import new_manifest, save_bundle
from edge_agent.models import create_model, default_input_spec


def read_labels(path: str | Path) -> list[str]:
    """One label per line (UTF-8, a byte-order mark allowed); ``#`` lines are comments.

    A blank or repeated line is refused with its line number.
    """
    from edge_agent.data.labeled import read_lines

    labels = read_lines(path, "labels")
    if not labels:
        raise ValueError(f"{path} has no labels (one per line)")
    return labels


def init_central(
    arch: str, labels: list[str], out: str | Path, input_shape: tuple[int, int, int] | None = None, seed: int = 0, **cfg
) -> str:
    """Create a randomly initialised central bundle; returns its id."""
    spec = default_input_spec(arch, input_shape)
    torch.manual_seed(seed)
    if spec.kind == "image":
        cfg.setdefault("in_chans", spec.channels)
    model = create_model(arch, num_classes=len(labels), **cfg)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *spec.shape))  # fail now, not on a device, if the shape does not fit
    manifest = new_manifest(model, labels, spec, trained_classes=[], method="init", extra={"version": 0, "seed": seed})
    return save_bundle(model, manifest, out)
