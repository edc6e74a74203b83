"""A fresh central model: the root of every lineage."""

from __future__ import annotations

from pathlib import Path

import torch

from edge_agent.bundle import new_manifest, save_bundle
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model


def read_labels(path: str | Path) -> list[str]:
    """One label per line (UTF-8, a byte-order mark allowed); ``#`` lines are comments.

    A blank or repeated line is refused with its line number.
    """
    from edge_agent.data.labeled import read_lines

    labels = read_lines(path, "labels")
    if not labels:
        raise ValueError(f"{path} has no labels (one per line)")
    return labels


def default_input_spec(arch: str, input_shape: tuple[int, int, int] | None) -> InputSpec:
    """Audio models take their input shape from the default audio frontend."""
    if arch == "ds-cnn":
        from edge_agent.audio.frontend import AudioFrontend

        fe = AudioFrontend()
        if input_shape is not None and tuple(input_shape) != tuple(fe.input_shape):
            raise ValueError(f"ds-cnn takes the frontend's shape {'x'.join(map(str, fe.input_shape))}")
        return InputSpec("audio", fe.input_shape, frontend=fe.to_dict())
    shape = input_shape or (1, 16, 16)
    c = shape[0]
    return InputSpec("image", shape, mean=(0.5,) * c, std=(0.5,) * c)


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
