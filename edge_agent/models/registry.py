"""The registry behind :func:`create_model` and the interface every model shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from edge_agent.inputs import InputSpec


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., EdgeModel]
    input_kind: str  # "image" or "audio"
    default_shape: tuple[int, int, int] | None  # image models; audio models take the frontend's


_REGISTRY: dict[str, _Entry] = {}


class UnknownArchitectureError(ValueError):
    """Raised for an architecture name that no model registered."""


class EdgeModel(nn.Module):
    """Base class: subclasses build ``self.head`` and implement ``forward_features``.

    Subclasses set ``latent_dim`` and ``num_classes`` and keep their constructor
    arguments in ``self.config`` (plain JSON data), which is what a bundle stores.
    """

    latent_dim: int
    num_classes: int
    config: dict

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool of a ``[B, C, H, W]`` feature map to ``[B, C]``."""
        return features.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.pool(features)
        return z if pre_logits else self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def latent_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.forward_head(self.forward_features(x), pre_logits=True)
        return z, self.head(z)


def register_model(name: str, input_kind: str = "image", default_shape: tuple[int, int, int] | None = (1, 16, 16)) -> Callable:
    """Decorator: ``@register_model("cnn-s")`` on a factory ``f(num_classes, **cfg)``.

    ``input_kind`` and ``default_shape`` give the input a fresh model of this
    architecture takes (:func:`default_input_spec`); audio models take the
    default audio frontend's shape.
    """
    if input_kind not in ("image", "audio"):
        raise ValueError(f"input_kind must be image or audio, not {input_kind!r}")

    def wrap(factory: Callable[..., EdgeModel]) -> Callable[..., EdgeModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(factory, input_kind, default_shape if input_kind == "image" else None)
        return factory

    return wrap


def _entry(name: str) -> _Entry:
    try:
        entry = _REGISTRY[name] if isinstance(name, str) else None
        if entry is None:
            raise KeyError(name)
        return entry
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownArchitectureError(f"unknown architecture {name!r} (known: {known})") from None


def create_model(name: str, num_classes: int, **cfg) -> EdgeModel:
    """Build a registered model; ``cfg`` is the architecture config (e.g. ``in_chans``)."""
    model = _entry(name).factory(num_classes=num_classes, **cfg)
    model.arch = name
    return model


def default_input_spec(name: str, input_shape: tuple[int, int, int] | None = None) -> InputSpec:
    """The input a fresh ``name`` model takes: images normalised to [-1, 1], audio through the default frontend."""
    from edge_agent.inputs import InputSpec

    entry = _entry(name)
    if entry.input_kind == "audio":
        from edge_agent.audio.frontend import AudioFrontend

        fe = AudioFrontend()
        if input_shape is not None and tuple(input_shape) != tuple(fe.input_shape):
            raise ValueError(f"{name} takes the audio frontend's shape {'x'.join(map(str, fe.input_shape))}")
        return InputSpec("audio", fe.input_shape, frontend=fe.to_dict())
    shape = tuple(input_shape or entry.default_shape)
    return InputSpec("image", shape, mean=(0.5,) * shape[0], std=(0.5,) * shape[0])


def remap_head(model: EdgeModel, labels: list[str], new_labels: list[str]) -> EdgeModel:
    """A copy of ``model`` whose head answers ``new_labels``: each label keeps its row, new labels get new rows.

    The old classes' logits are unchanged. A new row is drawn as a fresh head's row
    (``nn.Linear``'s uniform bound), from a generator seeded by the label's name, so
    the same label gets the same row on every machine. (Zero rows are learned at a
    smaller logit scale than the old classes and lose to them after consolidation:
    0.01 against 0.85 on the new digits of ``tests/test_cli_round.py``'s stream.)
    ``model`` itself is returned when the lists are equal.
    """
    if list(labels) == list(new_labels):
        return model
    import copy
    import math
    import zlib

    index = {c: i for i, c in enumerate(labels)}
    old = model.head
    out = copy.deepcopy(model)
    head = nn.Linear(old.in_features, len(new_labels), bias=old.bias is not None)
    bound = 1 / math.sqrt(old.in_features)
    with torch.no_grad():
        for j, c in enumerate(new_labels):
            if c in index:
                head.weight[j] = old.weight[index[c]]
                if old.bias is not None:
                    head.bias[j] = old.bias[index[c]]
                continue
            g = torch.Generator().manual_seed(zlib.crc32(c.encode()))
            head.weight[j] = (torch.rand(old.in_features, generator=g) * 2 - 1) * bound
            if old.bias is not None:
                head.bias[j] = (float(torch.rand((), generator=g)) * 2 - 1) * bound
    out.head = head.to(old.weight.device, old.weight.dtype)
    out.num_classes = len(new_labels)
    return out


def check_sizes(arch: str, **sizes) -> None:
    """Every size an integer within ``[low, 2**20]`` (``low`` is 1, or 0 for ``blocks``); ValueError naming it.

    Configs come from files (a bundle's manifest): a float, a bool, a string or an
    absurd size must fail here with a message, not deep inside torch.
    """
    for key, value in sizes.items():
        low = 0 if key == "blocks" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 2**20:
            raise ValueError(f"{arch} needs an integer {key} in [{low}, {2**20}], not {value!r:.40}")


def list_models() -> list[str]:
    return sorted(_REGISTRY)
