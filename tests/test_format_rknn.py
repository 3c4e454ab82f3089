"""RKNN wrapper behaviour that does not need a full build: crashes and missing toolkits."""
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages.core.errors import BuildError
from stages.formats import rknn


def fake_layout(tmp_path: Path) -> SimpleNamespace:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "rknn_config.json").write_text(json.dumps({
        "toolkit": 2, "platform": "rk3588", "mean": [[0, 0, 0]], "std": [[1, 1, 1]], "quantized_dtype": "w8a8",
        "quantized_algorithm": "normal", "optimization_level": 3, "onnx": "model.onnx", "dataset": "dataset.txt"}))
    (prepared / "model.onnx").write_bytes(b"")
    (prepared / "dataset").mkdir()
    (prepared / "dataset" / "0000.npy").write_bytes(b"")
    (prepared / "dataset.txt").write_text("dataset/0000.npy\n")
    return SimpleNamespace(prepared_dir=prepared)


def cfg_for(fmt: str, **rk) -> SimpleNamespace:
    defaults = dict(platform="rk3588", quantized_dtype="w8a8", quantized_algorithm="normal", toolkit_python=None)
    return SimpleNamespace(target=SimpleNamespace(name="t", format=fmt, rknn=SimpleNamespace(**{**defaults, **rk})))


