"""GhostNetV2 (Tang et al., NeurIPS 2022) with DFC attention, sized for 32x32 inputs.

Ghost modules make half their channels with a 1x1 conv and the other half with a cheap depthwise
conv. DFC attention gates them with a decoupled fully-connected map: downsample x2, 1x1 conv,
1x5 and 5x1 depthwise convs, sigmoid, upsample x2. The seed's Pi port kept the upsample bilinear;
NPUs without Resize need it rewritten (Resize -> ConvTranspose), or swapped to nearest by surgery.
The upsample is an ``nn.Upsample`` module so module surgery can find it.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, (kh, kw), stride, (kh // 2, kw // 2), groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DFCAttention(nn.Module):
    """The decoupled fully-connected attention map, computed at half resolution."""

    def __init__(self, cin: int, cout: int, upsample: str) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2)
        self.fc = nn.Sequential(conv_bn(cin, cout, 1, relu=False),
                                conv_bn(cout, cout, (1, 5), groups=cout, relu=False),
                                conv_bn(cout, cout, (5, 1), groups=cout, relu=False))
        self.gate = nn.Sigmoid()
        self.upsample = nn.Upsample(scale_factor=2, mode=upsample,
                                    align_corners=False if upsample == "bilinear" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.gate(self.fc(self.pool(x))))


class GhostModuleV2(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool, attention: bool, upsample: str) -> None:
        super().__init__()
        primary = math.ceil(cout / 2)
        self.trim = cout if 2 * primary != cout else None  # odd widths drop the extra cheap channel
        self.primary = conv_bn(cin, primary, 1, relu=relu)
        self.cheap = conv_bn(primary, primary, 3, groups=primary, relu=relu)
        self.attention = DFCAttention(cin, cout, upsample) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.primary(x)
        out = torch.cat([y1, self.cheap(y1)], dim=1)
        if self.trim is not None:
            out = out[:, :self.trim]
        return out if self.attention is None else out * self.attention(x)


class GhostBottleneckV2(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, attention: bool,
                 upsample: str) -> None:
        super().__init__()
        self.ghost1 = GhostModuleV2(cin, mid, relu=True, attention=attention, upsample=upsample)
        self.down = conv_bn(mid, mid, kernel, stride, groups=mid, relu=False) if stride > 1 else nn.Identity()
        self.ghost2 = GhostModuleV2(mid, cout, relu=False, attention=False, upsample=upsample)
        self.shortcut = (nn.Identity() if cin == cout and stride == 1 else
                         nn.Sequential(conv_bn(cin, cin, kernel, stride, groups=cin, relu=False),
                                       conv_bn(cin, cout, 1, relu=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.down(self.ghost1(x))) + self.shortcut(x)


# kernel, mid, out, stride, DFC attention: GhostNetV2's first stages, for 32x32 inputs. The stem
# halves the resolution (32 -> 16), then 16 -> 8 -> 4; DFC attention works at half of that.
BLOCKS = [(3, 32, 16, 1, False), (3, 48, 24, 2, False), (3, 72, 24, 1, True), (5, 96, 40, 2, True),
          (3, 120, 40, 1, True)]


class GhostNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 upsample: str = "bilinear", head: int = 128) -> None:
        super().__init__()

        def ch(c: int) -> int:  # even channel counts, so ghost halves need no slice
            return max(8, 2 * round(c * width / 2))

        self.stem = conv_bn(in_channels, ch(16), 3, stride=2)
        blocks, cin = [], ch(16)
        for kernel, mid, out, stride, attention in BLOCKS:
            blocks.append(GhostBottleneckV2(cin, ch(mid), ch(out), kernel, stride, attention, upsample))
            cin = ch(out)
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


def ghostnetv2(**kwargs: object) -> GhostNetV2:
    return GhostNetV2(**kwargs)  # type: ignore[arg-type]
