"""``resnet-s``: a small ResNet for 1- or 3-channel images of about 28 to 32 pixels.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (2016), CIFAR-style: a 3x3 stem,
then three stages of basic blocks (two 3x3 convolutions with BatchNorm, and an identity shortcut, or a
strided 1x1 convolution where the shape changes), widths 32/64/128 with stride 2 at the start of stages
2 and 3, global average pooling to a 128-d latent and one linear head. With one block per stage and 10
classes it has about 0.3M parameters. Only Conv2d, BatchNorm2d, ReLU, an add and a mean: easy to export
to ONNX and int8 TFLite.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models.registry import EdgeModel, register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(EdgeModel):
    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 32, blocks: int = 1):
        super().__init__()
        if width < 1 or blocks < 1 or in_chans < 1:
            raise ValueError(f"resnet-s needs width, blocks and in_chans >= 1 (got {width}, {blocks}, {in_chans})")
        self.config = {"in_chans": in_chans, "width": width, "blocks": blocks}
        self.num_classes = num_classes
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.latent_dim = cin
        self.head = nn.Linear(self.latent_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model("resnet-s", default_shape=(1, 28, 28))
def resnet_s(num_classes: int, in_chans: int = 1, width: int = 32, blocks: int = 1) -> SmallResNet:
    """Small ResNet: three stages of ``blocks`` basic blocks, widths ``width`` x 1/2/4, latent ``4 * width``."""
    return SmallResNet(num_classes, in_chans=in_chans, width=width, blocks=blocks)
