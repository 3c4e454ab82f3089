"""Resize -> ConvTranspose rewrites: ORT outputs before and after agree (nearest, bilinear edge and
rescale exactly; bilinear zero within its stated border bound), and unsupported Resizes are
skipped or, with strict, reported by node name."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from stages.core.errors import BuildError
from stages.rewrites import REWRITES
from stages.rewrites.resize import bilinear_taps, zero_border_gain

NEAREST = REWRITES.get("resize_nearest_to_convtranspose")
BILINEAR = REWRITES.get("resize_bilinear_to_convtranspose")
COORDS = ["half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "tf_half_pixel_for_nn"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def resize_model(shape: tuple[int, int, int, int], scales: tuple[int, int], mode: str = "nearest", *,
                 coord: str = "asymmetric", nearest_mode: str = "floor", via: str = "scales",
                 const: str = "init", conv: bool = False, dims: list | None = None,
                 scale_values: list[float] | None = None) -> onnx.ModelProto:
    """x -> [Conv] -> Resize 'up' -> y, scales/sizes as an initializer or a Constant node."""
    n, c, h, w = shape
    sh, sw = scales
    value = (np.array(scale_values or [1, 1, sh, sw], np.float32) if via == "scales"
             else np.array([n, c, h * sh, w * sw], np.int64))
    nodes, inits = [], []
    if const == "init":
        inits.append(numpy_helper.from_array(value, "resize_param"))
    else:
        nodes.append(helper.make_node("Constant", [], ["resize_param"], name="resize_const",
                                      value=numpy_helper.from_array(value)))
    src = "x"
    if conv:
        rng = np.random.default_rng(0)
        inits.append(numpy_helper.from_array(rng.normal(size=(c, c, 3, 3)).astype(np.float32), "conv_w"))
        nodes.append(helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]))
        src = "c"
    inputs = [src, "", "resize_param"] if via == "scales" else [src, "", "", "resize_param"]
    nodes.append(helper.make_node("Resize", inputs, ["y"], name="up", mode=mode,
                                  coordinate_transformation_mode=coord, nearest_mode=nearest_mode))
    out_dims = [n, c, h * sh, w * sw] if dims is None and scale_values is None else [None] * 4
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def rewrite_and_compare(fn, model: onnx.ModelProto, x: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Run, rewrite, check the graph is valid and Resize-free, run again."""
    before = run(model, x)
    assert fn(model, params) == ["up"]
    onnx.checker.check_model(model, full_check=True)
    assert "Resize" not in ops(model)
    return before, run(model, x)


shapes = st.tuples(st.integers(1, 2), st.integers(1, 8), st.integers(1, 9), st.integers(1, 9))
int_scales = st.tuples(st.integers(1, 4), st.integers(1, 4))


# ---------------------------------------------------------------- nearest


