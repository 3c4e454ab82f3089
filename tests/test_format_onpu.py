"""The .onpu container: partitions chain to the whole graph, the cut is 8-bit, corruption is caught."""
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.backends.onpu import open_onpu, read_container
from runtime.errors import RuntimeLoadError
from stages.core.errors import BuildError
from stages.formats import FORMATS
from stages.formats.onpu import plan_partition

NPU_OPS = ["QuantizeLinear", "DequantizeLinear", "Conv", "Relu", "Clip", "Add"]


def tiny_qdq_model(tmp_path: Path, float_nodes: tuple[str, ...] = ()) -> Path:
    """conv-relu-conv-GAP-flatten-gemm, quantized to QDQ by ONNX Runtime (``float_nodes`` kept in float)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * 0.3, f"w{i}")
             for i, shape in enumerate([(8, 3, 3, 3), (8, 8, 3, 3), (5, 8)])]
    nodes = [
        helper.make_node("Conv", ["x", inits[0].name], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", inits[1].name], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", inits[2].name], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    float_path, q_path = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), float_path)
    data = iter([{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(8)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(data, None)

    quantize_static(str(float_path), str(q_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    nodes_to_exclude=list(float_nodes))
    return q_path


def onpu_cfg() -> SimpleNamespace:
    return SimpleNamespace(target=SimpleNamespace(name="fake_npu", npu=SimpleNamespace(
        cpu_from=["GlobalAveragePool"], execution_provider="FakeNpuExecutionProvider")))


def build_onpu(tmp_path: Path) -> Path:
    quantized = tiny_qdq_model(tmp_path)
    cfg = onpu_cfg()
    out = tmp_path / "model.onpu"
    FORMATS.get("onpu").build(cfg, SimpleNamespace(quantized=quantized), out, {"model": "tiny", "format": "onpu"})
    return out


def test_partitions_chain_to_the_whole_graph_and_cut_on_8bit(tmp_path):
    out = build_onpu(tmp_path)
    header, members = read_container(out)
    assert json.loads(members["manifest.json"]) == {"model": "tiny", "format": "onpu"}
    plan = header["partition"]
    assert plan["cpu"]["nodes"] and "gap" in plan["cpu"]["nodes"] and "conv1" in plan["npu"]["nodes"]
    assert set(plan["cut_dtypes"].values()) <= {"uint8", "int8"}
    assert set(plan["npu_ops"]) <= set(NPU_OPS)
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    whole = ort.InferenceSession(members["model.onnx"]).run(None, {"x": x})[0]
    npu = ort.InferenceSession(members["npu.onnx"])
    cut = dict(zip(plan["npu"]["outputs"], npu.run(plan["npu"]["outputs"], {"x": x})))
    cpu = ort.InferenceSession(members["cpu.onnx"])
    chained = cpu.run(None, {k: v for k, v in cut.items() if k in plan["cpu"]["inputs"]})[0]
    np.testing.assert_array_equal(chained, whole)


def test_a_layer_kept_in_float_runs_on_the_cpu_with_everything_after_it(tmp_path):
    """An INT8 NPU cannot run float compute: a conv the scheme kept in float starts the CPU part, even
    before the head's first cpu_from op."""
    import onnx

    model = onnx.load(str(tiny_qdq_model(tmp_path, float_nodes=("conv2",))))
    plan = plan_partition(model, ["GlobalAveragePool"])
    assert "conv1" in plan["npu"]["nodes"]
    assert {"conv2", "relu2", "gap", "fc"} <= set(plan["cpu"]["nodes"])
    assert "Conv" in plan["cpu_ops"]
    # the plain graph keeps both convs on the NPU
    (tmp_path / "plain").mkdir()
    plain = plan_partition(onnx.load(str(tiny_qdq_model(tmp_path / "plain"))), ["GlobalAveragePool"])
    assert {"conv1", "conv2"} <= set(plain["npu"]["nodes"])


