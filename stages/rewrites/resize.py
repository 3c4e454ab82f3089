"""Replace Resize (upsampling by integer factors on NCHW) with depthwise ConvTranspose.

Why: the Raspberry Pi 5 NPU firmware has ConvTranspose but no Resize, and an integer-factor
nearest or half-pixel bilinear upsample is a fixed-kernel transposed convolution per channel.

resize_nearest_to_convtranspose (exact)
    Resize mode=nearest, integer scales sH, sW (N and C scale 1) -> ConvTranspose with a
    [C, 1, sH, sW] kernel of ones, strides [sH, sW], group C. Accepted only when the node's
    coordinate_transformation_mode / nearest_mode map every output index j to source index
    floor(j / s); that mapping is computed numerically (float32, as onnxruntime does) for the
    static input length, or for every length 1..16 when the length is not static.
    (asymmetric+floor, which PyTorch exports, and half_pixel+round_prefer_* pass; align_corners fails.)

resize_bilinear_to_convtranspose
    Resize mode=linear, integer scales, whose 1-D interpolation matrix equals half-pixel bilinear
    with clamped source coordinates (half_pixel and pytorch_half_pixel pass, align_corners and
    asymmetric do not; checked numerically like the nearest case). Per axis the kernel is
    h(m) = max(0, 1 - |m + 1/2 - s/2| / s) for m = -s//2 .. K - 1 - s//2, K = 2s - s % 2
    (s=2: taps [0.25, 0.75, 0.75, 0.25], K=4); the 2-D kernel is the outer product. Param `border`:
      edge (default): Pad(mode=edge, 1 px per side) -> ConvTranspose(stride s, pads s + s//2
          on both sides; s=2: pads [3, 3, 3, 3]). Exact up to float rounding. Adds a Pad node.
      zero: ConvTranspose(stride s, pads s//2; s=2: pads [1, 1, 1, 1]), no Pad. Outputs whose
          source coordinate the Resize clamps (the outer s//2 rows and columns on each side) come
          out scaled by (1 - dH)(1 - dW), d = (s - 1 - 2j) / (2s) the clamp distance at output
          index j from that border (0 inside). So |error| = (1 - (1-dH)(1-dW)) |y| <= that factor
          times max|x|: for s=2, <= 0.25 max|x| on the edge rows and columns and <= 0.4375 max|x|
          at the four corner pixels; for any s, < 0.5 max|x| on edges, < 0.75 max|x| at corners.
          Everything else is exact.
      rescale: zero, then Mul by the constant map 1 / ((1-dH)(1-dW)): exact up to float rounding
          with only ConvTranspose + Mul (no Pad); needs static H and W (the map is [1,1,sH*H,sW*W]).

Both rewrites take param `strict` (default false): a Resize of their mode that they cannot
convert (non-integer or non-constant scale, unknown channel count, an unmatched coordinate mode)
is left in place and the target's operator check reports it; with strict: true it is a BuildError
naming the node and the attribute. Resizes of other modes (e.g. cubic) are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stages.core.errors import BuildError

from . import REWRITES

BORDERS = ("edge", "zero", "rescale")
UNKNOWN_LENGTHS = range(1, 17)  # lengths the coordinate mapping is checked at when H or W is not static


class _Unsupported(Exception):
    """This Resize can't be converted: which attribute/input, what is wrong, what to do."""

    def __init__(self, field: str, problem: str, hint: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem, self.hint = field, problem, hint


@dataclass(frozen=True)
class _Resize:
    """What a rewrite needs to know about one convertible-looking Resize node."""

    x: str
    out: str
    dtype: np.dtype
    channels: int
    lengths: tuple[int | None, int | None]  # static H, W of the input, None where dynamic
    scales: tuple[int, int]
    coord: str
    nearest_mode: str


# ---------------------------------------------------------------- params


def _params(fn: str, params: dict[str, Any], border: bool) -> dict[str, Any]:
    """Validate and default the params; a typo must not silently mean the default."""
    allowed = {"strict": False, **({"border": "edge"} if border else {})}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BuildError(f"rewrite {fn}: unknown param(s) {unknown} at rewrite.{fn}.params",
                         hint=f"use only {sorted(allowed)} in conf/rewrite/{fn}.yaml")
    out = {**allowed, **params}
    if not isinstance(out["strict"], bool):
        raise BuildError(f"rewrite {fn}: param strict={out['strict']!r} is not a boolean",
                         hint=f"set rewrite.{fn}.params.strict to true or false")
    if border and out["border"] not in BORDERS:
        raise BuildError(f"rewrite {fn}: param border={out['border']!r} is not one of {list(BORDERS)}",
                         hint=f"set rewrite.{fn}.params.border to edge (exact, adds a Pad), "
                              "zero (no Pad, bounded error on the outer ring) or rescale (exact, adds a Mul)")
    return out


# ---------------------------------------------------------------- reading the graph


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Values of initializers and Constant-node outputs (the places exporters put scales/sizes)."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            continue
        attr = node.attribute[0]
        if attr.name == "value":
            values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            values[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return values


def _tensor_types(model: Any) -> dict[str, tuple[int, list[int | None]]]:
    """Element type and static dims of every tensor shape inference can tell us about."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a custom op or a >2 GB model: fall back to what the file already states
        inferred = model
    graph = inferred.graph
    types = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        dims = ([d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
                if tensor.HasField("shape") else [])
        types[info.name] = (tensor.elem_type, dims)
    for init in graph.initializer:
        types.setdefault(init.name, (init.data_type, list(init.dims)))
    return types


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _scales(node: Any, attrs: dict[str, Any], consts: dict[str, np.ndarray], dims: list[int | None],
            opset: int) -> list[float]:
    """Per-axis scale of a rank-4 Resize, from its `scales` or `sizes` input."""
    names = {"scales": node.input[1] if opset < 11 else (node.input[2] if len(node.input) > 2 else ""),
             "sizes": node.input[3] if opset >= 11 and len(node.input) > 3 else ""}
    fix = "constant-fold the graph (simplify stage) so scales/sizes are initializers with a static input shape"
    for key in ("scales", "sizes"):
        name = names[key]
        if not name:
            continue
        if name not in consts:
            raise _Unsupported(f"input {key!r} ({name})", "is not a constant", fix)
        value = consts[name].astype(np.float64).ravel()
        if value.size == 0:
            continue
        axes = [a % 4 for a in attrs.get("axes", range(4))]
        if value.size != len(axes):
            raise _Unsupported(f"input {key!r} ({name})", f"has {value.size} values for {len(axes)} axes",
                               "check the exporter; a rank-4 NCHW Resize is expected")
        full = [1.0] * 4
        if key == "scales":
            for axis, v in zip(axes, value):
                full[axis] = float(v)
            return full
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise _Unsupported("attribute 'keep_aspect_ratio_policy'",
                               f"is {attrs['keep_aspect_ratio_policy']!r}, not 'stretch'",
                               "resize with explicit scales or sizes of the target aspect ratio")
        for axis, v in zip(axes, value):
            if dims[axis] is None:
                raise _Unsupported(f"input 'sizes' ({name})", f"needs the static input dim {axis}, which is unknown",
                                   "export with a static input shape so sizes/input is a known scale")
            full[axis] = float(v) / dims[axis]
        return full
    raise _Unsupported("input 'scales'", "and input 'sizes' are both missing or empty",
                       "check the exporter; a Resize needs scales or sizes")


def _parse(node: Any, consts: dict[str, np.ndarray], types: dict[str, tuple[int, list[int | None]]],
           opset: int) -> _Resize:
    """Read one Resize into a _Resize, or raise _Unsupported saying which attribute is at fault."""
    from onnx import helper

    attrs = _attrs(node)
    elem_type, dims = types.get(node.input[0], (0, []))
    if len(dims) != 4:
        raise _Unsupported(f"input 'X' ({node.input[0]})", f"has rank {len(dims) or 'unknown'}, not 4 (NCHW)",
                           "only 4-D NCHW Resizes become ConvTranspose; give the model a static input rank")
    if dims[1] is None:
        raise _Unsupported(f"input 'X' ({node.input[0]})", "has an unknown channel count",
                           "export with a static input shape so the channel count is known")
    dtype = helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else None
    if dtype not in (np.float16, np.float32, np.float64):
        raise _Unsupported(f"input 'X' ({node.input[0]})", f"has element type {dtype}, not float",
                           "apply this rewrite before quantization (ConvTranspose needs float input)")
    scales = _scales(node, attrs, consts, dims, opset)
    if scales[0] != 1 or scales[1] != 1:
        raise _Unsupported("input 'scales'", f"resizes batch/channel axes ({scales[:2]})",
                           "only spatial (H, W) resizing maps to a depthwise ConvTranspose")
    if not all(s >= 1 and float(s).is_integer() for s in scales[2:]):
        raise _Unsupported("input 'scales'", f"has spatial scales {scales[2:]}, not integers >= 1",
                           "use an integer upsampling factor, or keep this Resize on the CPU")
    legacy = opset < 11  # Resize-10: asymmetric coordinates, nearest rounds down
    coord = "asymmetric" if legacy else attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = "floor" if legacy else attrs.get("nearest_mode", "round_prefer_floor")
    return _Resize(x=node.input[0], out=node.output[0], dtype=np.dtype(dtype), channels=dims[1],
                   lengths=(dims[2], dims[3]), scales=(int(scales[2]), int(scales[3])),
                   coord=coord, nearest_mode=nearest_mode)


# ---------------------------------------------------------------- 1-D semantics, computed numerically


def _source_coords(s: int, length: int, coord: str) -> np.ndarray:
    """ONNX Resize's source coordinate of every output index, in float32 as onnxruntime computes it."""
    f = np.float32
    out_len = length * s
    j = np.arange(out_len, dtype=f)
    if coord in ("half_pixel", "half_pixel_symmetric"):  # symmetric == half_pixel when out_len == s*length
        return (j + f(0.5)) / f(s) - f(0.5)
    if coord == "pytorch_half_pixel":
        return (j + f(0.5)) / f(s) - f(0.5) if out_len > 1 else np.zeros(out_len, f)
    if coord == "asymmetric":
        return j / f(s)
    if coord == "tf_half_pixel_for_nn":
        return (j + f(0.5)) / f(s)
    if coord == "align_corners":
        return j * f(length - 1) / f(out_len - 1) if out_len > 1 else np.zeros(out_len, f)
    raise _Unsupported("attribute 'coordinate_transformation_mode'", f"is {coord!r}",
                       "use half_pixel, pytorch_half_pixel or asymmetric (tf_crop_and_resize needs roi)")


def _nearest_index(s: int, length: int, coord: str, nearest_mode: str) -> np.ndarray:
    """Source index ONNX nearest Resize reads for every output index (after clamping)."""
    x = _source_coords(s, length, coord).astype(np.float64)
    tie = x == np.floor(x) + 0.5
    rounders: dict[str, Callable[[], np.ndarray]] = {
        "floor": lambda: np.floor(x),
        "ceil": lambda: np.ceil(x),
        "round_prefer_floor": lambda: np.where(tie, np.floor(x), np.floor(x + 0.5)),
        "round_prefer_ceil": lambda: np.floor(x + 0.5),
    }
    if nearest_mode not in rounders:
        raise _Unsupported("attribute 'nearest_mode'", f"is {nearest_mode!r}", "use one of " + ", ".join(rounders))
    return np.clip(rounders[nearest_mode](), 0, length - 1).astype(np.int64)


def _linear_matrix(s: int, length: int, coord: str) -> np.ndarray:
    """[s*length, length] matrix of ONNX linear Resize along one axis (source coordinate clamped)."""
    x = np.clip(_source_coords(s, length, coord).astype(np.float64), 0, length - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, length - 1)
    frac = x - lo
    mat = np.zeros((s * length, length))
    rows = np.arange(s * length)
    np.add.at(mat, (rows, lo), 1 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def bilinear_taps(s: int) -> tuple[np.ndarray, int]:
    """1-D half-pixel bilinear ConvTranspose kernel for integer scale s, and its begin pad."""
    pad = s // 2
    m = np.arange(2 * s - s % 2) - pad
    return np.maximum(0.0, 1 - np.abs(m + 0.5 - s / 2) / s), pad


def _convtranspose_matrix(taps: np.ndarray, s: int, length: int, pad: int, out_len: int) -> np.ndarray:
    """[out_len, length] matrix of a 1-D ConvTranspose (stride s, begin pad `pad`) on `length` inputs."""
    mat = np.zeros((out_len, length))
    for i in range(length):
        for t, w in enumerate(taps):
            o = i * s + t - pad
            if 0 <= o < out_len:
                mat[o, i] += w
    return mat


def _lengths(static: int | None) -> list[int]:
    return [static] if static is not None else list(UNKNOWN_LENGTHS)


def _check_nearest(r: _Resize) -> None:
    for axis, (s, static) in enumerate(zip(r.scales, r.lengths)):
        for length in _lengths(static):
            if not np.array_equal(_nearest_index(s, length, r.coord, r.nearest_mode),
                                  np.arange(s * length) // s):
                raise _Unsupported(
                    "attribute 'coordinate_transformation_mode'/'nearest_mode'",
                    f"({r.coord!r}, {r.nearest_mode!r}) does not read source pixel floor(j/{s}) "
                    f"on axis {axis + 2} (length {length})",
                    "export nearest upsampling as asymmetric+floor or half_pixel+round_prefer_floor "
                    "(PyTorch F.interpolate(mode='nearest') does), or keep this Resize on the CPU")


def _edge_matrix(s: int, length: int) -> np.ndarray:
    """The edge-mode replacement along one axis: Pad(edge, 1) then ConvTranspose(pads s + s//2)."""
    taps, pad = bilinear_taps(s)
    padded = _convtranspose_matrix(taps, s, length + 2, s + pad, s * length)
    replicate = np.zeros((length + 2, length))
    replicate[np.arange(length + 2), np.clip(np.arange(length + 2) - 1, 0, length - 1)] = 1
    return padded @ replicate


def _check_linear(r: _Resize) -> None:
    for axis, (s, static) in enumerate(zip(r.scales, r.lengths)):
        for length in _lengths(static):
            if not np.allclose(_linear_matrix(s, length, r.coord), _edge_matrix(s, length), atol=1e-6):
                raise _Unsupported(
                    "attribute 'coordinate_transformation_mode'",
                    f"is {r.coord!r}, which is not half-pixel bilinear with a fixed kernel "
                    f"on axis {axis + 2} (scale {s}, length {length})",
                    "export with align_corners=False (half_pixel / pytorch_half_pixel), "
                    "or keep this Resize on the CPU")


def zero_border_gain(s: int, length: int) -> np.ndarray:
    """Per output index: zero-border output / exact output (1 inside, (1 - d) where the Resize clamps)."""
    taps, pad = bilinear_taps(s)
    zero = _convtranspose_matrix(taps, s, length, pad, s * length)
    return zero.sum(axis=1)


# ---------------------------------------------------------------- building the replacement


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _nearest_nodes(r: _Resize, base: str, taken: set[str]) -> tuple[list[Any], list[Any]]:
    from onnx import helper, numpy_helper

    sh, sw = r.scales
    w_name = _unique(f"{base}_convtranspose_w", taken)
    weight = np.ones((r.channels, 1, sh, sw), dtype=r.dtype)
    node = helper.make_node("ConvTranspose", [r.x, w_name], [r.out], name=_unique(f"{base}_convtranspose", taken),
                            kernel_shape=[sh, sw], strides=[sh, sw], pads=[0, 0, 0, 0], group=r.channels)
    return [node], [numpy_helper.from_array(weight, w_name)]


def _bilinear_nodes(r: _Resize, base: str, taken: set[str], border: str) -> tuple[list[Any], list[Any]]:
    from onnx import helper, numpy_helper

    if r.scales == (1, 1):  # an identity Resize never clamps: no Pad, no Mul
        border = "zero"
    (th, ph), (tw, pw) = bilinear_taps(r.scales[0]), bilinear_taps(r.scales[1])
    weight = np.broadcast_to(np.outer(th, tw), (r.channels, 1, len(th), len(tw))).astype(r.dtype)
    w_name = _unique(f"{base}_convtranspose_w", taken)
    inits = [numpy_helper.from_array(weight, w_name)]
    nodes, src = [], r.x
    if border == "edge":
        pads_name = _unique(f"{base}_pad_pads", taken)
        src = _unique(f"{base}_pad_out", taken)
        inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), pads_name))
        nodes.append(helper.make_node("Pad", [r.x, pads_name], [src], name=_unique(f"{base}_pad", taken),
                                      mode="edge"))
        ph, pw = r.scales[0] + ph, r.scales[1] + pw
    conv_out = _unique(f"{base}_convtranspose_out", taken) if border == "rescale" else r.out
    conv_name = _unique(f"{base}_convtranspose", taken)
    nodes.append(helper.make_node("ConvTranspose", [src, w_name], [conv_out], name=conv_name,
                                  kernel_shape=[len(th), len(tw)], strides=list(r.scales),
                                  pads=[ph, pw, ph, pw], group=r.channels))
    if border == "rescale":
        (sh, sw), (h, w) = r.scales, r.lengths
        gain = np.outer(zero_border_gain(sh, h), zero_border_gain(sw, w))  # type: ignore[arg-type]
        m_name = _unique(f"{base}_border_gain", taken)
        inits.append(numpy_helper.from_array((1 / gain).reshape(1, 1, *gain.shape).astype(r.dtype), m_name))
        nodes.append(helper.make_node("Mul", [conv_out, m_name], [r.out], name=_unique(f"{base}_border_mul", taken)))
    return nodes, inits


# ---------------------------------------------------------------- graph surgery


def _used_names(graph: Any) -> set[str]:
    """Every tensor name a node reads, subgraphs (If/Loop bodies) included, plus graph outputs."""
    from onnx import AttributeProto

    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                used |= _used_names(sub)
    return used


def _drop_dead(graph: Any, candidates: set[str]) -> None:
    """Remove initializers and Constant nodes among `candidates` (old roi/scales/sizes) nothing reads."""
    dead = candidates - _used_names(graph) - {i.name for i in graph.input} - {""}
    for init in [t for t in graph.initializer if t.name in dead]:
        graph.initializer.remove(init)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in dead]:
        graph.node.remove(node)
    for info in [v for v in graph.value_info if v.name in dead]:
        graph.value_info.remove(info)


