"""fold_batchnorm is exact: ORT outputs before and after agree within 1e-5 over random shapes."""
import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from stages.rewrites import REWRITES


def conv_bn_model(rng, cin, cout, k, groups, with_bias):
    w = rng.normal(size=(cout, cin // groups, k, k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    conv_inputs = ["x", "w"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.normal(size=cout).astype(np.float32), "b"))
        conv_inputs.append("b")
    for name, arr in {"scale": rng.uniform(0.5, 2, cout), "bias": rng.normal(size=cout),
                      "mean": rng.normal(size=cout), "var": rng.uniform(0.1, 3, cout)}.items():
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", group=groups, pads=[k // 2] * 4),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], name="bn",
                         epsilon=1e-3),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 9, 9])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 6), mult=st.integers(1, 3), k=st.sampled_from([1, 3]),
       depthwise=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fold_batchnorm_is_exact(cin, mult, k, depthwise, with_bias, seed):
    rng = np.random.default_rng(seed)
    groups = cin if depthwise else 1
    cout = cin * mult
    model = conv_bn_model(rng, cin, cout, k, groups, with_bias)
    x = rng.normal(size=(1, cin, 9, 9)).astype(np.float32)
    before = run(model, x)
    changed = REWRITES.get("fold_batchnorm")(model, {})
    onnx.checker.check_model(model, full_check=True)
    assert changed == ["bn"]
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    np.testing.assert_allclose(run(model, x), before, atol=1e-5, rtol=1e-5)
