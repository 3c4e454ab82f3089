"""The operator check: every forbidden node is named with the attribute at fault and the rewrite
that removes it; real exported models fail before surgery/rewrites and pass after; nothing is written."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from stages.core.cli import load
from stages.core.config import OperatorsConfig
from stages.core.errors import BuildError
from stages.core.layout import Layout
from stages.core.opcheck import check_operators, find_offences


def one_node_graph(op: str, inputs: int = 1, **attrs) -> onnx.ModelProto:
    names = ["x", *(f"p{i}" for i in range(1, inputs))]
    node = helper.make_node(op, names, ["y"], name=f"block/{op.lower()}", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def operators(target: str) -> OperatorsConfig:
    ops = load([f"target={target}"]).target.operators
    assert ops is not None, f"{target} declares no operators"
    return ops


@pytest.mark.parametrize("target, op, inputs, attrs, fault, remedy", [
    ("rpi5", "Resize", 3, {"mode": "linear"}, "Resize", "resize_bilinear_to_convtranspose"),
    ("rpi5", "Resize", 3, {"mode": "linear"}, "Resize", "bilinear_to_nearest (module rewrite"),
    ("rpi5", "Resize", 3, {}, "Resize", "resize_nearest_to_convtranspose"),  # ONNX's default mode is nearest
    ("rk3566", "Erf", 1, {}, "Erf", "gelu_to_relu6 (module rewrite + fine-tune"),
    ("rk3566", "InstanceNormalization", 3, {}, "InstanceNormalization", "instancenorm_to_batchnorm"),
    ("rk3566", "BatchNormalization", 5, {}, "BatchNormalization", "fold_batchnorm (add it to the target's rewrite"),
    ("rk1808", "Resize", 3, {"mode": "linear"}, "Resize, mode=linear", "resize_bilinear_to_convtranspose"),
])
def test_each_forbidden_op_is_named_with_the_rewrite_that_removes_it(target, op, inputs, attrs, fault, remedy):
    model = one_node_graph(op, inputs, **attrs)
    with pytest.raises(BuildError) as err:
        check_operators(list(model.graph.node), operators(target), target)
    message = str(err.value)
    assert f"block/{op.lower()} ({fault})" in message
    assert remedy in message
    assert f"conf/target/{target}.yaml" in err.value.hint and "nothing was written" in err.value.hint


def test_an_allowed_attribute_value_passes_and_an_op_without_a_rewrite_says_so():
    assert find_offences(one_node_graph("Resize", 3, mode="nearest").graph.node, operators("rk1808")) == []
    with pytest.raises(BuildError, match="no rewrite in conf/rewrite/ removes it"):
        check_operators(list(one_node_graph("Einsum", 2, equation="ij,jk->ik").graph.node),
                        operators("rk3566"), "rk3566")


def export(module, shape, path: Path) -> onnx.ModelProto:
    """Exported and simplified, as the pipeline's export and simplify stages leave it."""
    import onnxsim
    import torch

    torch.onnx.export(module.eval(), torch.zeros(shape), str(path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    model, ok = onnxsim.simplify(onnx.load(str(path)))
    assert ok
    onnx.save(model, str(path))
    return model


def test_the_seed_model_fails_on_rk3566_until_surgery(tmp_path):
    """fashion_cnn (InstanceNorm + GELU) is rejected with both module rewrites named; after them it passes."""
    from stages.core.models import apply_surgery
    from stages.zoo.fashion_cnn import fashion_cnn

    ops = operators("rk3566")
    before = export(fashion_cnn(), (1, 1, 28, 28), tmp_path / "before.onnx")
    with pytest.raises(BuildError) as err:
        check_operators(list(before.graph.node), ops, "rk3566")
    assert "InstanceNormalization" in str(err.value) and "Erf" in str(err.value)
    assert "instancenorm_to_batchnorm" in str(err.value) and "gelu_to_relu6" in str(err.value)

    module = fashion_cnn()
    swapped = apply_surgery(module, load(["model=fashion_cnn_npu"]).model)
    assert len(swapped["instancenorm_to_batchnorm"]) == 4 and len(swapped["gelu_to_relu6"]) == 4
    after = export(module, (1, 1, 28, 28), tmp_path / "after.onnx")
    check_operators(list(after.graph.node), ops, "rk3566")


def test_ghostnetv2_reaches_the_rpi5_npu_only_through_the_resize_rewrite(tmp_path):
    from stages.rewrites import REWRITES
    from stages.zoo.ghostnetv2 import ghostnetv2

    cfg = load(["model=fashion_ghostnetv2", "target=rpi5"])
    model = export(ghostnetv2(), (1, 1, 32, 32), tmp_path / "ghost.onnx")
    with pytest.raises(BuildError, match=r"Resize[\s\S]*resize_bilinear_to_convtranspose"):
        check_operators(list(model.graph.node), cfg.target.operators, "rpi5")
    spec = cfg.rewrite["resize_bilinear_to_convtranspose"]
    changed = REWRITES.get(spec.fn)(model, dict(spec.params))
    assert len(changed) == 3  # one upsample per DFC attention block
    float_ops = [n for n in model.graph.node]
    offences = find_offences(float_ops, cfg.target.operators)
    # Only float-graph ops the quantizer turns into QDQ remain (the check runs on the quantized graph).
    assert {o.op for o in offences} <= {"Gemm", "GlobalAveragePool", "Flatten"}, offences


def test_convert_writes_nothing_when_the_check_fails(tmp_path):
    from stages.convert import convert
    from stages.zoo.ghostnetv2 import ghostnetv2

    cfg = load(["model=fashion_ghostnetv2", "target=rpi5"])
    layout = Layout.of(str(tmp_path), cfg.model.name, cfg.target.name, cfg.quant.name, "model.onpu")
    layout.build_dir.mkdir(parents=True)
    export(ghostnetv2(), (1, 1, 32, 32), layout.quantized)  # an unrewritten graph, Resize included
    with pytest.raises(BuildError, match="does not accept"):
        convert(cfg, layout)
    assert not layout.artifact_dir.exists() and not layout.prepared_dir.exists()