def _rewrite(model: Any, fn: str, mode: str, strict: bool,
             build: Callable[[_Resize, str, set[str]], tuple[list[Any], list[Any]]],
             check: Callable[[_Resize], None]) -> list[str]:
    """Replace every convertible Resize of `mode` in place; return the replaced node names."""
    import onnx

    graph, opset = model.graph, _opset(model)
    consts, types = _constants(graph), _tensor_types(model)
    taken = ({n.name for n in graph.node} | {t for n in graph.node for t in (*n.input, *n.output)}
             | {t.name for t in graph.initializer} | {i.name for i in graph.input})
    nodes, changed, candidates = [], [], set()
    for node in graph.node:
        if node.op_type != "Resize" or _attrs(node).get("mode", "nearest") != mode:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        try:
            resize = _parse(node, consts, types, opset)
            check(resize)
            new_nodes, new_inits = build(resize, base, taken)
        except _Unsupported as exc:
            if strict:
                raise BuildError(f"rewrite {fn}: Resize node {base!r}: {exc}", hint=exc.hint) from None
            nodes.append(node)
            continue
        nodes.extend(new_nodes)
        graph.initializer.extend(new_inits)
        candidates.update(node.input[1:])
        changed.append(base)
    if changed:
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)
        _drop_dead(graph, candidates)
    return changed