def test_a_toolkit_crash_becomes_an_error_naming_the_signal(tmp_path, monkeypatch):
    # A stand-in interpreter that dies the way rknn's compiler does on rk2118 (SIGABRT).
    crasher = tmp_path / "python"
    crasher.write_text("#!/bin/sh\nkill -ABRT $$\n")
    crasher.chmod(crasher.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("RKNN_TOOLKIT2_PYTHON", str(crasher))
    with pytest.raises(BuildError, match="crashed with SIGABRT while building for rk3588"):
        rknn.run_worker(cfg_for("rknn"), fake_layout(tmp_path), tmp_path / "model.rknn")


def test_a_job_runs_in_a_folder_named_by_what_it_reads(tmp_path):
    """Every run of the same inputs sees the same paths (they reach the compiler's heap, so its bytes);
    leftovers of a killed run do not change the folder; a missing input is named."""
    layout = fake_layout(tmp_path)
    job = rknn.job_config(layout.prepared_dir)
    first = rknn.work_dir(layout.prepared_dir, job)
    (layout.prepared_dir / "model.model").write_bytes(b"left by a killed hybrid build")
    assert rknn.work_dir(layout.prepared_dir, job) == first and first.parent == Path("/tmp/edgebuild-rknn")
    (layout.prepared_dir / "dataset" / "0000.npy").write_bytes(b"other calibration data")
    assert rknn.work_dir(layout.prepared_dir, job) != first
    (layout.prepared_dir / "dataset" / "0000.npy").unlink()
    with pytest.raises(BuildError, match="lacks dataset/0000.npy"):
        rknn.work_dir(layout.prepared_dir, job)


def test_toolkit_v1_missing_says_what_to_install_and_where_to_point(monkeypatch):
    monkeypatch.delenv("RKNN_TOOLKIT1_PYTHON", raising=False)
    reason = rknn._unavailable(cfg_for("rknn_v1", platform="rk1808"))
    assert "rknn-toolkit 1.x" in reason and "RKNN_TOOLKIT1_PYTHON" in reason and "toolkit_python" in reason


def test_toolkit_v1_is_used_when_configured(tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv("RKNN_TOOLKIT1_PYTHON", str(python))
    assert rknn._unavailable(cfg_for("rknn_v1", platform="rk1808")) is None


@pytest.mark.skipif(not (rknn.RKNN_VENV / "bin" / "python").exists(),
                    reason=".venv-rknn is missing: run `python3 -m stages.bootstrap setup` to create it")
def test_an_invalid_platform_is_reported_from_the_real_toolkit(tmp_path, monkeypatch):
    monkeypatch.delenv("RKNN_TOOLKIT2_PYTHON", raising=False)
    layout = fake_layout(tmp_path)
    config = json.loads((layout.prepared_dir / "rknn_config.json").read_text())
    (layout.prepared_dir / "rknn_config.json").write_text(json.dumps({**config, "platform": "rk1808"}))
    with pytest.raises(BuildError, match="config rejected the target"):
        rknn.run_worker(cfg_for("rknn", platform="rk1808"), layout, tmp_path / "model.rknn")
    assert os.environ.get("RKNN_TOOLKIT2_PYTHON") is None


def test_the_quant_scheme_picks_the_toolkit_algorithm_and_the_target_gives_the_default():
    from stages.core.cli import load

    for quant, expected in (("rknn_int8", "normal"), ("rknn_int8_mmse", "mmse")):
        cfg = load(["model=mobilenet_v2", "target=rk3588", f"quant={quant}"])
        assert rknn.algorithm(cfg) == expected, quant
    assert load(["target=rk3588", "quant=rknn_int8_mmse"]).quant.calibration.num_samples == 16


def classifier_onnx(path: Path) -> Path:
    """conv -> global pool -> flatten -> gemm: a classifier's tail, as MobileNetV2 exports it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name) for name, shape in
               (("w", (8, 3, 3, 3)), ("b", (8,)), ("fc_w", (10, 8)), ("fc_b", (10,)))]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_float_outputs_keep_the_op_computing_each_output_with_the_reshapes_before_it(tmp_path):
    """The toolkit fuses Flatten away, so the float16 subgraph starts at the pool's output."""
    assert rknn.float_subgraphs(classifier_onnx(tmp_path / "model.onnx")) == [["pool", "logits"]]
    from stages.core.cli import load

    cfg = load(["model=mobilenet_v2", "target=rk3588", "quant=rknn_int8_hybrid"])
    assert cfg.quant.float_outputs and rknn.algorithm(cfg) == "mmse"


@pytest.mark.skipif(not (rknn.RKNN_VENV / "bin" / "python").exists(),
                    reason=".venv-rknn is missing: run `python3 -m stages.bootstrap setup` to create it")
def test_a_hybrid_build_runs_in_the_real_toolkit_and_leaves_no_files_behind(tmp_path, monkeypatch):
    """float_subgraphs take the toolkit's hybrid path (step 1, then step 2 on a fresh object); the
    simulator runs the result; the toolkit's intermediate files do not stay in prepared/."""
    import numpy as np

    monkeypatch.delenv("RKNN_TOOLKIT2_PYTHON", raising=False)
    layout = fake_layout(tmp_path)
    classifier_onnx(layout.prepared_dir / "model.onnx")
    (layout.prepared_dir / "dataset").mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        np.save(layout.prepared_dir / "dataset" / f"{i}.npy", rng.uniform(0, 255, (1, 3, 16, 16)).astype(np.float32))
    (layout.prepared_dir / "dataset.txt").write_text("".join(f"dataset/{i}.npy\n" for i in range(4)))
    config = json.loads((layout.prepared_dir / "rknn_config.json").read_text())
    config["float_subgraphs"] = rknn.float_subgraphs(layout.prepared_dir / "model.onnx")
    (layout.prepared_dir / "rknn_config.json").write_text(json.dumps(config))
    before = sorted(p.name for p in layout.prepared_dir.iterdir())
    inputs = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "inputs.npy", inputs)
    result = rknn.run_worker(cfg_for("rknn"), layout, tmp_path / "model.rknn",
                             simulate={"inputs": str(tmp_path / "inputs.npy"), "outputs": str(tmp_path / "out.npy"),
                                       "data_format": "nhwc"})
    assert result["steps"]["hybrid_quantization_step1"] == 0 and result["steps"]["hybrid_quantization_step2"] == 0
    assert "build" not in result["steps"]
    assert (tmp_path / "model.rknn").stat().st_size > 0
    outputs = np.load(tmp_path / "out.npy")
    assert outputs.shape == (2, 10) and np.isfinite(outputs).all()
    assert sorted(p.name for p in layout.prepared_dir.iterdir()) == before


def test_a_detectors_heads_are_found_through_the_ops_that_gather_them(tmp_path):
    """BlazeFace's shape: two head convs, each reshaped, concatenated into the one output; each head's
    input starts a float16 subgraph, found through Reshape/Concat, and a shared input counts once."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from stages.core.onnxgraph import output_heads

    weights = [numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "w"),
               numpy_helper.from_array(np.array([1, -1, 2], np.int64), "shape")]
    nodes = [helper.make_node("Relu", ["x"], ["features"]),
             helper.make_node("Relu", ["features"], ["deeper"]),
             helper.make_node("Conv", ["features", "w"], ["box"]), helper.make_node("Conv", ["features", "w"], ["score"]),
             helper.make_node("Conv", ["deeper", "w"], ["box2"]),
             *[helper.make_node("Reshape", [t, "shape"], [t + "_r"]) for t in ("box", "score", "box2")],
             helper.make_node("Concat", ["box_r", "score_r"], ["near"], axis=1),
             helper.make_node("Concat", ["near", "box2_r"], ["detections"], axis=1)]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("detections", TensorProto.FLOAT, None)], weights)
    assert sorted(output_heads(graph)) == [["deeper", "detections"], ["features", "detections"]]


@pytest.mark.skipif(not (rknn.RKNN_VENV / "bin" / "python").exists(),
                    reason=".venv-rknn is missing: run `python3 -m stages.bootstrap setup` to create it")
def test_a_float16_subgraph_the_toolkit_does_not_have_is_named_with_what_to_do(tmp_path, monkeypatch):
    """The toolkit fuses reshapes away: a subgraph that starts at one fails in hybrid step 1, and the
    error says which subgraphs and how to build without them."""
    import numpy as np

    monkeypatch.delenv("RKNN_TOOLKIT2_PYTHON", raising=False)
    layout = fake_layout(tmp_path)
    classifier_onnx(layout.prepared_dir / "model.onnx")
    (layout.prepared_dir / "dataset").mkdir(exist_ok=True)
    np.save(layout.prepared_dir / "dataset" / "0.npy", np.zeros((1, 3, 16, 16), np.float32))
    (layout.prepared_dir / "dataset.txt").write_text("dataset/0.npy\n")
    config = json.loads((layout.prepared_dir / "rknn_config.json").read_text())
    (layout.prepared_dir / "rknn_config.json").write_text(json.dumps({**config, "float_subgraphs": [["flat", "logits"]]}))
    with pytest.raises(BuildError, match="hybrid_quantization_step1") as error:
        rknn.run_worker(cfg_for("rknn"), layout, tmp_path / "model.rknn")
    assert "quant.float_outputs=false" in error.value.hint and "['flat', 'logits']" in error.value.hint


def test_the_toolkits_threads_run_inline_so_the_heap_and_the_bytes_repeat(monkeypatch):
    """The compiler writes heap addresses into the .rknn: a thread of the toolkit's (mmse's range
    search) that races the main thread's allocations made every hybrid build's bytes differ. The
    worker runs such a thread to completion inside start(); other threads start as usual."""
    import importlib.util
    import threading

    spec = importlib.util.spec_from_file_location("rknn_worker_under_test", rknn.WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    monkeypatch.setattr(threading.Thread, "start", threading.Thread.start)  # undone after the test
    worker.one_thread()
    seen = []

    class Search:  # stands in for rknn.api.mmse_quant2.MmseQaunt2
        __module__ = "rknn.api.mmse_quant2"

        def _run(self):
            seen.append(threading.current_thread())

    toolkit = threading.Thread(target=Search()._run)
    toolkit.start()
    assert seen == [threading.main_thread()] and not toolkit.is_alive()
    toolkit.join()  # what the toolkit does next: returns at once
    other = threading.Thread(target=lambda: seen.append(threading.current_thread()))
    other.start()
    other.join()
    assert seen[1] is not threading.main_thread()
