"""The Python API of a device app: load a kit, classify a camera frame or an audio buffer.

NumPy only (plus the kit's runtime, onnxruntime or LiteRT): it runs where torch
cannot.  Inputs go through exactly the preprocessing of ``edge-agent infer`` and
of training (:mod:`edge_agent.preprocess`, :mod:`edge_agent.audio.io`, the kit's
audio frontend).  See ``docs/api.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge_agent.inputs import InputSpec
from edge_agent.runtime import (
    ChecksumError,
    Kit,
    KitError,
    KitInputError,
    Prediction,
    audio_input,
    check_input,
    image_input,
    load_input,
    load_kit,
    open_runner,
    top_k,
)

__all__ = [
    "ChecksumError",
    "Classifier",
    "KitError",
    "KitInputError",
    "Prediction",
    "load",
]


class Classifier:
    """A verified kit with its runner open, ready to classify one input after another."""

    def __init__(self, kit: Kit, format: str | None = None, precision: str | None = None, num_threads: int | None = None):
        self.kit = kit
        self.runner = open_runner(kit, format=format, precision=precision, num_threads=num_threads)

    @property
    def labels(self) -> list[str]:
        """The model's label list (index ``i`` is logit ``i``)."""
        return list(self.kit.labels)

    @property
    def input_spec(self) -> InputSpec:
        """What the model eats: kind (image or audio), shape, normalization, audio frontend."""
        return self.kit.input_spec

    @property
    def kind(self) -> str:
        return self.kit.input_spec.kind

    @property
    def lineage(self) -> dict:
        """Where the model comes from: source bundle id, parents, method, version, trained classes."""
        m = self.kit.manifest
        keys = ("source_bundle_id", "parents", "method", "version", "trained_classes", "bundle_created_at", "created")
        return {k: m.get(k) for k in keys if k in m}

    @property
    def artifact(self) -> str:
        """The model file in use, as ``format/precision`` (e.g. ``onnx/int8``)."""
        return f"{self.runner.artifact.format}/{self.runner.artifact.precision}"

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw logits ``[B, K]`` of a model-ready batch ``[B, *input_spec.shape]`` (or one sample)."""
        y = self.runner.run(check_input(x, self.kit.input_spec))
        if not np.isfinite(y).all() or math.prod(y.shape) == 0:
            raise KitError("the model returned no or non-finite logits")
        return y

    def _top(self, x: np.ndarray, k: int) -> list[Prediction]:
        return top_k(self.logits(x)[0], self.kit.labels, k)

    def classify_image(self, frame: np.ndarray, k: int = 5) -> list[Prediction]:
        """Top-``k`` labels of a uint8 frame ``H x W`` or ``H x W x 3`` (RGB) or ``x 4`` (RGBA), any size."""
        return self._top(image_input(frame, self.kit.input_spec), k)

    def classify_audio(self, samples: np.ndarray, sample_rate: int, k: int = 5) -> list[Prediction]:
        """Top-``k`` labels of an audio buffer: float in [-1, 1] or int16, ``[n]`` or ``[n, channels]``, at ``sample_rate`` Hz."""
        return self._top(audio_input(samples, sample_rate, self.kit.input_spec), k)

    def classify_file(self, path: str | Path, k: int = 5) -> list[Prediction]:
        """Top-``k`` labels of an image, WAV or FLAC file: what ``edge-agent infer`` prints."""
        p = Path(path)
        if not p.is_file():
            raise KitInputError(f"input {p} does not exist")
        return self._top(load_input(p, self.kit.input_spec), k)


def load(path: str | Path, format: str | None = None, precision: str | None = None, num_threads: int | None = None) -> Classifier:
    """Load and verify (sha256) the kit at ``path`` and open its first artifact matching ``format``/``precision``."""
    return Classifier(load_kit(path), format=format, precision=precision, num_threads=num_threads)