@REWRITES.register("resize_nearest_to_convtranspose")
def resize_nearest_to_convtranspose(model: Any, params: dict[str, Any]) -> list[str]:
    """Nearest Resize by integer factors -> depthwise ConvTranspose of ones (exact)."""
    fn = "resize_nearest_to_convtranspose"
    p = _params(fn, params, border=False)
    return _rewrite(model, fn, "nearest", p["strict"], _nearest_nodes, _check_nearest)


@REWRITES.register("resize_bilinear_to_convtranspose")
def resize_bilinear_to_convtranspose(model: Any, params: dict[str, Any]) -> list[str]:
    """Half-pixel bilinear Resize by integer factors -> [Pad] + depthwise ConvTranspose [+ Mul]."""
    fn = "resize_bilinear_to_convtranspose"
    p = _params(fn, params, border=True)

    def check(r: _Resize) -> None:
        _check_linear(r)
        if p["border"] == "rescale" and None in r.lengths:
            raise _Unsupported(f"input 'X' ({r.x})", f"has unknown H/W {list(r.lengths)}, which border=rescale needs",
                               "export with a static input shape, or use border: edge")

    def build(r: _Resize, base: str, taken: set[str]) -> tuple[list[Any], list[Any]]:
        return _bilinear_nodes(r, base, taken, p["border"])

    return _rewrite(model, fn, "linear", p["strict"], build, check)
