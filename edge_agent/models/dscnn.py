"""``ds-cnn``: the depthwise-separable CNN for keyword spotting of "Hello Edge".

Zhang, Suda, Lai, Chandra, "Hello Edge: Keyword Spotting on
Microcontrollers" (2017), DS-CNN small: one ordinary convolution with a
10x4 (time x frequency) kernel and stride 2, then depthwise-separable blocks
(3x3 depthwise + 1x1 pointwise, each followed by BatchNorm and ReLU), global
average pooling and one linear layer.  With the defaults (64 channels, four
blocks) and 10 classes it has about 23k parameters.

Input: ``[B, 1, frames, n_mels]`` (49 x 40 from the default
:class:`edge_agent.audio.AudioFrontend`).  Only Conv2d, BatchNorm2d, ReLU and
a mean keep the graph easy to export to ONNX and int8 TFLite.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models.registry import EdgeModel, check_sizes, register_model


def _conv_bn_relu(cin: int, cout: int, kernel, stride, padding, groups: int = 1) -> list[nn.Module]:
    # No conv bias: the BatchNorm that follows has its own shift.
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DSCNN(EdgeModel):
    """DS-CNN: conv(10x4, stride 2) then ``blocks`` depthwise-separable blocks of ``width`` channels."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 64, blocks: int = 4):
        super().__init__()
        check_sizes("ds-cnn", num_classes=num_classes, in_chans=in_chans, width=width, blocks=blocks)
        self.config = {"in_chans": in_chans, "width": width, "blocks": blocks}
        self.num_classes = num_classes
        # Padding (4, 1) keeps a 49x40 input at 24x20 after the stride-2 stem:
        # the paper's "same" padding without asymmetric pads, which TFLite
        # would otherwise need an extra Pad op for.
        layers = _conv_bn_relu(in_chans, width, (10, 4), (2, 2), (4, 1))
        for _ in range(blocks):
            layers += _conv_bn_relu(width, width, 3, 1, 1, groups=width)  # depthwise
            layers += _conv_bn_relu(width, width, 1, 1, 0)  # pointwise
        self.features = nn.Sequential(*layers)
        self.latent_dim = width
        self.head = nn.Linear(self.latent_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("ds-cnn", input_kind="audio")
def ds_cnn(num_classes: int, in_chans: int = 1, width: int = 64, blocks: int = 4) -> DSCNN:
    """DS-CNN (small) for log-mel inputs ``[B, in_chans, frames, n_mels]``."""
    return DSCNN(num_classes, in_chans=in_chans, width=width, blocks=blocks)
