"""The runtime's reference semantics (a QDQ graph run as written, free of this host's fused INT8
kernels) and its warning when the backend is not the version the build verified with."""
import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtime import BackendVersionWarning, RuntimeLoadError, load
from runtime.manifest import seal_manifest, sha256_of
from test_format_onpu import tiny_qdq_model


def artifact(tmp_path: Path, fmt: str = "onnx", ort_version: str = ort.__version__) -> Path:
    model = tiny_qdq_model(tmp_path)
    path = tmp_path / "model.onnx"
    model.replace(path)
    manifest = {"schema": 1, "format": fmt, "artifact": path.name, "sha256": sha256_of(path), "model": "tiny",
                "target": "rpi4", "quant": "int8_static", "task": "classification",
                "inputs": [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32", "layout": "NCHW"}],
                "outputs": [{"name": "y", "shape": [1, 5], "dtype": "float32"}],
                "runtime": {"threads": 1}, "toolchain": {"onnxruntime": ort_version}}
    (tmp_path / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return path


def test_reference_semantics_turn_graph_optimizations_off(tmp_path):
    path = artifact(tmp_path)
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    host, ref = load(path), load(path, reference=True)
    assert "reference semantics" in ref.backend.name and "reference" not in host.backend.name
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ref.run(x), expected)
    assert np.abs(host.run(x) - expected).max() < 0.5  # fused kernels: close, not necessarily equal


def test_reference_semantics_are_refused_for_formats_without_them(tmp_path):
    path = artifact(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(seal_manifest({**manifest, "format": "rknn"})))
    with pytest.raises(RuntimeLoadError, match="reference semantics are defined for onnx, onpu"):
        load(path, reference=True)


def test_a_backend_other_than_the_verified_one_warns_with_both_versions(tmp_path):
    path = artifact(tmp_path, ort_version="1.0.0")
    with pytest.warns(BackendVersionWarning, match=rf"built and verified with onnxruntime 1\.0\.0, running on "
                                                   rf"onnxruntime {ort.__version__}.*pip install onnxruntime==1\.0\.0"):
        load(path)
    (tmp_path / "same").mkdir()
    same = artifact(tmp_path / "same")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(same)
