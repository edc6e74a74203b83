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

    def weights(self, mode: str) -> torch.Tensor:
        """Per-class weight of this teacher's logits in the target: ``equal`` (1 where known) or ``support``."""
        if mode == "equal" or self.support is None:
            return self.known.float()
        if mode == "support":
            return self.support.float() * self.known
        raise ValueError(f"unknown teacher weighting {mode!r} (equal or support)")


# Defaults that differ by the models' input kind: a ``ConsolidationConfig`` field left at None takes
# its kind's value (:meth:`ConsolidationConfig.for_input`). Image values were chosen on Split-Digits
# val, DAC with the same central-0 device models, seeds 0 / 1 (benchmarks/results/dcl-split-digits-devlog.md):
# 0.631 / 0.642 before; with the darker, framed OOD patches and lr 3e-3, 0.720 / 0.725; with centred
# targets on top, 0.737 / 0.759. With bce-noise devices (edge_agent.train.DEVICE_LOSS), 0.792 / 0.786 at
# 500 steps and 0.842 / 0.830 at 1000. With bce-jigsaw devices (session 8, seeds 0-3), centred targets give
# 0.849 / 0.832 / 0.821 / 0.804 and raw targets 0.877 / 0.866 / 0.877 / 0.860: their logits share one scale, which
# centring throws away. Audio keeps the values its KWS results were measured with.
KIND_DEFAULTS: dict[str, dict[str, object]] = {
    "image": {"steps": 1000, "lr": 3e-3, "target_norm": "none"},
    "audio": {"steps": 500, "lr": 1e-3, "target_norm": "none"},
}


@dataclass
class ConsolidationConfig:
    """Settings of one consolidation (steps of ``batch_size`` OOD samples, Adam with cosine decay).

    Defaults were chosen on Split-Digits val; the main alternatives are measured in
    ``benchmarks/results/dcl-ablations.md`` (session-8 defaults: bce-jigsaw devices, raw targets) and
    ``dcl-ablations-masked-ce.md`` (earlier ones).
    """

    steps: int | None = None  # None: the input kind's default (KIND_DEFAULTS)
    batch_size: int = 128
    lr: float | None = None  # None: the input kind's default (KIND_DEFAULTS)
    seed: int = 0
    logit_loss: str = "mse"  # "mse" on raw logits, or "kl" with temperature
    temperature: float = 4.0
    # "previous" central, "average" of previous and incoming, or "auto": the average when it already
    # matches the teachers better on OOD batches (the device fine-tuned a central version), else the
    # previous central. On KWS-domain val with devices that pulled the latest central, DAC went from
    # 0.895 / 0.910 (previous) to 0.950 / 0.958 (auto); with unrelated devices auto keeps "previous".
    student_init: str = "auto"
    # "none" or "centre": per-teacher centring of logits before averaging (a masked-CE device only
    # learned logit differences among its own classes); None: the input kind's default (KIND_DEFAULTS)
    target_norm: str | None = None
    # "equal": per class, the mean over the teachers that know it; "support": weighted by how
    # many devices each teacher holds for that class, i.e. a running mean over devices. Chosen on
    # KWS-domain val (KD, 2 seeds: 0.675/0.725 equal, 0.738/0.762 support); identical when no
    # class is shared (Split-Digits, KWS-class).
    teacher_weighting: str = "support"
    pld_weight: float = 1.0
    projector: str = "linear"  # "linear" or "mlp"
    # DeepInversion-style inputs (central/methods/dream.py): Adam steps on each OOD batch towards
    # the teachers' BatchNorm statistics; 0 uses the augmented OOD batch as it is.
    dream_steps: int = 0
    dream_lr: float = 0.1
    dream_share: float = 0.5  # fraction of each batch drawn from the dreamed pools
    dream_ce: float = 1.0  # weight of cross-entropy on the class each dreamed sample was pulled towards
    bn_mode: str = "train"  # "train": batch stats + update; "frozen": eval-mode BN; "reestimate": train, then re-estimate
    extra: dict = field(default_factory=dict)

    def for_input(self, kind: str) -> ConsolidationConfig:
        """This config with every field left at None set to the default for ``kind`` models (image or audio)."""
        defaults = KIND_DEFAULTS.get(kind, KIND_DEFAULTS["image"])
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def check(self) -> None:
        """Fail early, with the accepted values, on a setting no method understands."""
        choices = {
            "logit_loss": ("mse", "kl"),
            "student_init": ("previous", "average", "auto"),
            "target_norm": (None, "none", "centre"),
            "teacher_weighting": ("equal", "support"),
            "projector": ("linear", "mlp"),
            "bn_mode": ("train", "frozen", "reestimate"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(a for a in allowed if a is not None)
                raise ValueError(f"{name.replace('_', '-')} must be one of {shown}, not {getattr(self, name)!r}")
        if (self.steps is not None and self.steps < 1) or self.batch_size < 1 or self.dream_steps < 0:
            raise ValueError("steps and batch size must be at least 1, dream steps at least 0")
        if not 0 < self.dream_share < 1:
            raise ValueError(f"dream share must be between 0 and 1, not {self.dream_share}")


class Method(Protocol):
    name: str

    def __call__(
        self,
        previous: Teacher,
        incoming: Teacher,
        ood: OODSource,
        cfg: ConsolidationConfig,
        progress: Callable[[int, dict], None] | None = None,
    ) -> EdgeModel: ...


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown consolidation method {name!r} (known: {', '.join(list_methods())})") from None


def list_methods() -> list[str]:
    return sorted(_METHODS)
