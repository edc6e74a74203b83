"""``cnn-s``: a small VGG-style CNN for 1- or 3-channel images from 8x8 to 64x64."""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models.registry import EdgeModel, check_sizes, register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(EdgeModel):
    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32):
        super().__init__()
        check_sizes("cnn-s", num_classes=num_classes, in_chans=in_chans, width=width)
        self.config = {"in_chans": in_chans, "width": width}
        self.num_classes = num_classes
        w = width
        # Pools only between blocks: an 8x8 input still leaves a 2x2 map.
        self.features = nn.Sequential(
            _block(in_chans, w),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
        )
        self.latent_dim = 4 * w
        self.head = nn.Linear(self.latent_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("cnn-s")
def cnn_s(num_classes: int, in_chans: int = 1, width: int = 32) -> SmallCNN:
    return SmallCNN(num_classes, in_chans=in_chans, width=width)
