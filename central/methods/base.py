"""The method registry and what every method receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from edge_agent.data.ood import OODSource
from edge_agent.models import EdgeModel


@dataclass
class Teacher:
    """A frozen model and the classes (indices into the global label list) it knows."""

    model: EdgeModel
    known: torch.Tensor  # bool [num_classes]


@dataclass
class ConsolidationConfig:
    """Settings of one consolidation (steps of ``batch_size`` OOD samples, Adam with cosine decay).

    Defaults were chosen on Split-Digits val; every alternative below is measured in
    ``benchmarks/results/dcl-ablations.md``.
    """

    steps: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    logit_loss: str = "mse"  # "mse" on raw logits, or "kl" with temperature
    temperature: float = 4.0
    student_init: str = "previous"  # "previous" central or "average" of previous and incoming
    target_norm: str = "none"  # "none" or "centre": per-teacher centring of logits before averaging
    pld_weight: float = 1.0
    projector: str = "linear"  # "linear" or "mlp"
    bn_mode: str = "train"  # "train": batch stats + update; "frozen": eval-mode BN; "reestimate": train, then re-estimate
    extra: dict = field(default_factory=dict)


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