@settings(max_examples=40, deadline=None)
@given(shape=shapes, scales=int_scales, via=st.sampled_from(["scales", "sizes"]),
       const=st.sampled_from(["init", "node"]), conv=st.booleans(),
       modes=st.sampled_from([("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                              ("pytorch_half_pixel", "round_prefer_ceil")]),
       seed=st.integers(0, 2**16))
def test_nearest_is_exact(shape, scales, via, const, conv, modes, seed):
    model = resize_model(shape, scales, coord=modes[0], nearest_mode=modes[1], via=via, const=const, conv=conv)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    before, after = rewrite_and_compare(NEAREST, model, x, {})
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    assert ops(model) == (["Conv"] if conv else []) + ["ConvTranspose"]
    names = {t.name for t in model.graph.initializer}
    assert "up_convtranspose_w" in names and "resize_param" not in names  # dead scales/sizes are gone


@settings(max_examples=40, deadline=None)
@given(shape=shapes, scales=int_scales, coord=st.sampled_from(COORDS), nearest_mode=st.sampled_from(NEAREST_MODES),
       seed=st.integers(0, 2**16))
def test_nearest_converts_only_what_it_can_reproduce(shape, scales, coord, nearest_mode, seed):
    """Any coordinate/rounding mode: either left alone, or converted exactly."""
    model = resize_model(shape, scales, coord=coord, nearest_mode=nearest_mode)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    before = run(model, x)
    changed = NEAREST(model, {})
    onnx.checker.check_model(model, full_check=True)
    if changed:
        assert "Resize" not in ops(model)
        np.testing.assert_allclose(run(model, x), before, atol=1e-5, rtol=0)
    else:
        assert ops(model) == ["Resize"]


def test_nearest_dynamic_spatial_dims_run_at_any_size():
    model = resize_model((1, 3, 4, 4), (2, 3), dims=[1, 3, "h", "w"])
    ref = resize_model((1, 3, 4, 4), (2, 3), dims=[1, 3, "h", "w"])
    assert NEAREST(model, {}) == ["up"]
    onnx.checker.check_model(model, full_check=True)
    for hw in [(1, 1), (5, 7), (8, 3)]:
        x = np.random.default_rng(1).normal(size=(1, 3, *hw)).astype(np.float32)
        np.testing.assert_allclose(run(model, x), run(ref, x), atol=1e-5, rtol=0)


def test_nearest_weight_is_depthwise_ones():
    model = resize_model((1, 5, 3, 3), (2, 3))
    NEAREST(model, {})
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"kernel_shape": [2, 3], "strides": [2, 3], "pads": [0, 0, 0, 0], "group": 5}
    (w,) = model.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(w), np.ones((5, 1, 2, 3), np.float32))


# ---------------------------------------------------------------- bilinear


def bilinear_pair(shape, scales, coord, seed, **kw) -> tuple[onnx.ModelProto, np.ndarray]:
    model = resize_model(shape, scales, "linear", coord=coord, **kw)
    return model, np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, scales=int_scales, coord=st.sampled_from(["half_pixel", "pytorch_half_pixel"]),
       via=st.sampled_from(["scales", "sizes"]), conv=st.booleans(), seed=st.integers(0, 2**16))
def test_bilinear_edge_is_exact(shape, scales, coord, via, conv, seed):
    model, x = bilinear_pair(shape, scales, coord, seed, via=via, conv=conv)
    before, after = rewrite_and_compare(BILINEAR, model, x, {"border": "edge"})
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    assert ops(model) == (["Conv"] if conv else []) + (["Pad"] if scales != (1, 1) else []) + ["ConvTranspose"]


@settings(max_examples=40, deadline=None)
@given(shape=shapes, scales=int_scales, coord=st.sampled_from(["half_pixel", "pytorch_half_pixel"]),
       seed=st.integers(0, 2**16))
def test_bilinear_zero_is_exact_inside_and_bounded_on_the_border(shape, scales, coord, seed):
    model, x = bilinear_pair(shape, scales, coord, seed)
    before, after = rewrite_and_compare(BILINEAR, model, x, {"border": "zero"})
    assert ops(model) == ["ConvTranspose"]
    (sh, sw), (h, w) = scales, shape[2:]
    ring_h, ring_w = sh // 2, sw // 2  # outputs whose source coordinate Resize clamps, per side
    inner = after[:, :, ring_h:h * sh - ring_h, ring_w:w * sw - ring_w]
    np.testing.assert_allclose(inner, before[:, :, ring_h:h * sh - ring_h, ring_w:w * sw - ring_w], atol=1e-5, rtol=0)
    # Stated bound: |err| <= (1 - (1-dH)(1-dW)) max|x|, d = (s-1-2j)/(2s) on the clamped ring.
    d_h = np.maximum(0, (sh - 1 - 2 * np.minimum(np.arange(h * sh), h * sh - 1 - np.arange(h * sh))) / (2 * sh))
    d_w = np.maximum(0, (sw - 1 - 2 * np.minimum(np.arange(w * sw), w * sw - 1 - np.arange(w * sw))) / (2 * sw))
    bound = (1 - np.outer(1 - d_h, 1 - d_w)) * np.abs(x).max(axis=(2, 3), keepdims=True)
    assert np.all(np.abs(after - before) <= bound + 1e-5)
    if sh == sw == 2:  # the numbers the docstring and YAML quote
        assert d_h.max() == 0.25 and 1 - (1 - d_h.max()) ** 2 == 0.4375
    # and the error is exactly the stated gain, not just under the bound
    np.testing.assert_allclose(after, before * np.outer(zero_border_gain(sh, h), zero_border_gain(sw, w)),
                               atol=1e-5, rtol=0)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, scales=int_scales, seed=st.integers(0, 2**16))
