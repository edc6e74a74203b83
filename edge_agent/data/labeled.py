"""A labelled set of model-ready inputs: what every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DataError(ValueError):
    """Data that cannot be read or does not fit the model."""


@dataclass
class LabeledSet:
    """``x``: float32 ``[N, *input_shape]``; ``labels``: the class name of each sample."""

    x: torch.Tensor
    labels: list[str]

    def __post_init__(self):
        if len(self.labels) != self.x.shape[0]:
            raise DataError(f"{self.x.shape[0]} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        """Distinct class names, sorted."""
        return sorted(set(self.labels))

    def targets(self, label_list: list[str]) -> torch.Tensor:
        """Indices of each sample's label in ``label_list`` (the model's global label space)."""
        index = {name: i for i, name in enumerate(label_list)}
        unknown = sorted(set(self.labels) - index.keys())
        if unknown:
            raise DataError(
                f"labels not in the model's label list: {', '.join(unknown)} "
                f"(the model knows: {', '.join(label_list)})"
            )
        return torch.tensor([index[name] for name in self.labels], dtype=torch.long)

    def subset(self, idx: torch.Tensor | list[int]) -> LabeledSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return LabeledSet(self.x[idx], [self.labels[i] for i in idx.tolist()])
