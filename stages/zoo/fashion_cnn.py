"""A small classifier built the way the head-pose seed's model was: InstanceNorm and GELU.

RK1808-class NPUs run neither, so it reaches them only through module surgery
(InstanceNorm -> BatchNorm, GELU -> ReLU6) and fine-tuning; see conf/model/fashion_cnn_npu.yaml.
"""
from __future__ import annotations

import torch
from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.GELU())


class FashionCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(block(in_channels, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 4 * w), block(4 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def fashion_cnn(**kwargs: object) -> FashionCNN:
    return FashionCNN(**kwargs)  # type: ignore[arg-type]