def test_bilinear_rescale_is_exact_without_pad(shape, scales, seed):
    model, x = bilinear_pair(shape, scales, "pytorch_half_pixel", seed)
    before, after = rewrite_and_compare(BILINEAR, model, x, {"border": "rescale"})
    assert ops(model) == ["ConvTranspose"] + (["Mul"] if scales != (1, 1) else [])
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, scales=int_scales, coord=st.sampled_from(COORDS), seed=st.integers(0, 2**16))
def test_bilinear_converts_only_what_it_can_reproduce(shape, scales, coord, seed):
    model, x = bilinear_pair(shape, scales, coord, seed)
    before = run(model, x)
    if BILINEAR(model, {}):
        onnx.checker.check_model(model, full_check=True)
        np.testing.assert_allclose(run(model, x), before, atol=1e-5, rtol=0)
    else:
        assert ops(model) == ["Resize"]


def test_bilinear_scale2_kernel_and_edge_pads():
    taps, pad = bilinear_taps(2)
    np.testing.assert_array_equal(taps, [0.25, 0.75, 0.75, 0.25])
    assert pad == 1
    model = resize_model((1, 2, 4, 4), (2, 2), "linear", coord="half_pixel")
    BILINEAR(model, {})
    pad_node, conv = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs == {"kernel_shape": [4, 4], "strides": [2, 2], "pads": [3, 3, 3, 3], "group": 2}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits["up_pad_pads"], [0, 0, 1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(inits["up_convtranspose_w"][1, 0], np.outer(taps, taps))
    assert (pad_node.name, conv.name, conv.output[0]) == ("up_pad", "up_convtranspose", "y")


# ---------------------------------------------------------------- PyTorch exports


def torch_export(mode: str, shape: tuple[int, int, int, int]) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    class Up(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(shape[1], 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kw = {"align_corners": False} if mode == "bilinear" else {}
            return F.interpolate(self.conv(x), scale_factor=2, mode=mode, **kw)

    torch.manual_seed(0)
    module, x = Up().eval(), torch.randn(*shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, x, buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    with torch.no_grad():
        expected = module(x).numpy()
    return onnx.load_from_string(buf.getvalue()), x.numpy(), expected


@pytest.mark.parametrize("mode,fn,params,added", [
    ("nearest", NEAREST, {}, ["ConvTranspose"]),
    ("bilinear", BILINEAR, {}, ["Pad", "ConvTranspose"]),
    ("bilinear", BILINEAR, {"border": "rescale"}, ["ConvTranspose", "Mul"]),
])
def test_pytorch_export(mode, fn, params, added):
    model, x, expected = torch_export(mode, (2, 3, 5, 7))
    before = run(model, x)
    changed = fn(model, params)
    onnx.checker.check_model(model, full_check=True)
    assert len(changed) == 1
    assert ops(model) == ["Conv", *added]  # the Constant holding the scales is gone too
    np.testing.assert_allclose(run(model, x), before, atol=1e-5, rtol=0)
    np.testing.assert_allclose(run(model, x), expected, atol=1e-4, rtol=0)


def test_resize10_nearest_is_converted_and_linear_is_not():
    """Resize-10 (X, scales): asymmetric coordinates, nearest rounds down."""
    for mode, converts in (("nearest", True), ("linear", False)):
        scales = numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "s")
        graph = helper.make_graph([helper.make_node("Resize", ["x", "s"], ["y"], name="up", mode=mode)], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 12])], [scales])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=5)
        x = np.random.default_rng(0).normal(size=(1, 2, 3, 4)).astype(np.float32)
        before = run(model, x)
        assert BILINEAR(model, {}) == [] and (NEAREST(model, {}) == ["up"]) == converts
        onnx.checker.check_model(model, full_check=True)
        np.testing.assert_allclose(run(model, x), before, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- unsupported Resizes and params


UNSUPPORTED = [
    ("nearest", dict(scale_values=[1, 1, 1.5, 2]), "scales"),
    ("nearest", dict(scale_values=[1, 2, 2, 2]), "scales"),
    ("nearest", dict(coord="align_corners"), "coordinate_transformation_mode"),
    ("linear", dict(coord="align_corners"), "coordinate_transformation_mode"),
    ("linear", dict(coord="asymmetric"), "coordinate_transformation_mode"),
    ("linear", dict(scale_values=[1, 1, 0.5, 0.5]), "scales"),
    ("nearest", dict(dims=[1, "c", 4, 4]), "channel"),
]


@pytest.mark.parametrize("mode,kw,field", UNSUPPORTED)
def test_unsupported_is_skipped_by_default(mode, kw, field):
    model = resize_model((1, 3, 4, 4), (2, 2), mode, **kw)
    before = model.SerializeToString()
    fn = NEAREST if mode == "nearest" else BILINEAR
    assert fn(model, {}) == []
    assert model.SerializeToString() == before


@pytest.mark.parametrize("mode,kw,field", UNSUPPORTED)
def test_unsupported_is_an_error_when_strict(mode, kw, field):
    model = resize_model((1, 3, 4, 4), (2, 2), mode, **kw)
    fn = NEAREST if mode == "nearest" else BILINEAR
    with pytest.raises(BuildError, match=field) as err:
        fn(model, {"strict": True})
    assert "'up'" in str(err.value) and err.value.hint


def test_other_modes_are_untouched_even_when_strict():
    for fn in (NEAREST, BILINEAR):
        model = resize_model((1, 3, 4, 4), (2, 2), "cubic", coord="half_pixel")
        assert fn(model, {"strict": True}) == []
        assert ops(model) == ["Resize"]


def test_shared_scales_stay_while_still_used():
    """Two Resizes share one Constant: converting the nearest one keeps it for the cubic one."""
    model = resize_model((1, 2, 3, 3), (2, 2), const="node")
    model.graph.node.append(helper.make_node("Resize", ["x", "", "resize_param"], ["z"], name="cubic", mode="cubic"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 6, 6]))
    assert NEAREST(model, {}) == ["up"]
    onnx.checker.check_model(model, full_check=True)
    assert ops(model) == ["Constant", "ConvTranspose", "Resize"]