def test_container_is_byte_reproducible(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert build_onpu(tmp_path / "a").read_bytes() == build_onpu(tmp_path / "b").read_bytes()


def tiny_manifest(**raw) -> SimpleNamespace:
    from runtime.manifest import TensorSpec

    return SimpleNamespace(threads=lambda requested=None: 1, runtime={}, raw={"model": "tiny", "format": "onpu", **raw},
                           check_backend_version=lambda package, loaded: None,
                           inputs=[TensorSpec("x", (1, 3, 16, 16), "float32")], outputs=[TensorSpec("y", (1, 5), "float32")])


def test_runtime_falls_back_to_cpu_and_says_so(tmp_path):
    out = build_onpu(tmp_path)
    backend = open_onpu(out, tiny_manifest())
    assert "FakeNpuExecutionProvider not registered" in backend.name and "whole graph on CPU" in backend.name
    assert backend.run({"x": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 5)


def test_a_manifest_that_does_not_describe_the_containers_model_is_rejected(tmp_path):
    """The declared inputs and outputs are checked against the model the container holds, as for .onnx."""
    from runtime.manifest import TensorSpec

    out = build_onpu(tmp_path)
    wrong = tiny_manifest()
    wrong.inputs = [TensorSpec("x", (1, 3, 32, 32), "float32")]
    with pytest.raises(RuntimeLoadError, match=r"input 'x' is float32\[1, 3, 16, 16\] in the model"):
        open_onpu(out, wrong)


def test_a_corrupt_member_is_rejected(tmp_path):
    out = build_onpu(tmp_path)
    with zipfile.ZipFile(out) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries["npu.onnx"] = entries["npu.onnx"][:-10]
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    with pytest.raises(RuntimeLoadError, match="member 'npu.onnx' is corrupt"):
        read_container(out)


def test_only_the_npu_partition_is_operator_checked(tmp_path):
    from stages.core.config import OperatorsConfig
    from stages.core.opcheck import check_operators

    model = onnx.load(str(tiny_qdq_model(tmp_path)))
    nodes, where = FORMATS.get("onpu").accelerated(onpu_cfg(), model)
    assert where == "the NPU partition" and {"gap", "fc"}.isdisjoint(n.name for n in nodes)
    check_operators(nodes, OperatorsConfig(allowed=NPU_OPS), "fake_npu", where)  # the head's Gemm is not checked
    with pytest.raises(BuildError, match=r"in the NPU partition[\s\S]*conv1 \(Conv\)"):
        check_operators(nodes, OperatorsConfig(allowed=[op for op in NPU_OPS if op != "Conv"]), "fake_npu", where)


def test_a_container_with_another_builds_manifest_is_rejected(tmp_path):
    out = build_onpu(tmp_path)
    manifest = SimpleNamespace(threads=lambda requested=None: 1, runtime={}, raw={"model": "other", "format": "onpu"},
                               check_backend_version=lambda package, loaded: None)
    with pytest.raises(RuntimeLoadError, match="model"):
        open_onpu(out, manifest)


def test_the_npu_path_checks_the_model_inputs_of_its_first_part_and_the_outputs_of_its_last(tmp_path):
    """With the NPU provider there is no whole-graph session: check_io reads the parts' own I/O."""
    from runtime.backends.onnxruntime import check_io
    from runtime.backends.onpu import _Partitioned

    out = build_onpu(tmp_path)
    _, members = read_container(out)
    npu, cpu = ort.InferenceSession(members["npu.onnx"]), ort.InferenceSession(members["cpu.onnx"])
    parts = _Partitioned([(npu, [o.name for o in npu.get_outputs()]), (cpu, [o.name for o in cpu.get_outputs()])])
    assert [i.name for i in parts.get_inputs()] == ["x"] and [o.name for o in parts.get_outputs()] == ["y"]
    check_io(out, tiny_manifest(), parts)  # the model's own I/O: no error
    wrong = tiny_manifest()
    wrong.outputs = wrong.inputs
    with pytest.raises(RuntimeLoadError, match="the manifest declares output 'x'"):
        check_io(out, wrong, parts)
