"""ResNet-18 (He et al. 2016) with a CIFAR or ImageNet stem and a width multiplier.

The CIFAR stem (3×3 conv, stride 1, no max-pool) is the usual choice for 32×32
inputs; the ImageNet stem (7×7 stride-2 conv + max-pool) is what the authors'
released code uses at 224×224. ``width`` scales every stage's channels so the CPU
profile can train a narrow net in minutes; ``width=1`` is the standard 512-d net.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 encoder: image batch → globally average-pooled features (``out_dim``)."""

    def __init__(self, stem: str = "cifar", width: float = 1.0, zero_init_residual: bool = False) -> None:
        super().__init__()
        channels = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, channels[0], 7, 2, 3, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1))
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        layers: list[nn.Module] = []
        cin = channels[0]
        for i, cout in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(self.stem(x))).flatten(1)
