"""The method registry and what every method receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from edge_agent.data.ood import OODSource
from edge_agent.models import EdgeModel


@dataclass
class Teacher:
    """A frozen model and the classes (indices into the global label list) it knows."""

    model: EdgeModel
    known: torch.Tensor  # bool [num_classes]
    # float [num_classes]: how many device models stand behind each known class (the
    # previous central after k domain devices holds k); None means one per known class.
    support: torch.Tensor | None = None

    def weights(self) -> torch.Tensor:
        """Per-class weight of this teacher's logits in a target: the devices behind each known class.

        A running mean over devices: after k domain devices the previous central counts k times and the
        new device once. Identical to equal weights when no class is shared (class-incremental streams).
        """
        if self.support is None:
            return self.known.float()
        return self.support.float() * self.known


# Defaults that differ by the models' input kind: a ``ConsolidationConfig`` field left at None takes its
# kind's value (:meth:`ConsolidationConfig.for_input`). Image values were chosen on Split-Digits val and audio
# values on the KWS streams (benchmarks/results/dcl/dcl-split-digits-devlog.md, dcl-kws-devlog.md); BatchNorm on
# KWS-domain val for audio and on Split-Digits and Split Fashion-MNIST val for images (dcl-split-fashion-devlog.md).
KIND_DEFAULTS: dict[str, dict[str, object]] = {
    "image": {"steps": 1000, "lr": 3e-3, "batchnorm": "train"},
    "audio": {"steps": 500, "lr": 1e-3, "batchnorm": "frozen"},
}
STUDENT_INITS = ("previous", "average", "auto")
# train: the student's BatchNorm normalises each OOD batch and its running statistics follow the OOD data.
# frozen: BatchNorm in eval mode (scale and shift still learn); the statistics stay those of the real data
# the student's starting point was trained on.
BATCHNORM_MODES = ("train", "frozen")


@dataclass
class ConsolidationConfig:
    """The settings a user tunes for one consolidation (steps of ``batch_size`` OOD samples, Adam, cosine decay).

    Everything else about a method (its logit loss, how targets are weighted, its projectors) is the
    method's own; benchmark variants change it by subclassing (``benchmarks/variants.py``).
    """

    steps: int | None = None  # None: the input kind's default (KIND_DEFAULTS)
    batch_size: int = 128
    lr: float | None = None  # None: the input kind's default (KIND_DEFAULTS)
    seed: int = 0
    pld_weight: float = 1.0  # dac: weight of the projected latent loss
    # "previous" central, "average" of previous and incoming, or "auto": the average when it already matches
    # the teachers better on OOD batches (the device fine-tuned a central version), else the previous central.
    student_init: str = "auto"
    batchnorm: str | None = None  # BATCHNORM_MODES; None: the input kind's default (KIND_DEFAULTS)
    # Signed-gradient steps that pull half of each OOD batch towards a class one teacher knows (0: plain OOD;
    # central.methods.steer). 2 was chosen on both KWS val streams and both image val streams, 2 seeds each
    # (benchmarks/results/dcl/dcl-kws-devlog.md, dcl-split-fashion-devlog.md).
    steer: int = 2

    def for_input(self, kind: str) -> ConsolidationConfig:
        """This config with every field left at None set to the default for ``kind`` models (image or audio)."""
        defaults = KIND_DEFAULTS.get(kind, KIND_DEFAULTS["image"])
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def check(self) -> None:
        """Fail early, with the accepted values, on a setting no method understands."""
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"student-init must be one of {', '.join(STUDENT_INITS)}, not {self.student_init!r}")
        if self.batchnorm is not None and self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, not {self.batchnorm!r}")
        if self.steer < 0:
            raise ValueError(f"steer must be 0 (off) or a number of steps, not {self.steer}")
        if (self.steps is not None and self.steps < 1) or self.batch_size < 1:
            raise ValueError("steps and batch size must be at least 1")
        if (self.lr is not None and not self.lr > 0) or not self.pld_weight >= 0:
            raise ValueError("the learning rate must be positive and the PLD weight at least 0")


@dataclass
class Consolidated:
    """What a method returns: the new central model and what it decided on the way (recorded in the lineage)."""

    model: EdgeModel
    info: dict = field(default_factory=dict)


class Method(Protocol):
    name: str
    summary: str  # one line for `central methods`

    def __call__(
        self,
        previous: Teacher,
        incoming: Teacher,
        ood: OODSource,
        cfg: ConsolidationConfig,
        progress: Callable[[int, dict], None] | None = None,
    ) -> Consolidated: ...


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make ``method`` available by its ``name`` (``central consolidate --method NAME``)."""
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown consolidation method {name!r} (known: {', '.join(list_methods())})") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)
