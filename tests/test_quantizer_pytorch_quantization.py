"""The pytorch_quantization scheme (NVIDIA pytorch-quantization 2.1.3) on a real small model and real
data: TensorRT explicit-quantization QDQ (symmetric int8, zero points 0, per-channel weights), valid
ONNX that runs in ONNX Runtime, logits close to float; nodes kept in float; the calibration cache."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant_helpers import cosine, run
from stages.core.cli import load
from stages.core.errors import BuildError

from stages.quantizers import SCHEMES
from stages.quantizers import pytorch_quantization as pq  # registers the scheme (imports the package lazily)

if importlib.util.find_spec("pytorch_quantization") is None:
    pytest.skip("pytorch-quantization is not installed: pip install pytorch-quantization==2.1.3 (NVIDIA, pure Python)",
                allow_module_level=True)

# Measured with seeded fashion_cnn_npu weights and 64 Fashion-MNIST calibration images, logits of the
# first 64 test images against float: min cosine 0.99990 with int8_tensorrt_pq (percentile 99.99);
# minmax 0.99991, percentile 99.9 0.99961, entropy 0.990.
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> SimpleNamespace:
    """fashion_cnn_npu's architecture (seeded init) saved as weights.pt; the float graph made the
    pipeline's way (trace, TorchScript export, onnxsim); 64 real Fashion-MNIST training images as
    calibration tensors and 32 test images."""
    import onnxsim
    import torch
    from PIL import Image

    from stages.core.datasets import idx_records, preprocess_for
    from stages.core.models import apply_surgery
    from stages.zoo.fashion_cnn import fashion_cnn

    tmp = tmp_path_factory.mktemp("pq")
    cfg = load(["model=fashion_cnn_npu"])
    torch.manual_seed(0)
    module = fashion_cnn()
    apply_surgery(module, cfg.model)
    module.eval()
    weights = tmp / "weights.pt"
    torch.save(module.state_dict(), weights)
    rewritten = tmp / "rewritten.onnx"
    example = torch.zeros(1, 1, 28, 28)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.trace(module, example), (example,), str(rewritten), opset_version=17,
                          dynamo=False, input_names=["input"], output_names=["logits"])
    simplified, ok = onnxsim.simplify(onnx.load(str(rewritten)))
    assert ok
    onnx.save(simplified, str(rewritten))
    pre = preprocess_for(cfg.model.input)
    images, _ = idx_records(cfg.model.calibration)
    calibration = tmp / "calibration.npy"
    np.save(calibration, np.concatenate([pre(Image.fromarray(i)) for i in images[:64]]))
    test, _ = idx_records(cfg.model.gold)
    return SimpleNamespace(layout=SimpleNamespace(weights=weights, calibration=calibration, rewritten=rewritten),
                           inputs=[pre(Image.fromarray(i)) for i in test[:32]], tmp=tmp, module=module)


def quantize(model: SimpleNamespace, name: str, *overrides: str, exclude=(), cache=None) -> Path:
    cfg = load(["model=fashion_cnn_npu", "quant=int8_tensorrt_pq", *overrides])
    out = model.tmp / f"{name}.onnx"
    SCHEMES.get("pytorch_quantization").quantize(cfg, model.layout, out, exclude, cache)
    return out


@pytest.fixture(scope="module")
def quantized(model) -> Path:
    return quantize(model, "pq")


def constants(graph) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Every constant tensor of the graph, from initializers and Constant nodes alike."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def test_the_graph_is_tensorrt_explicit_quantization(quantized, model):
    m = onnx.load(str(quantized))
    onnx.checker.check_model(m, full_check=True)
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 28, 28]  # static
    g, values = m.graph, constants(m.graph)
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert sum(n.op_type == "QuantizeLinear" for n in qdq) == sum(n.op_type == "DequantizeLinear" for n in qdq) == 10
    for node in qdq:  # symmetric int8: every zero point is an int8 0
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    producer = {o: n for n in g.node for o in n.output}
    layers = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 5
    for layer in layers:  # both the activation and the weight come through Q -> DQ
        act, weight = producer[layer.input[0]], producer[layer.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear", layer.name
        assert producer[act.input[0]].op_type == producer[weight.input[0]].op_type == "QuantizeLinear"
        assert values[act.input[1]].size == 1  # per-tensor activations
        float_weight = values[producer[weight.input[0]].input[0]]  # float weights, Q -> DQ (TensorRT's form)
        assert float_weight.dtype == np.float32
        assert values[weight.input[1]].shape == (float_weight.shape[0],), layer.name  # per-channel, axis 0


def test_logits_stay_close_to_float(quantized, model):
    import torch

    for x in model.inputs:
        with torch.no_grad():
            reference = model.module(torch.from_numpy(x)).numpy()
        out = run(quantized, x)
        assert cosine(out, reference) >= MIN_COSINE
        assert cosine(out, run(model.layout.rewritten, x)) >= MIN_COSINE


def test_per_tensor_weights_and_no_leaked_global_state(model):
    import torch
    from pytorch_quantization import nn as quant_nn

    conv2d = torch.nn.Conv2d
    out = quantize(model, "pq_per_tensor", "quant.per_channel=false")
    assert torch.nn.Conv2d is conv2d and not quant_nn.TensorQuantizer.use_fb_fake_quant
    g = onnx.load(str(out)).graph
    values = constants(g)
    scales = [values[n.input[1]] for n in g.node if n.op_type == "DequantizeLinear"]
    assert len(scales) == 10 and all(s.size == 1 for s in scales)
    assert cosine(run(out, model.inputs[0]), run(model.layout.rewritten, model.inputs[0])) >= 0.99


def test_a_node_kept_in_float_and_the_calibration_cache(model, monkeypatch):
    cache = model.tmp / "cache.json"
    quantize(model, "pq_cached", cache=cache)
    assert cache.exists()

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated again despite the cache")

    monkeypatch.setattr(pq, "_calibrate", no_calibration)
    node = "/features/4/0/Conv"  # as the float graph (traced, then exported) names it
    assert node in {n.name for n in onnx.load(str(model.layout.rewritten)).graph.node}
    out = quantize(model, "pq_kept", exclude=[node], cache=cache)
    g = onnx.load(str(out)).graph
    producer = {o: n for n in g.node for o in n.output}
    conv = next(n for n in g.node if n.name == node)
    assert all(i not in producer or producer[i].op_type not in ("DequantizeLinear", "QuantizeLinear")
               for i in conv.input)  # float input, float weight
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) == 8
    assert cosine(run(out, model.inputs[0]), run(model.layout.rewritten, model.inputs[0])) >= MIN_COSINE
    with pytest.raises(BuildError, match="cannot keep node"):
        quantize(model, "pq_bad", exclude=["/features/1/MaxPool"], cache=cache)


def test_the_budget_repair_can_rank_every_layer(model):
    """Sensitivity quantizes once per Conv/Gemm of the float graph, each kept in float by its node name."""
    from stages.quantizers.repair import sensitivity

    cfg = load(["model=fashion_cnn_npu", "quant=int8_tensorrt_pq"])
    cfg.quant.repair.sensitivity_inputs = 8
    scheme = SCHEMES.get("pytorch_quantization")
    assert scheme.repairable and scheme.qdq
    ranked = sensitivity(cfg, model.layout, scheme, model.tmp / "ranked_cache.json", model.tmp)
    assert sorted(r["node"] for r in ranked["layers"]) == sorted(
        ["/features/0/0/Conv", "/features/2/0/Conv", "/features/4/0/Conv", "/features/5/0/Conv", "/classifier/Gemm"])
    assert all(np.isfinite(r["error_in_float"]) for r in ranked["layers"])
    assert ranked["method"] == ["the quantized graph with the layer's quantize/dequantize pairs bypassed"]


def test_a_layer_bypassed_in_the_exported_graph_is_the_layer_exported_in_float(model):
    """The repair's ranking bypasses a layer's Q/DQ pairs in the one exported graph instead of exporting
    the module again per layer: both graphs must compute the same outputs, for every layer."""
    from stages.quantizers.repair import COMPUTE_OPS, output_error

    cache = model.tmp / "bypass_cache.json"
    base = quantize(model, "pq_base", cache=cache)
    x = np.stack([t[0] for t in model.inputs])
    ref = np.concatenate([run(model.layout.rewritten, t) for t in model.inputs])
    layers = [n.name for n in onnx.load(str(model.layout.rewritten)).graph.node if n.op_type in COMPUTE_OPS]
    assert len(layers) == 5
    for node in layers:
        bypassed = model.tmp / "bypassed.onnx"
        assert pq._bypassed(base, node, bypassed)
        exported = quantize(model, "pq_exported", exclude=[node], cache=cache)
        np.testing.assert_allclose(output_error(bypassed, x, ref, "input"), output_error(exported, x, ref, "input"),
                                   rtol=1e-6, err_msg=node)
        np.testing.assert_allclose(run(bypassed, model.inputs[0]), run(exported, model.inputs[0]), atol=1e-5)
    assert not pq._bypassed(base, "/features/1/MaxPool", model.tmp / "no.onnx")  # not a quantized layer


def test_settings_it_cannot_honour_are_errors(model):
    from stages.core.config import QType

    scheme = SCHEMES.get("pytorch_quantization")
    for key, value, message in (("activation_type", QType.uint8, "int8 weights and activations only"),
                                ("symmetric_activations", False, "symmetric only"),
                                ("exclude_op_types", ["Gemm"], "cannot keep op types")):
        cfg = load(["model=fashion_cnn_npu", "quant=int8_tensorrt_pq"])
        setattr(cfg.quant, key, value)
        with pytest.raises(BuildError, match=message):
            scheme.quantize(cfg, model.layout, model.tmp / "refused.onnx", (), None)