def test_names_are_unique_and_deterministic():
    model = resize_model((1, 2, 3, 3), (2, 2))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "up_convtranspose_w"))
    model.graph.output.append(helper.make_tensor_value_info("up_convtranspose_w", TensorProto.FLOAT, [1]))
    NEAREST(model, {})
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.node[0].input[1] == "up_convtranspose_w_1"


@pytest.mark.parametrize("fn,params,key", [
    (NEAREST, {"strcit": True}, "strcit"),
    (NEAREST, {"border": "edge"}, "border"),
    (NEAREST, {"strict": "yes"}, "strict"),
    (BILINEAR, {"border": "reflect"}, "border"),
])
def test_bad_params_are_build_errors(fn, params, key):
    with pytest.raises(BuildError, match=key) as err:
        fn(resize_model((1, 1, 2, 2), (2, 2)), params)
    assert err.value.hint


def test_yaml_configs_compose_and_validate():
    from stages.core.cli import load

    cfg = load(["rewrite=[resize_nearest_to_convtranspose,resize_bilinear_to_convtranspose]"])
    nearest = cfg.rewrite["resize_nearest_to_convtranspose"]
    bilinear = cfg.rewrite["resize_bilinear_to_convtranspose"]
    assert (nearest.fn, nearest.kind.value) == ("resize_nearest_to_convtranspose", "graph")
    assert (bilinear.fn, bilinear.kind.value) == ("resize_bilinear_to_convtranspose", "graph")
    assert [(p.op, p.attrs) for p in nearest.removes] == [("Resize", {"mode": "nearest"})]
    assert [(p.op, p.attrs) for p in bilinear.removes] == [("Resize", {"mode": "linear"})]
    for spec in (nearest, bilinear):  # the YAML's params are valid params of the registered function
        assert REWRITES.get(spec.fn)(resize_model((1, 1, 2, 2), (2, 2)), dict(spec.params)) is not None
