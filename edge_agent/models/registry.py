"""The registry behind :func:`create_model` and the interface every model shares."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., EdgeModel]] = {}


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


def register_model(name: str) -> Callable:
    """Decorator: ``@register_model("cnn-s")`` on a factory ``f(num_classes, **cfg)``."""

    def wrap(factory: Callable[..., EdgeModel]) -> Callable[..., EdgeModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def create_model(name: str, num_classes: int, **cfg) -> EdgeModel:
    """Build a registered model; ``cfg`` is the architecture config (e.g. ``in_chans``)."""
    try:
        factory = _REGISTRY[name] if isinstance(name, str) else None
        if factory is None:
            raise KeyError(name)
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownArchitectureError(f"unknown architecture {name!r} (known: {known})") from None
    model = factory(num_classes=num_classes, **cfg)
    model.arch = name
    return model


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
